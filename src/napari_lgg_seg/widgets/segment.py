"""The "Segment tumour" dock: one-click U-Net segmentation of the open patient, ready for the brush.

torch is imported lazily (inside functions), so opening napari does not import it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import recovery
from ..metrics import dice
from ._common import (
    AI_MASK_KEY,
    MODEL_REGISTRY,
    RESULT_KEY,
    ROLE_PREDICTION,
    ROLE_PROBABILITY,
    PatientLayers,
    ai_mask_of,
    disconnector,
    find_patients,
    has_unexported_edits,
    notify,
    prediction_layers,
    probability_layer_for,
    qt_ask,
    registered_models,
    volume_readout,
    voxels_changed,
)
from ._qt import RefreshingComboBox, status_html

NO_MODEL_TEXT = "No default model is installed; choose a checkpoint file (.pt)"
OPEN_PATIENT_TEXT = ("Open a patient first: File > Open (an LGG patient folder) or "
                     "File > Open Sample > Synthetic LGG phantom patient.")
DEFAULT_MODEL_LABEL = "Default model"
AUTOSAVE_INTERVAL_MS = 30_000


def _segment_job(model, images: np.ndarray, device: str, tta: bool, batch_size: int, settings=None,
                 size: int = 256):
    """Worker generator: yields ``(done, total)`` between batches and returns ``(probabilities, mask)``,
    both (Z, H, W); slices far from the model's training ``size`` are resized for it and back (the same rule
    as the CLI), and the mask is post-processed with ``settings`` here, off the GUI thread."""
    from ..inference import iter_predict_any_size, postprocess

    _import_layer_modules()
    probs = None
    for done, total, p in iter_predict_any_size(model, images, size=size, device=device, batch_size=batch_size,
                                                tta=tta):
        if p is not None:
            probs = p
        yield done, total
    return probs, postprocess(probs, settings)


def _import_layer_modules() -> None:
    """Import what adding the result layers needs, in the worker: the first Labels layer of a session
    otherwise spends ~0.1 s importing modules on the GUI thread."""
    import napari._vispy.layers.image  # noqa: F401
    import napari._vispy.layers.labels  # noqa: F401
    import napari.layers.labels  # noqa: F401
    import scipy.ndimage  # noqa: F401




class SegmentWidget(QWidget):
    """Segment the selected patient with a U-Net and hand the result to the brush.

    ``ask(title, text) -> bool`` asks the user yes/no questions; replace it in tests.
    """

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ask = qt_ask(self)
        self.batch_size = 8
        self._worker = None
        self._adding_result = False  # result layers being added, one event-loop turn per step
        self._job: dict | None = None
        self._models: dict[str, object] = {}  # path -> LoadedModel
        self._checkpoint_files: dict[str, str] = {}  # path -> label (chosen with the file picker)
        self._loaded = None
        self._setting_controls = False
        self._compare_text = ""
        self._recovery_offered: set[str] = set()
        self._pending_recovery: list[str] = []
        self._last_autosave: dict[int, str] = {}
        self._connected_layers: list = []
        self._build()

        layers = self.viewer.layers
        self._connections = [
            (layers.events.inserted, self._on_layer_inserted),
            (layers.events.removed, self._on_layer_removed),
            (layers.events.moved, self._refresh_patients),
            (layers.selection.events.active, self._on_active_changed),
            (MODEL_REGISTRY.changed, self._on_registry_changed),
        ]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.destroyed.connect(disconnector(self._connections))

        self._recovery_timer = QTimer(self)
        self._recovery_timer.setSingleShot(True)
        self._recovery_timer.timeout.connect(self._process_recovery_queue)
        self.autosave_timer = QTimer(self)
        self.autosave_timer.setInterval(AUTOSAVE_INTERVAL_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start()

        self._refresh_patients()
        self._refresh_models()
        for layer in prediction_layers(self.viewer):
            self._watch_labels(layer)
        for pid, patient in find_patients(self.viewer).items():
            if patient.is_lgg:
                self._queue_recovery_check(pid)
        self.update_readout()

    # ------------------------------------------------------------------------------------ UI

    def _build(self) -> None:
        form = QFormLayout()
        self.patient_combo = RefreshingComboBox(self._refresh_patients)
        self.patient_combo.setToolTip("The patient to segment (from the layers the LGG reader made)")
        self.patient_combo.currentIndexChanged.connect(self._on_patient_changed)
        form.addRow("Patient", self.patient_combo)

        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.browse_button = QPushButton("Checkpoint…")
        self.browse_button.setToolTip("Load a U-Net checkpoint (.pt) saved by napari-lgg-seg")
        self.browse_button.clicked.connect(self._browse_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.browse_button)
        form.addRow("Model", row)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)

        self.device_combo = QComboBox()
        form.addRow("Device", self.device_combo)

        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(5, 95)
        self.threshold_slider.setTracking(False)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 0.95)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setKeyboardTracking(False)
        self.threshold_spin.setValue(0.5)
        self.threshold_slider.setValue(50)
        self.threshold_slider.valueChanged.connect(lambda v: self.threshold_spin.setValue(v / 100))
        self.threshold_spin.valueChanged.connect(self._on_threshold_spin)
        row = QHBoxLayout()
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_spin)
        form.addRow("Threshold", row)

        self.tta_check = QCheckBox("Test-time augmentation (left-right flip)")
        self.tta_check.setToolTip("Average with the flipped image's prediction: slower, slightly smoother")
        form.addRow(self.tta_check)
        self.largest_check = QCheckBox("Keep largest 3D component")
        self.largest_check.toggled.connect(self.apply_postprocessing)
        form.addRow(self.largest_check)
        self.fill_check = QCheckBox("Fill holes in each slice")
        self.fill_check.toggled.connect(self.apply_postprocessing)
        form.addRow(self.fill_check)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setSingleStep(10)
        self.min_size_spin.setKeyboardTracking(False)
        self.min_size_spin.setToolTip("Remove 3D lesions smaller than this many voxels (0: keep all)")
        self.min_size_spin.valueChanged.connect(self.apply_postprocessing)
        form.addRow("Minimum lesion (voxels)", self.min_size_spin)

        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button, 1)
        buttons.addWidget(self.stop_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m slices")
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.readout_label = QLabel()
        self.readout_label.setWordWrap(True)
        self.readout_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.compare_button = QPushButton("Compare with AI")
        self.compare_button.setToolTip("Dice between the AI output and your corrected labels, and voxels changed")
        self.compare_button.clicked.connect(self.compare_with_ai)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.readout_label)
        layout.addWidget(self.compare_button)
        layout.addStretch(1)

    # ------------------------------------------------------------------------------- patients

    def _patients(self) -> dict[str, PatientLayers]:
        return find_patients(self.viewer)

    def _refresh_patients(self, event=None, select: str | None = None) -> None:
        patients = self._patients()
        current = select or self.patient_combo.currentData()
        combo = self.patient_combo
        combo.blockSignals(True)
        combo.clear()
        for pid, patient in patients.items():
            combo.addItem(patient.label, pid)
        index = combo.findData(current) if current is not None else -1
        if index < 0 and combo.count():
            index = combo.count() - 1
        combo.setCurrentIndex(index)
        combo.blockSignals(False)
        self._update_buttons()
        self.update_readout()

    def current_patient(self) -> PatientLayers | None:
        """The patient chosen in the combo (None when no image layer is open)."""
        pid = self.patient_combo.currentData()
        return self._patients().get(pid) if pid is not None else None

    def select_patient(self, patient_id: str) -> None:
        """Choose a patient by id."""
        self._refresh_patients(select=patient_id)

    def _on_patient_changed(self, index: int) -> None:
        self._compare_text = ""
        self._update_buttons()
        self.update_readout()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        meta = layer.metadata or {}
        select = None
        if meta.get("lgg_role") not in (ROLE_PREDICTION, ROLE_PROBABILITY):
            for pid, patient in self._patients().items():
                if any(member is layer for member in patient.channels.values()):
                    select = pid
                    if patient.is_lgg:
                        self._queue_recovery_check(pid)
                    break
        self._refresh_patients(select=select)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self._last_autosave.pop(id(layer), None)
        self._refresh_patients()

    def _on_active_changed(self, event=None) -> None:
        self._compare_text = ""
        self.update_readout()

    # --------------------------------------------------------------------------------- models

    def _model_entries(self) -> list[tuple[str, str]]:
        from ..model import default_model_path

        entries: list[tuple[str, str]] = []
        default = default_model_path()
        if default is not None:
            entries.append((DEFAULT_MODEL_LABEL, os.fspath(default)))
        entries += registered_models()
        entries += [(label, path) for path, label in self._checkpoint_files.items()]
        seen, unique = set(), []
        for label, path in entries:
            if path not in seen:
                seen.add(path)
                unique.append((label, path))
        return unique

    def _refresh_models(self, select: str | None = None) -> None:
        if not self.device_combo.count():
            from ..inference import available_devices

            self.device_combo.addItems(available_devices())
        entries = self._model_entries()
        current = select or self.model_combo.currentData()
        combo = self.model_combo
        combo.blockSignals(True)
        combo.clear()
        for label, path in entries:
            combo.addItem(label, path)
            combo.setItemData(combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        index = combo.findData(current) if current is not None else -1
        combo.setCurrentIndex(index if index >= 0 else (0 if combo.count() else -1))
        combo.blockSignals(False)
        combo.setEnabled(combo.count() > 0)
        if combo.currentData() != (self._loaded.path if self._loaded is not None else None):
            self._on_model_changed()
        elif not combo.count():
            self._loaded = None
            self._show_model_state()

    def _on_registry_changed(self) -> None:
        try:
            self._refresh_models()
        except RuntimeError:  # the Qt side of this widget is gone
            pass

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a U-Net checkpoint", "",
                                              "PyTorch checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.add_checkpoint(path)

    def add_checkpoint(self, path: str | os.PathLike, label: str | None = None) -> bool:
        """Add a checkpoint file to the model list and select it; False (and a message) if it cannot be loaded."""
        key = os.fspath(Path(path).expanduser().resolve())
        self._checkpoint_files[key] = label or Path(key).name
        self._refresh_models(select=key)
        return self._loaded is not None and self._loaded.path == key

    def _on_model_changed(self, index: int | None = None) -> None:
        path = self.model_combo.currentData()
        self._loaded = None
        if path is None:
            self._show_model_state()
            return
        from ..model import CheckpointError, load_model

        loaded = self._models.get(path)
        if loaded is None:
            try:
                loaded = load_model(path)
            except (CheckpointError, OSError) as err:
                self._checkpoint_files.pop(path, None)
                self._show_model_state(error=str(err))
                return
            self._models[path] = loaded
        self._loaded = loaded
        defaults = loaded.inference_defaults
        if defaults:
            self.set_postprocessing_controls(defaults)
        self._show_model_state()

    def _show_model_state(self, error: str | None = None) -> None:
        if error:
            self.model_label.setText(status_html(f"Could not load the model: {error}", error=True))
        elif self.model_combo.count() == 0:
            self.model_label.setText(NO_MODEL_TEXT)
        elif self._loaded is None:
            self.model_label.setText("Choose a model.")
        else:
            defaults = self._loaded.inference_defaults
            note = "defaults from its model card" if defaults else "no model card defaults; using the settings below"
            self.model_label.setText(f"Loaded {Path(self._loaded.path).name} ({note})")
        self.model_label.setToolTip(self._loaded.path if self._loaded is not None else "")
        self._update_buttons()

    @property
    def loaded_model(self):
        """The selected, loaded model (``LoadedModel``) or None."""
        return self._loaded

    # ------------------------------------------------------------------------- post-processing

    def settings(self):
        """The post-processing settings in the controls (``inference.PostProcessing``)."""
        from ..inference import PostProcessing

        return PostProcessing(threshold=round(self.threshold_spin.value(), 4),
                              min_lesion_voxels=int(self.min_size_spin.value()),
                              keep_largest=self.largest_check.isChecked(),
                              fill_holes=self.fill_check.isChecked())

    def set_postprocessing_controls(self, values: dict) -> None:
        """Set threshold / TTA / post-processing controls without re-thresholding anything."""
        self._setting_controls = True
        try:
            if "threshold" in values:
                t = float(np.clip(float(values["threshold"]), 0.05, 0.95))
                self.threshold_spin.setValue(t)
                self.threshold_slider.setValue(round(t * 100))
            if "tta" in values:
                self.tta_check.setChecked(bool(values["tta"]))
            if "min_lesion_voxels" in values:
                self.min_size_spin.setValue(int(values["min_lesion_voxels"]))
            if "keep_largest" in values:
                self.largest_check.setChecked(bool(values["keep_largest"]))
            if "fill_holes" in values:
                self.fill_check.setChecked(bool(values["fill_holes"]))
        finally:
            self._setting_controls = False

    def set_threshold(self, value: float) -> None:
        """Move the threshold as the user would (re-thresholds the current result)."""
        self.threshold_spin.setValue(value)

    def _on_threshold_spin(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(round(value * 100))
        self.threshold_slider.blockSignals(False)
        self.apply_postprocessing()

    def current_prediction_layer(self):
        """The selected patient's tumour Labels layer (the active one if it is such a layer)."""
        patient = self.current_patient()
        if patient is None:
            return None
        layers = prediction_layers(self.viewer, patient.patient_id)
        if not layers:
            return None
        active = self.viewer.layers.selection.active
        if any(layer is active for layer in layers):
            return active
        named = [layer for layer in layers if layer.name == f"{patient.patient_id} tumour"]
        return (named or layers)[-1]

    def apply_postprocessing(self, *args) -> bool:
        """Recompute the current result's labels from its stored probabilities with the controls' settings.

        Asks before replacing labels the user has edited; returns True when the labels were updated.
        """
        if self._setting_controls:
            return False
        layer = self.current_prediction_layer()
        prob_layer = probability_layer_for(self.viewer, layer) if layer is not None else None
        if prob_layer is None:
            return False
        settings = self.settings()
        changed = voxels_changed(layer)
        if changed:
            ok = self.ask(
                "Discard your corrections?",
                f"'{layer.name}' has {changed:,} voxels you corrected. Changing the threshold or "
                "post-processing recomputes the mask from the AI probabilities and discards those "
                "corrections.\n\nRecompute anyway?",
            )
            if not ok:
                previous = layer.metadata.get("lgg_postprocessing") or {}
                self.set_postprocessing_controls(previous)
                self.status_label.setText("Kept your corrections; post-processing unchanged.")
                return False
        from ..inference import postprocess

        probs = np.asarray(prob_layer.data, dtype=np.float32)
        mask = postprocess(probs, settings)
        layer.metadata[AI_MASK_KEY] = mask.copy()
        layer.metadata["lgg_postprocessing"] = asdict(settings)
        layer.data = mask
        self._compare_text = ""
        self.update_readout()
        return True

    # ----------------------------------------------------------------------------- segmenting

    @property
    def running(self) -> bool:
        """True while a segmentation runs or its result is being added to the viewer."""
        return self._worker is not None or self._adding_result

    def _update_buttons(self) -> None:
        running = self.running
        self.segment_button.setEnabled(not running and self._loaded is not None and self.current_patient() is not None)
        self.stop_button.setEnabled(running)
        self.browse_button.setEnabled(not running)
        self.model_combo.setEnabled(not running and self.model_combo.count() > 0)
        self.device_combo.setEnabled(not running)
        if running:
            return
        hint = ""
        if self._loaded is None and self.model_combo.count() == 0:
            hint = NO_MODEL_TEXT
        elif self.current_patient() is None:
            hint = OPEN_PATIENT_TEXT
        if self.status_label.text() in ("", NO_MODEL_TEXT, OPEN_PATIENT_TEXT):
            self.status_label.setText(hint)

    def segment(self):
        """Start segmenting the selected patient in a worker thread; returns the worker or None."""
        if self.running:
            return None
        patient = self.current_patient()
        if self._loaded is None:
            self.status_label.setText(NO_MODEL_TEXT if self.model_combo.count() == 0 else "Choose a model first.")
            return None
        if patient is None:
            self._update_buttons()
            return None
        pid = patient.patient_id
        for layer in prediction_layers(self.viewer, pid):
            if layer.name == f"{pid} tumour" and has_unexported_edits(layer):
                if not self.ask("Replace your corrections?",
                                f"'{layer.name}' has corrections that were not exported. Segmenting again "
                                "replaces them.\n\nSegment anyway?"):
                    return None
        try:
            images = patient.volume()
        except ValueError as err:
            self.status_label.setText(f"Cannot segment: {err}")
            return None
        from napari.qt.threading import create_worker

        settings = self.settings()
        self._job = {"patient": patient, "model": self._loaded, "model_label": self.model_combo.currentText(),
                     "shape": np.shape(patient.reference.data), "settings": settings}
        worker = create_worker(_segment_job, self._loaded.model, images, self.device_combo.currentText() or "auto",
                               self.tta_check.isChecked(), int(self.batch_size), settings,
                               self._loaded.training_size, _start_thread=False,
                               _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.progress.setRange(0, max(images.shape[0], 1))
        self.progress.setValue(0)
        self.status_label.setText(f"Segmenting {pid}…")
        self._update_buttons()
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the running segmentation to stop after the current batch."""
        if self._worker is not None:
            self._worker.quit()
            self.stop_button.setEnabled(False)
            self.status_label.setText("Stopping after the current batch…")

    def _on_progress(self, value) -> None:
        done, total = value
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(int(done))

    def _on_error(self, err) -> None:
        self.status_label.setText(f"Segmentation failed: {err}")
        notify(f"Segmentation failed: {err}", "error")

    def _on_aborted(self) -> None:
        self.status_label.setText("Stopped; no layer was added.")

    def _on_finished(self) -> None:
        self._worker = None
        self._job = None
        self._update_buttons()

    def _on_result(self, result) -> None:
        job = self._job
        if job is None or result is None:
            return
        probs, mask = result
        patient: PatientLayers = job["patient"]
        if not patient.alive(self.viewer):
            self.status_label.setText(f"The layers of {patient.patient_id} were closed while segmenting; "
                                      "the result was discarded.")
            return
        shape = job["shape"]
        probs = np.asarray(probs, np.float32)
        if len(shape) == 2:
            probs, mask = probs[0], mask[0]
        if probs.shape != tuple(shape):
            self.status_label.setText(f"The result {probs.shape} does not fit the image {tuple(shape)}; discarded.")
            return
        if self.settings() != job["settings"]:  # the controls changed while the worker ran
            mask = None
        self._add_result(patient, probs, job["model"], job["model_label"], mask)

    def _add_result(self, patient: PatientLayers, probs: np.ndarray, loaded, model_label: str,
                    mask: np.ndarray | None = None):
        """Add (or update) the probability and Labels layers; ``mask`` is computed here when not given."""
        from ..inference import postprocess

        settings = self.settings()
        if mask is None:
            mask = postprocess(probs, settings)
        pid = patient.patient_id
        ref = patient.reference
        rid = uuid.uuid4().hex
        base = patient.metadata()
        geometry = {"scale": ref.scale, "translate": ref.translate}
        prob_meta = {**base, "lgg_role": ROLE_PROBABILITY, RESULT_KEY: rid}
        label_meta = {**base, "lgg_role": ROLE_PREDICTION, RESULT_KEY: rid, "lgg_model": loaded.path,
                      "lgg_model_label": model_label, AI_MASK_KEY: mask.copy(),
                      "lgg_postprocessing": asdict(settings)}
        name = f"{pid} tumour"
        state: dict = {}

        def place_probabilities() -> None:
            existing = [layer for layer in prediction_layers(self.viewer, pid) if layer.name == name]
            state["labels"] = existing[-1] if existing else None
            if state["labels"] is not None:
                old_prob = probability_layer_for(self.viewer, state["labels"])
                if old_prob is not None:
                    self.viewer.layers.remove(old_prob)
            self.viewer.add_image(probs, name=f"{pid} tumour probability", visible=False, colormap="magma",
                                  contrast_limits=(0.0, 1.0), metadata=prob_meta, **geometry)

        def place_labels() -> None:
            labels = state["labels"]
            if labels is not None and labels in self.viewer.layers:
                labels.metadata = label_meta
                labels.data = mask
            else:
                labels = self.viewer.add_labels(mask, name=name, opacity=0.5, metadata=label_meta, **geometry)
                self._watch_labels(labels)
            state["labels"] = labels

        def ready_for_the_brush() -> None:
            labels = state["labels"]
            labels.selected_label = 1
            labels.brush_size = 10
            labels.mode = "paint"
            self.viewer.layers.selection.active = labels
            self._compare_text = ""
            self.status_label.setText(f"Done: {pid} segmented with {model_label}. Correct it with the brush "
                                      "(label 1 = tumour, 0 = erase).")
            self.update_readout()
            if int(mask.sum()) == 0:
                notify(f"{pid}: the model found no tumour at threshold {settings.threshold:.2f}", "info")

        self._adding_result = True
        self._run_gui_steps(patient, [place_probabilities, place_labels, ready_for_the_brush])

    def _run_gui_steps(self, patient: PatientLayers, steps: list) -> None:
        """Run GUI-thread steps one event-loop turn apart, so that the window repaints and reacts between
        them (adding each layer costs napari 0.1-0.3 s); stops if the patient's layers are closed meanwhile."""
        if steps and not patient.alive(self.viewer):
            self.status_label.setText(f"The layers of {patient.patient_id} were closed while the result was "
                                      "being added; it was discarded.")
            steps = []
        if not steps:
            self._adding_result = False
            self._update_buttons()
            return
        steps[0]()

        def next_step() -> None:
            try:
                self._run_gui_steps(patient, steps[1:])
            except RuntimeError:  # the dock was closed meanwhile (its Qt object is gone)
                pass

        QTimer.singleShot(0, next_step)

    # -------------------------------------------------------------------------- edits, readout

    def _watch_labels(self, layer) -> None:
        if any(layer is known for known in self._connected_layers):
            return
        self._connected_layers.append(layer)
        for emitter in (layer.events.paint, layer.events.data):
            emitter.connect(self._on_labels_edited)
            self._connections.append((emitter, self._on_labels_edited))

    def _on_labels_edited(self, event=None) -> None:
        self._compare_text = ""
        self.update_readout()

    def update_readout(self) -> None:
        """Show tumour voxels, slices and volume of the current result (and the last comparison)."""
        layer = self.current_prediction_layer()
        if layer is None:
            self.readout_label.setText("")
            self.compare_button.setEnabled(False)
            return
        text = f"Tumour in '{layer.name}': " + volume_readout(np.asarray(layer.data), layer.scale)
        if self._compare_text:
            text += "\n" + self._compare_text
        self.readout_label.setText(text)
        self.compare_button.setEnabled(ai_mask_of(layer) is not None)

    def compare_with_ai(self) -> dict | None:
        """Dice between the AI output and the current labels, and voxels changed; shown in the readout."""
        layer = self.current_prediction_layer()
        ai = ai_mask_of(layer) if layer is not None else None
        if ai is None:
            self._compare_text = "No AI output to compare with."
            self.update_readout()
            return None
        labels = np.asarray(layer.data)
        result = {
            "dice": dice(ai, labels),
            "voxels_changed": int(np.count_nonzero((ai > 0) != (labels > 0))),
            "voxels_added": int(np.count_nonzero((labels > 0) & (ai == 0))),
            "voxels_removed": int(np.count_nonzero((labels == 0) & (ai > 0))),
        }
        self._compare_text = (f"Dice vs AI: {result['dice']:.4f}; you changed {result['voxels_changed']:,} voxels "
                              f"(+{result['voxels_added']:,} / -{result['voxels_removed']:,})")
        self.update_readout()
        return result

    # ------------------------------------------------------------------------------- recovery

    def autosave_now(self) -> list[Path]:
        """Save edited, unexported tumour layers that changed since their last autosave; returns the files."""
        saved = []
        for layer in prediction_layers(self.viewer):
            pid = (layer.metadata or {}).get("lgg_patient_id")
            if not pid or not has_unexported_edits(layer):
                continue
            data = np.asarray(layer.data)
            digest = recovery.mask_digest(data)
            if self._last_autosave.get(id(layer)) == digest:
                continue
            try:
                path = recovery.save_recovery(pid, data, ai_mask=ai_mask_of(layer),
                                              info={"layer": layer.name,
                                                    "lgg_model": layer.metadata.get("lgg_model"),
                                                    "lgg_model_label": layer.metadata.get("lgg_model_label")})
            except OSError as err:
                self.status_label.setText(f"Autosave failed: {err}")
                continue
            self._last_autosave[id(layer)] = digest
            saved.append(path)
        return saved

    def _queue_recovery_check(self, patient_id: str) -> None:
        if patient_id in self._recovery_offered or patient_id in self._pending_recovery:
            return
        self._pending_recovery.append(patient_id)
        self._recovery_timer.start(0)

    def _process_recovery_queue(self) -> None:
        pending, self._pending_recovery = self._pending_recovery, []
        for pid in pending:
            self.check_recovery(pid)

    def check_recovery(self, patient_id: str):
        """Offer to restore an autosaved correction of the patient (once per session); returns the layer."""
        if patient_id in self._recovery_offered or not recovery.has_recovery(patient_id):
            return None
        patient = self._patients().get(patient_id)
        if patient is None:
            return None
        self._recovery_offered.add(patient_id)
        rec = recovery.load_recovery(patient_id)
        if rec is None:
            return None
        for layer in prediction_layers(self.viewer, patient_id):
            if recovery.mask_digest(np.asarray(layer.data)) == recovery.mask_digest(rec.mask):
                return None
        voxels = int(np.count_nonzero(rec.mask))
        if not self.ask("Restore autosaved corrections?",
                        f"Corrections of {patient_id} autosaved at {rec.saved} ({voxels:,} tumour voxels) were "
                        f"found in {rec.path}.\n\nRestore them as a layer '{patient_id} tumour (recovered)'?"):
            return None
        return self.restore_recovery(patient, rec)

    def restore_recovery(self, patient: PatientLayers, rec: recovery.Recovery):
        """Add a recovered correction as '<PATIENT> tumour (recovered)'."""
        ref = patient.reference
        shape = tuple(np.shape(ref.data))
        mask = rec.mask.reshape(shape) if rec.mask.size == int(np.prod(shape)) else None
        if mask is None:
            self.status_label.setText(f"The autosave of {patient.patient_id} has shape {rec.mask.shape}, but the "
                                      f"open patient has {shape}; not restored (file kept: {rec.path}).")
            return None
        meta = {**patient.metadata(), "lgg_role": ROLE_PREDICTION, "lgg_recovered": True,
                "lgg_model": rec.info.get("lgg_model"), "lgg_model_label": rec.info.get("lgg_model_label")}
        if rec.ai_mask is not None and rec.ai_mask.size == mask.size:
            meta[AI_MASK_KEY] = rec.ai_mask.reshape(shape)
        layer = self.viewer.add_labels(mask.astype(np.uint8), name=f"{patient.patient_id} tumour (recovered)",
                                       opacity=0.5, metadata=meta, scale=ref.scale, translate=ref.translate)
        self._last_autosave[id(layer)] = recovery.mask_digest(mask)
        self._watch_labels(layer)
        layer.selected_label = 1
        layer.brush_size = 10
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.status_label.setText(f"Restored the autosaved corrections of {patient.patient_id}.")
        return layer
