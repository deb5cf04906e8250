"""The "Segment tumour" dock (a magicgui form): one-click U-Net segmentation of the open patient, ready for the brush.

torch is imported lazily (inside functions), so opening napari does not import it.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.qt.threading import thread_worker
from psygnal import Signal
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog
from superqt import QCollapsible

from .. import recovery
from ..layers import (
    AI_MASK_KEY,
    RESULT_KEY,
    ROLE_PREDICTION,
    ROLE_PROBABILITY,
    SPARE_NAMES,
    PatientLayers,
    active_layer,
    add_recovered_layer,
    add_spare_layer,
    ai_mask_of,
    compare_with_ai,
    find_patients,
    has_unexported_edits,
    place_probability_layer,
    place_tumour_layer,
    prediction_layers,
    probability_layer_for,
    take_spare_layer,
    tumour_layer,
    volume_readout,
    voxels_changed,
)
from ..recovery import mask_digest
from ._common import (
    MODEL_REGISTRY,
    disconnector,
    fit_layer_list_to_patients,
    keep_gc_pauses_short,
    notify,
    qt_ask,
    registered_models,
    run_below_the_window,
    set_current_model_path,
    status_html,
    wrapped_label,
)

NO_MODEL_TEXT = "No default model is installed; choose a checkpoint file (.pt)"
OPEN_PATIENT_TEXT = ("Open a patient first: File > Open (an LGG patient folder) or "
                     "File > Open Sample > Synthetic LGG phantom patient.")
DEFAULT_MODEL_LABEL = "Default model"
AUTOSAVE_INTERVAL_MS = 30_000


@thread_worker(start_thread=False)
def _segment_job(model, images: np.ndarray, device: str, tta: bool, batch_size: int, settings=None,
                 size: int = 256, timing: dict | None = None):
    """Worker generator: yields ``(done, total)`` between batches and returns ``(probabilities, mask)`` (Z, H, W),
    float32 and uint8 as the layers take them, the mask post-processed here, off the GUI thread; slices far from
    ``size`` are resized (the CLI's rule). ``timing`` receives the seconds of the network and the post-processing.

    Any error is returned as its message (a ``str``): superqt drops a RuntimeError raised by a generator worker
    (torch allocation failure, CUDA out of memory) without ``errored`` or ``finished``, which hung the dock.
    """
    try:
        from ..inference import iter_predict_any_size, postprocess

        run_below_the_window()
        for module in ("napari._vispy.layers.image", "napari._vispy.layers.labels", "scipy.ndimage"):
            __import__(module)  # otherwise the first Labels layer of a session imports these on the GUI thread
        probs, start = None, time.perf_counter()
        for done, total, p in iter_predict_any_size(model, images, size=size, device=device,
                                                    batch_size=batch_size, tta=tta):
            probs = p if p is not None else probs
            yield done, total
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        network = time.perf_counter() - start
        mask = postprocess(probs, settings)
        if timing is not None:
            timing.update(network_s=network, postprocess_s=time.perf_counter() - start - network)
        return probs, mask
    except Exception as err:  # noqa: BLE001 - reported in the dock, never lost
        return f"{type(err).__name__}: {err}"


@thread_worker(start_thread=False)
def _postprocess_job(probs: np.ndarray, settings) -> np.ndarray:
    """Worker: the mask of ``probs`` with ``settings`` (80-110 ms for a real patient: too long for the GUI thread)."""
    from ..inference import postprocess

    run_below_the_window()
    return postprocess(probs, settings)


#: delay of the next GUI step of a chain (ms). Not 0: Qt delivers a 0-ms single shot as a posted event, and a chain
#: of them runs two steps per event-loop turn (no timer, no repaint in between: two layer adds froze the window for
#: one 190-230 ms stall instead of two short ones). A 1-ms timer lets the window's own timers and paints run first.
STEP_DELAY_MS = 1


def _later(callback, delay_ms: int = 0) -> None:
    """Run ``callback`` on a later event-loop turn; nothing if the dock was closed meanwhile."""

    def run() -> None:
        try:
            callback()
        except RuntimeError:  # the dock's Qt objects are gone
            pass

    QTimer.singleShot(delay_ms, run)


class SegmentWidget(Container):
    """Segment the chosen patient with a U-Net and hand the result to the brush.

    ``ask(title, text) -> bool`` asks the user yes/no questions; replace it in tests. ``segmentation_done``
    ``(patient_id, labels layer or None, message)`` is emitted once per run, when the result is ready for the brush
    (None after an error, Stop, or a discarded result).
    """

    segmentation_done = Signal(str, object, str)

    def __init__(self, napari_viewer) -> None:
        import napari.layers

        from ..inference import available_devices

        self.viewer = napari_viewer
        self.batch_size = 8
        self._worker = None
        self._adding_result = False  # result layers being added, one event-loop turn per step
        self._job: dict | None = None
        self._models: dict[str, object] = {}  # path -> LoadedModel
        self._checkpoint_files: dict[str, str] = {}  # path -> label (chosen with the file picker)
        self._loaded = None
        self._setting_controls = False
        self._compare_text = ""
        self._patient_id: str | None = None
        self._recovery_offered: set[str] = set()
        self._last_autosave: dict[int, str] = {}
        self._reported = False  # the current run's end was reported (status + segmentation_done)
        self._spares_queued = False  # a turn that adds a spare result layer is pending
        self._postprocessing: list[tuple] = []  # (worker, labels layer) of re-thresholds in flight
        self.last_timing: dict = {}  # seconds of the last run's network and post-processing (in the worker)

        self.image_combo = create_widget(annotation=napari.layers.Image, label="Image",
                                         options={"tooltip": "The patient to segment: any of its image layers"})
        self.model_combo = ComboBox(choices=self._model_choices)
        self.browse_button = PushButton(text="Checkpoint…", tooltip="Load a U-Net checkpoint (.pt)")
        model_row = Container(widgets=[self.model_combo, self.browse_button], layout="horizontal", labels=False,
                              label="Model")
        model_row.margins = (0, 0, 0, 0)
        self.model_label = wrapped_label(Label(), rich=True)
        self.threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.05, value=0.5, tracking=False)
        self.device_combo = ComboBox(label="Device", choices=available_devices())
        self.tta_check = CheckBox(text="Test-time augmentation (left-right flip)",
                                  tooltip="Average with the flipped image's prediction: slower, slightly smoother")
        self.largest_check = CheckBox(text="Keep largest 3D component")
        self.fill_check = CheckBox(text="Fill holes in each slice")
        self.min_size = SpinBox(label="Minimum lesion (voxels)", max=10_000_000, step=10,
                                tooltip="Remove 3D lesions smaller than this many voxels (0: keep all)")
        self.min_size.native.setKeyboardTracking(False)
        options = Container(widgets=[self.device_combo, self.tta_check, self.largest_check, self.fill_check,
                                     self.min_size])
        self.segment_button = PushButton(text="Segment")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(min=0, max=1, value=0, label="")
        self.progress.native.setFormat("%v / %m slices")
        buttons = Container(widgets=[self.segment_button, self.stop_button, self.progress], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.status_label = wrapped_label(Label(), rich=True)
        self.readout_label = wrapped_label(Label())
        self.compare_button = PushButton(text="Compare with AI", enabled=False,
                                         tooltip="Dice between the AI output and your corrected labels")
        form = Container(widgets=[self.image_combo, model_row, self.threshold])
        form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[form, self.model_label, buttons, self.status_label, self.readout_label,
                                  self.compare_button], labels=False)
        self.ask = qt_ask(self.native)
        self.more_options = more = QCollapsible("More options")  # collapsed: a short dock (issue 13, bug 5)
        more.addWidget(options.native)
        more.setContentsMargins(0, 0, 0, 0)
        self.native.layout().insertWidget(2, more)

        self.image_combo.changed.connect(self._on_patient_changed)
        self.model_combo.changed.connect(self._on_model_changed)
        self.browse_button.clicked.connect(self._browse_checkpoint)
        for control in (self.threshold, self.largest_check, self.fill_check, self.min_size):
            control.changed.connect(self.apply_postprocessing)
        self.segment_button.clicked.connect(lambda: self.segment())
        self.stop_button.clicked.connect(self.stop)
        self.compare_button.clicked.connect(self.compare_with_ai)

        layers = self.viewer.layers
        self._connections = [(layers.events.inserted, self._on_layer_inserted),
                             (layers.events.removed, self._on_layers_changed),
                             (layers.events.renamed, self._on_layer_renamed),
                             (layers.selection.events.active, self._on_labels_edited),
                             (MODEL_REGISTRY.changed, self._on_registry_changed)]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.native.destroyed.connect(disconnector(self._connections))
        self.autosave_timer = QTimer(self.native)
        self.autosave_timer.setInterval(AUTOSAVE_INTERVAL_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start()
        for layer in prediction_layers(self.viewer):
            self._watch_labels(layer)
        for pid, patient in find_patients(self.viewer).items():
            if patient.is_lgg:
                self._queue_recovery_check(pid)
        self._on_model_changed()
        fit_layer_list_to_patients(self.viewer)
        keep_gc_pauses_short(self.viewer, self.native)

    # ------------------------------------------------------------------------------- patients

    def reset_choices(self, *args) -> None:
        """Refresh the layer and model lists (napari calls this when layers change); shows the patient's FLAIR."""
        super().reset_choices(*args)
        patient = self.current_patient()
        if patient is not None and self.image_combo.value is not patient.reference:
            self.select_patient(patient.patient_id)
        self._on_patient_changed()

    def current_patient(self) -> PatientLayers | None:
        """The patient of the chosen image layer (None when no image layer is open)."""
        layer = self.image_combo.value
        if layer is None or layer not in self.viewer.layers:
            return None
        for patient in find_patients(self.viewer).values():
            if any(member is layer for member in patient.channels.values()):
                return patient
        return find_patients(self.viewer).get((layer.metadata or {}).get("lgg_patient_id"))

    def select_patient(self, patient_id: str) -> None:
        """Choose a patient by id (its FLAIR, or its only image)."""
        self.image_combo.reset_choices()
        patient = find_patients(self.viewer).get(patient_id)
        if patient is not None and patient.reference in self.image_combo.choices:
            self.image_combo.value = patient.reference

    def _on_layer_renamed(self, event) -> None:
        """A renamed layer: the patient browser refills the open patient's layers with the next patient (metadata
        first, the name last), so this is a newly opened patient as much as an inserted layer."""
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return self._on_layers_changed()
        self._on_layer_inserted(SimpleNamespace(value=layer))

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        role = (layer.metadata or {}).get("lgg_role")
        if role == ROLE_PREDICTION and hasattr(layer.events, "paint"):  # also the reader's (a `segment` output)
            self._watch_labels(layer)
        elif role != ROLE_PROBABILITY:
            for pid, patient in find_patients(self.viewer).items():
                if any(member is layer for member in patient.channels.values()):
                    self.select_patient(pid)  # a newly opened patient is the one to segment
                    if patient.is_lgg:
                        self._queue_recovery_check(pid)
        self._on_layers_changed()

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "removed":
            self._last_autosave.pop(id(event.value), None)
        self.reset_choices()

    def _on_patient_changed(self, *args) -> None:
        patient = self.current_patient()
        pid = patient.patient_id if patient is not None else None
        if patient is not None:
            self._queue_spare_layer()
        if pid != self._patient_id:  # the status names the patient on screen (issue 13, bug 2)
            self._patient_id = pid
            self._compare_text = ""
            if not self.running:
                layer = tumour_layer(self.viewer, pid)
                self._say("" if patient is None or self._loaded is None else f"{patient.label}: " + (
                    f"'{layer.name}' is ready for the brush." if layer is not None else "press Segment."))
        self._update_buttons()
        self.update_readout()

    def _queue_spare_layer(self) -> None:
        if not self._spares_queued:
            self._spares_queued = True
            _later(self._add_spare_layer, STEP_DELAY_MS)

    def _add_spare_layer(self) -> None:
        """Add a result layer the patient on screen will need (a model is loaded), parked (hidden, one voxel), one
        per event-loop turn.

        napari freezes the window 0.12-0.19 s to create a layer (its vispy visual, overlays and controls): done here,
        when a patient appears, the first result only refills the two layers, like every later one (issue 13)."""
        self._spares_queued = False
        patient = self.current_patient()
        if patient is None or self._adding_result or self._loaded is None:  # no model: no result to prepare for
            return
        ref = patient.reference
        ndim = ref.ndim - (1 if getattr(ref, "rgb", False) else 0)
        if tumour_layer(self.viewer, patient.patient_id) is not None or ndim not in (2, 3):
            return
        missing = [kind for kind in SPARE_NAMES if take_spare_layer(self.viewer, kind, ndim) is None]
        if not missing:
            return
        layers = self.viewer.layers
        active, selected = layers.selection.active, set(layers.selection)
        geometry = {"scale": ref.scale, "translate": ref.translate, "axis_labels": ref.axis_labels}
        spare = add_spare_layer(self.viewer, missing[0], ndim, geometry)

        def give_the_selection_back() -> None:  # a hidden spare never keeps the user's selection
            if active_layer(self.viewer) is spare and (active is None or active in layers):
                layers.selection.active = active
                layers.selection.update(la for la in selected if la in layers)
            if len(missing) > 1:
                self._queue_spare_layer()

        if missing[0] == "labels":  # napari shows (and styles) the Labels controls once now, not at the first result
            _later(give_the_selection_back, STEP_DELAY_MS)
        else:
            give_the_selection_back()

    # --------------------------------------------------------------------------------- models

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from ..model import default_model_path

        default = default_model_path()
        entries = [(DEFAULT_MODEL_LABEL, os.fspath(default))] if default is not None else []
        entries += registered_models() + [(label, path) for path, label in self._checkpoint_files.items()]
        return list({path: (label, path) for label, path in reversed(entries)}.values())[::-1]

    def _on_registry_changed(self) -> None:
        try:
            self.model_combo.reset_choices()
            self._on_model_changed()
        except RuntimeError:  # the Qt side of this widget is gone
            pass

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.native, "Choose a U-Net checkpoint", "",
                                              "PyTorch checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.add_checkpoint(path)

    def add_checkpoint(self, path: str | os.PathLike, label: str | None = None) -> bool:
        """Add a checkpoint file to the model list and select it; False (and a message) if it cannot be loaded."""
        key = os.fspath(Path(path).expanduser().resolve())
        self._checkpoint_files[key] = label or Path(key).name
        self.model_combo.reset_choices()
        if self.model_combo.value != key:
            self.model_combo.value = key
        else:
            self._on_model_changed()
        return self._loaded is not None and self._loaded.path == key

    def _on_model_changed(self, *args) -> None:
        from ..model import CheckpointError, load_model

        path = self.model_combo.value
        if self._loaded is not None and self._loaded.path == path:
            return
        self._loaded, error = None, None
        if path is not None:
            try:
                self._loaded = self._models.get(path) or load_model(path)
                self._models[path] = self._loaded
            except (CheckpointError, OSError) as err:
                self._checkpoint_files.pop(path, None)
                error = f"Could not load the model: {err}"
        if self._loaded is not None:
            set_current_model_path(self._loaded.path)
            defaults = self._loaded.inference_defaults
            if defaults:
                self.set_postprocessing_controls(defaults)
            note = "defaults from its model card" if defaults else "no model card defaults; using the settings below"
            text = f"Loaded {Path(self._loaded.path).name} ({note})"
            if self.current_patient() is not None:
                self._queue_spare_layer()
        else:
            text = error or (NO_MODEL_TEXT if not self.model_combo.choices else "Choose a model.")
        self.model_label.value = status_html(text, error=bool(error))
        self.model_label.tooltip = self._loaded.path if self._loaded is not None else ""
        self._update_buttons()

    @property
    def loaded_model(self):
        """The selected, loaded model (``LoadedModel``) or None."""
        return self._loaded

    # ------------------------------------------------------------------------- post-processing

    def settings(self):
        """The post-processing settings in the controls (``inference.PostProcessing``)."""
        from ..inference import PostProcessing

        return PostProcessing(threshold=round(float(self.threshold.value), 4), min_lesion_voxels=self.min_size.value,
                              keep_largest=self.largest_check.value, fill_holes=self.fill_check.value)

    def set_postprocessing_controls(self, values: dict) -> None:
        """Set threshold / TTA / post-processing controls without re-thresholding anything."""
        self._setting_controls = True
        try:
            if "threshold" in values:
                self.threshold.value = float(np.clip(float(values["threshold"]), 0.05, 0.95))
            for key, control, kind in (("tta", self.tta_check, bool), ("keep_largest", self.largest_check, bool),
                                       ("fill_holes", self.fill_check, bool), ("min_lesion_voxels", self.min_size, int)):
                if key in values:
                    control.value = kind(values[key])
        finally:
            self._setting_controls = False

    def set_threshold(self, value: float) -> None:
        """Move the threshold as the user would (re-thresholds the current result)."""
        self.threshold.value = value

    def current_prediction_layer(self):
        """The chosen patient's tumour Labels layer (the active one if it is such a layer)."""
        patient = self.current_patient()
        return tumour_layer(self.viewer, patient.patient_id) if patient is not None else None

    def apply_postprocessing(self, *args) -> bool:
        """Recompute the current result's labels from its stored probabilities with the controls' settings.

        Asks before replacing labels the user has edited; the mask is made in a worker (``postprocessing`` is True
        until it is in the layer); returns True when a recompute started.
        """
        layer = self.current_prediction_layer()
        prob_layer = probability_layer_for(self.viewer, layer) if layer is not None else None
        if self._setting_controls or prob_layer is None:
            return False
        changed = voxels_changed(layer)
        if changed and not any(job_layer is layer for _, job_layer in self._postprocessing) and not self.ask(
                "Discard your corrections?",
                f"'{layer.name}' has {changed:,} voxels you corrected. Changing the threshold or post-processing "
                "recomputes the mask from the AI probabilities and discards those corrections.\n\nRecompute anyway?"):
            self.set_postprocessing_controls(layer.metadata.get("lgg_postprocessing") or {})
            self._say("Kept your corrections; post-processing unchanged.")
            return False
        settings = self.settings()
        worker = _postprocess_job(np.asarray(prob_layer.data, dtype=np.float32), settings)
        job = (worker, layer)
        worker.returned.connect(lambda mask: self._set_mask(layer, prob_layer, settings, mask))
        worker.errored.connect(lambda err: self._say(f"Post-processing failed: {err}", error=True))
        worker.finished.connect(lambda: self._postprocessing.remove(job))
        self._postprocessing.append(job)
        worker.start()
        return True

    @property
    def postprocessing(self) -> bool:
        """True while a re-threshold / post-processing of the current result runs in a worker."""
        return bool(self._postprocessing)

    def _set_mask(self, layer, prob_layer, settings, mask: np.ndarray) -> None:
        """Apply a re-thresholded mask, unless the controls moved on (a later run applies) or the result changed."""
        if settings != self.settings() or probability_layer_for(self.viewer, layer) is not prob_layer:
            return
        layer.metadata[AI_MASK_KEY] = mask.copy()
        layer.metadata["lgg_postprocessing"] = asdict(settings)
        layer.data = mask
        self._on_labels_edited()

    # ----------------------------------------------------------------------------- segmenting

    @property
    def running(self) -> bool:
        """True while a segmentation runs or its result is being added to the viewer."""
        return self._worker is not None or self._adding_result

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.value = status_html(text, error)

    def _update_buttons(self) -> None:
        running = self.running
        self.segment_button.enabled = not running and self._loaded is not None and self.current_patient() is not None
        self.stop_button.enabled = running and self._worker is not None
        for control in (self.browse_button, self.model_combo, self.device_combo, self.image_combo):
            control.enabled = not running
        hint = NO_MODEL_TEXT if not self.model_combo.choices else (
            OPEN_PATIENT_TEXT if self.current_patient() is None else "")
        if not running and self.status_label.value in {status_html(t) for t in ("", NO_MODEL_TEXT, OPEN_PATIENT_TEXT)}:
            self._say(hint)

    def segment(self, patient_id: str | None = None):
        """Segment the chosen patient (or ``patient_id``) in a worker thread; returns the worker, or None with the
        reason in the status line."""
        if self.running:
            return None
        if patient_id is not None:
            self.select_patient(patient_id)
        patient = self.current_patient()
        if patient_id is not None and (patient is None or patient.patient_id != patient_id):
            self._say(f"{patient_id} is not open; nothing was segmented.", error=True)
            return None
        if self._loaded is None or patient is None:
            self._say(NO_MODEL_TEXT if not self.model_combo.choices else
                      "Choose a model first." if self._loaded is None else OPEN_PATIENT_TEXT)
            return None
        pid = patient.patient_id
        layer = self.viewer.layers[f"{pid} tumour"] if f"{pid} tumour" in self.viewer.layers else None
        if layer is not None and has_unexported_edits(layer) and not self.ask(
                "Replace your corrections?", f"'{layer.name}' has corrections that were not exported. Segmenting "
                "again replaces them.\n\nSegment anyway?"):
            return None
        try:
            images = patient.volume()
        except ValueError as err:
            self._say(f"Cannot segment: {err}", error=True)
            return None
        settings = self.settings()
        self._job = {"patient": patient, "model": self._loaded, "model_label": self.model_combo.current_choice,
                     "shape": np.shape(patient.reference.data), "settings": settings, "timing": {}}
        worker = _segment_job(self._loaded.model, images, self.device_combo.value or "auto", self.tta_check.value,
                              int(self.batch_size), settings, self._loaded.training_size, self._job["timing"])
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.aborted.connect(lambda: self._finish(pid, None, "Stopped; no layer was added."))
        worker.finished.connect(self._on_finished)
        self._worker, self._reported = worker, False
        self.progress.max, self.progress.value = max(images.shape[0], 1), 0
        self._say(f"Segmenting {pid}…")
        self._update_buttons()
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the running segmentation to stop after the current batch."""
        if self._worker is not None:
            self._worker.quit()
            self.stop_button.enabled = False
            self._say("Stopping after the current batch…")

    def _on_progress(self, value) -> None:
        done, total = value
        self.progress.max, self.progress.value = max(int(total), 1), int(done)

    def _on_finished(self) -> None:
        self._worker = None
        if not self._adding_result and not self._reported:  # stopped after the last batch: no `aborted`
            self._finish(self._job["patient"].patient_id, None, "Stopped; no layer was added.")
        self._update_buttons()

    def _finish(self, pid: str, layer, message: str, error: bool = False) -> None:
        """The end of a run: the status line, and ``segmentation_done`` for the workflow."""
        self._reported = True
        self._say(message, error)
        if error:
            notify(message, "error")
        self.segmentation_done.emit(pid, layer, message)

    def _on_result(self, result) -> None:
        job = self._job
        if job is None:
            return
        patient: PatientLayers = job["patient"]
        pid = patient.patient_id
        if isinstance(result, str):
            return self._finish(pid, None, f"Segmentation of {pid} failed: {result}", error=True)
        if not patient.alive(self.viewer):
            return self._finish(pid, None, f"The layers of {pid} were closed while segmenting; the result was "
                                "discarded.")
        probs, mask = result
        self.last_timing = dict(job["timing"])
        shape = job["shape"]
        probs = np.asarray(probs, np.float32)
        if len(shape) == 2:
            probs, mask = probs[0], mask[0]
        if probs.shape != tuple(shape):
            return self._finish(pid, None, f"The result {probs.shape} does not fit the image {tuple(shape)}; "
                                "discarded.", error=True)
        if self.settings() != job["settings"]:  # the controls changed while the worker ran: redo the mask off-thread
            self._adding_result = True
            settings = self.settings()
            worker = _postprocess_job(probs, settings)
            worker.returned.connect(lambda new_mask: self._add_result(patient, probs, job["model"],
                                                                      job["model_label"], new_mask, settings))
            worker.errored.connect(lambda err: (self._end_adding(), self._finish(
                pid, None, f"Post-processing of {pid} failed: {err}", error=True)))
            worker.start()
            return
        self._add_result(patient, probs, job["model"], job["model_label"], mask, job["settings"])

    def _add_result(self, patient: PatientLayers, probs: np.ndarray, loaded, model_label: str, mask: np.ndarray,
                    settings=None):
        """Add (or refill) the probability and Labels layers, one event-loop turn apart.

        A patient segmented before keeps its two layers: their data is replaced (a few ms), never removed and added
        again (napari: 0.1-0.3 s per layer added or removed)."""
        pid, ref, rid = patient.patient_id, patient.reference, uuid.uuid4().hex
        name = f"{pid} tumour"
        geometry = {"scale": ref.scale, "translate": ref.translate, "axis_labels": ref.axis_labels}
        settings = settings if settings is not None else self.settings()
        prob_meta = {**patient.metadata(), "lgg_role": ROLE_PROBABILITY, RESULT_KEY: rid}
        label_meta = {**patient.metadata(), "lgg_role": ROLE_PREDICTION, RESULT_KEY: rid, "lgg_model": loaded.path,
                      "lgg_model_label": model_label, AI_MASK_KEY: mask.copy(),
                      "lgg_postprocessing": asdict(settings)}
        state: dict = {}

        def place_probabilities() -> None:
            state["labels"] = place_probability_layer(self.viewer, pid, probs, prob_meta, geometry)

        def place_labels() -> None:
            state["labels"] = place_tumour_layer(self.viewer, state["labels"], mask, label_meta, name, geometry)
            self._watch_labels(state["labels"])

        def select_labels() -> None:  # napari builds the layer's controls on first selection: a turn of its own
            self._select_for_the_brush(state["labels"])

        def ready_for_the_brush() -> None:
            labels = state["labels"]
            labels.mode = "paint"
            self._compare_text = ""
            self.update_readout()
            self._finish(pid, labels, f"Done: {pid} segmented with {model_label}. Correct it with the brush "
                                      "(label 1 = tumour, 0 = erase).")
            if not mask.any():
                notify(f"{pid}: the model found no tumour at threshold {settings.threshold:.2f}", "info")

        self._adding_result = True
        self._run_gui_steps(patient, [place_probabilities, place_labels, select_labels, ready_for_the_brush])

    def _end_adding(self) -> None:
        self._adding_result, self._job = False, None
        self._update_buttons()

    def _select_for_the_brush(self, labels) -> None:
        """Select ``labels`` with the tumour label and a 10-px brush."""
        labels.selected_label, labels.brush_size = 1, 10
        self.viewer.layers.selection.active = labels

    def _ready_for_the_brush(self, labels) -> None:
        """Select ``labels`` in paint mode with the tumour label and a 10-px brush."""
        self._select_for_the_brush(labels)
        labels.mode = "paint"

    def _run_gui_steps(self, patient: PatientLayers, steps: list) -> None:
        """Run GUI-thread steps one event-loop turn apart, so that the window repaints and reacts between them
        (adding each layer costs napari 0.1-0.3 s); stops if the patient's layers are closed meanwhile."""
        if steps and not patient.alive(self.viewer):
            self._finish(patient.patient_id, None, f"The layers of {patient.patient_id} were closed while the "
                         "result was being added; it was discarded.")
            steps = []
        if not steps:
            self._end_adding()
            return
        steps[0]()
        _later(lambda: self._run_gui_steps(patient, steps[1:]), STEP_DELAY_MS)

    # -------------------------------------------------------------------------- edits, readout

    def _watch_labels(self, layer) -> None:
        for emitter in (layer.events.paint, layer.events.data):
            emitter.disconnect(self._on_labels_edited)
            emitter.connect(self._on_labels_edited)
            self._connections.append((emitter, self._on_labels_edited))

    def _on_labels_edited(self, event=None) -> None:
        self._compare_text = ""
        if getattr(event, "type", "") == "paint":  # napari emits it before writing an edit made in code
            _later(self.update_readout)
        else:
            self.update_readout()

    def update_readout(self) -> None:
        """Show tumour voxels, slices and volume of the current result (and the last comparison)."""
        layer = self.current_prediction_layer()
        text = "" if layer is None else f"Tumour in '{layer.name}': " + volume_readout(layer.data, layer.scale)
        self.readout_label.value = text + (f"\n{self._compare_text}" if text and self._compare_text else "")
        self.readout_label.visible = bool(text)
        self.compare_button.enabled = layer is not None and ai_mask_of(layer) is not None

    def compare_with_ai(self) -> dict | None:
        """Dice between the AI output and the current labels, and voxels changed; shown in the readout."""
        layer = self.current_prediction_layer()
        result = compare_with_ai(layer) if layer is not None else None
        if result is None:
            self._compare_text = "No AI output to compare with."
            self.update_readout()
            return None
        added, removed = result["voxels_added"], result["voxels_removed"]
        self._compare_text = (f"Dice vs AI: {result['dice']:.4f}; you changed {added + removed:,} voxels "
                              f"(+{added:,} / -{removed:,})")
        self.update_readout()
        return result

    # ------------------------------------------------------------------------------- recovery

    def autosave_now(self) -> list[Path]:
        """Save edited, unexported tumour layers that changed since their last autosave; returns the files."""
        saved = []
        for layer in prediction_layers(self.viewer):
            pid = (layer.metadata or {}).get("lgg_patient_id")
            digest = mask_digest(np.asarray(layer.data))
            if not pid or not has_unexported_edits(layer) or self._last_autosave.get(id(layer)) == digest:
                continue
            try:
                saved.append(recovery.save_recovery(pid, np.asarray(layer.data), ai_mask=ai_mask_of(layer), info={
                    "layer": layer.name, **{k: layer.metadata.get(k) for k in ("lgg_model", "lgg_model_label")}}))
            except OSError as err:
                self._say(f"Autosave failed: {err}", error=True)
                continue
            self._last_autosave[id(layer)] = digest
        return saved

    def _queue_recovery_check(self, patient_id: str) -> None:
        if patient_id not in self._recovery_offered:
            _later(lambda: self.check_recovery(patient_id))

    def check_recovery(self, patient_id: str):
        """Offer to restore an autosaved correction of the patient (once per session); returns the layer."""
        patient = find_patients(self.viewer).get(patient_id)
        if patient_id in self._recovery_offered or patient is None or not recovery.has_recovery(patient_id):
            return None
        self._recovery_offered.add(patient_id)
        rec = recovery.load_recovery(patient_id)
        if rec is None or any(mask_digest(np.asarray(la.data)) == mask_digest(rec.mask)
                              for la in prediction_layers(self.viewer, patient_id)):
            return None
        if not self.ask("Restore autosaved corrections?",
                        f"Corrections of {patient_id} autosaved at {rec.saved} ({int(np.count_nonzero(rec.mask)):,} "
                        f"tumour voxels) were found in {rec.path}.\n\nRestore them as a layer "
                        f"'{patient_id} tumour (recovered)'?"):
            return None
        return self.restore_recovery(patient, rec)

    def restore_recovery(self, patient: PatientLayers, rec: recovery.Recovery):
        """Add a recovered correction as '<PATIENT> tumour (recovered)', ready for the brush."""
        try:
            layer = add_recovered_layer(self.viewer, patient, rec)
        except ValueError as err:
            self._say(str(err), error=True)
            return None
        self._last_autosave[id(layer)] = mask_digest(np.asarray(layer.data))
        self._watch_labels(layer)
        self._ready_for_the_brush(layer)
        self._say(f"Restored the autosaved corrections of {patient.patient_id}.")
        return layer


def segment_dock(viewer) -> SegmentWidget:
    """The viewer's Segment dock, opened through the plugin's manifest when it is not docked yet."""
    return viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")[1]


def segment_current(viewer, patient_id: str | None = None):
    """Segment ``patient_id`` (default: the dock's patient) with the Segment dock's model and settings; returns the
    worker, or None (the reason is in the dock's status). The result arrives through ``segmentation_done``."""
    return segment_dock(viewer).segment(patient_id)
