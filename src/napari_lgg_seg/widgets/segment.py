"""The "Segment tumour" dock: a magicgui form on :mod:`napari_lgg_seg.segmentation`; the network and the
post-processing run in ``thread_worker`` workers (torch is imported lazily: opening napari does not import it)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from magicgui import widgets
from napari.qt.threading import thread_worker
from psygnal import Signal
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog
from superqt import QCollapsible

from .. import layers
from .. import segmentation as core
from ..layers import PatientLayers, find_patients
from ..segmentation import NO_MODEL_TEXT, OPEN_PATIENT_TEXT, STOPPED_TEXT
from . import _common as ui

AUTOSAVE_INTERVAL_MS = 30_000
#: delay of the next GUI step of a chain (ms). Not 0: Qt delivers a 0-ms single shot as a posted event, and a chain
#: of them runs two steps per event-loop turn (no timer, no repaint in between: two layer adds froze the window for
#: one 190-230 ms stall instead of two short ones). A 1-ms timer lets the window's own timers and paints run first.
STEP_DELAY_MS = 1


@thread_worker(start_thread=False)
def _segment_job(*args):
    """``segmentation.segment_volume`` below the window's CPU priority. Any error is returned as its message (a
    ``str``): superqt drops a RuntimeError raised by a generator worker (torch allocation failure, CUDA out of
    memory) without ``errored`` or ``finished``, which hung the dock."""
    try:
        ui.run_below_the_window()
        for module in ("napari._vispy.layers.image", "napari._vispy.layers.labels", "scipy.ndimage"):
            __import__(module)  # otherwise the first Labels layer of a session imports these on the GUI thread
        return (yield from core.segment_volume(*args))
    except Exception as err:  # noqa: BLE001 - reported in the dock, never lost
        return f"{type(err).__name__}: {err}"


@thread_worker(start_thread=False)
def _postprocess_job(probs: np.ndarray, settings) -> np.ndarray:
    """The mask of ``probs`` with ``settings`` (80-110 ms for a real patient: too long for the GUI thread)."""
    from ..inference import postprocess

    ui.run_below_the_window()
    return postprocess(probs, settings)


def _later(callback, delay_ms: int = 0) -> None:
    """Run ``callback`` on a later event-loop turn; nothing if the dock was closed meanwhile."""

    def run() -> None:
        try:
            callback()
        except RuntimeError:  # the dock's Qt objects are gone
            pass

    QTimer.singleShot(delay_ms, run)


def _row(*items, **options) -> widgets.Container:
    row = widgets.Container(widgets=items, layout="horizontal", labels=False, **options)
    row.margins = (0, 0, 0, 0)
    return row


class SegmentWidget(widgets.Container):
    """Segment the chosen patient with a U-Net and hand the result to the brush.

    ``ask(title, text) -> bool`` asks the user yes/no questions; replace it in tests. ``segmentation_done``
    ``(patient_id, labels layer or None, message)`` is emitted once per run, when the result is ready for the brush
    (None after an error, Stop, or a discarded result).
    """

    segmentation_done = Signal(str, object, str)

    def __init__(self, napari_viewer) -> None:
        import napari.layers

        from ..inference import available_devices

        self.viewer, self.batch_size, self.last_timing = napari_viewer, 8, {}  # last_timing: the worker's seconds
        self._worker = self._job = self._loaded = self._patient_id = None
        self._adding_result = self._setting_controls = self._spares_queued = False
        self._models: dict[str, object] = {}  # path -> LoadedModel
        self._checkpoint_files: dict[str, str] = {}  # path -> label, chosen with the file picker
        self._compare_text, self._recovery_offered, self._last_autosave = "", set(), {}
        self._postprocessing: list[tuple] = []  # (worker, labels layer) of re-thresholds in flight

        self.image_combo = widgets.create_widget(annotation=napari.layers.Image, label="Image", options={
            "tooltip": "The patient to segment: any of its image layers"})
        self.model_combo = widgets.ComboBox(choices=self._model_choices)
        self.browse_button = widgets.PushButton(text="Checkpoint…", tooltip="Load a U-Net checkpoint (.pt)")
        self.model_label = ui.wrapped_label(widgets.Label(), rich=True)
        self.threshold = widgets.FloatSlider(label="Threshold", min=core.THRESHOLD_RANGE[0], step=0.05, value=0.5,
                                             max=core.THRESHOLD_RANGE[1], tracking=False)
        self.device_combo = widgets.ComboBox(label="Device", choices=available_devices())
        self.tta_check = widgets.CheckBox(text="Test-time augmentation (left-right flip)", tooltip=(
            "Average with the flipped image's prediction: slower, slightly smoother"))
        self.largest_check = widgets.CheckBox(text="Keep largest 3D component")
        self.fill_check = widgets.CheckBox(text="Fill holes in each slice")
        self.min_size = widgets.SpinBox(label="Minimum lesion (voxels)", max=10_000_000, step=10,
                                        tooltip="Remove 3D lesions smaller than this many voxels (0: keep all)")
        self.min_size.native.setKeyboardTracking(False)
        self.segment_button = widgets.PushButton(text="Segment")
        self.stop_button = widgets.PushButton(text="Stop", enabled=False)
        self.progress = widgets.ProgressBar(min=0, max=1, value=0, label="")
        self.progress.native.setFormat("%v / %m slices")
        self.status_label = ui.wrapped_label(widgets.Label(), rich=True)
        self.readout_label = ui.wrapped_label(widgets.Label())
        self.compare_button = widgets.PushButton(text="Compare with AI", enabled=False,
                                                 tooltip="Dice between the AI output and your corrected labels")
        form = widgets.Container(widgets=[self.image_combo, _row(self.model_combo, self.browse_button, label="Model"),
                                          self.threshold])
        form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[form, self.model_label, _row(self.segment_button, self.stop_button, self.progress),
                                  self.status_label, self.readout_label, self.compare_button], labels=False)
        self.ask = ui.qt_ask(self.native)
        self.more_options = QCollapsible("More options")  # collapsed: a short dock (issue 13, bug 5)
        self.more_options.addWidget(widgets.Container(widgets=[self.device_combo, self.tta_check, self.largest_check,
                                                               self.fill_check, self.min_size]).native)
        self.more_options.setContentsMargins(0, 0, 0, 0)
        self.native.layout().insertWidget(2, self.more_options)
        self._controls = {"threshold": self.threshold, "tta": self.tta_check, "keep_largest": self.largest_check,
                          "fill_holes": self.fill_check, "min_lesion_voxels": self.min_size}

        for key, control in self._controls.items():
            if key != "tta":  # TTA applies to the next run: nothing to recompute
                control.changed.connect(self.apply_postprocessing)
        self.image_combo.changed.connect(self._on_patient_changed)
        self.model_combo.changed.connect(self._on_model_changed)
        self.browse_button.clicked.connect(self._browse_checkpoint)
        self.segment_button.clicked.connect(lambda: self.segment())
        self.stop_button.clicked.connect(self.stop)
        self.compare_button.clicked.connect(self.compare_with_ai)
        events = self.viewer.layers.events
        self._connections = [(events.inserted, self._on_layer_inserted), (events.removed, self._on_layers_changed),
                             (events.renamed, self._on_layer_renamed),
                             (self.viewer.layers.selection.events.active, self._on_labels_edited),
                             (core.MODEL_REGISTRY.changed, self._on_registry_changed)]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.native.destroyed.connect(ui.disconnector(self._connections))
        self.autosave_timer = QTimer(self.native, interval=AUTOSAVE_INTERVAL_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start()
        for layer in layers.prediction_layers(self.viewer):
            self._watch_labels(layer)
        for pid, patient in find_patients(self.viewer).items():
            if patient.is_lgg:
                self._queue_recovery_check(pid)
        self._on_model_changed()
        ui.fit_layer_list_to_patients(self.viewer)
        ui.keep_gc_pauses_short(self.viewer, self.native)

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
        return None if layer is None or layer not in self.viewer.layers else core.patient_showing(self.viewer, layer)

    def select_patient(self, patient_id: str) -> None:
        """Choose a patient by id (its FLAIR, or its only image)."""
        self.image_combo.reset_choices()
        patient = find_patients(self.viewer).get(patient_id)
        if patient is not None and patient.reference in self.image_combo.choices:
            self.image_combo.value = patient.reference

    def _on_layer_renamed(self, event) -> None:
        """The patient browser refills the open patient's layers with the next patient, renaming them last: a
        renamed layer is a newly opened patient as much as an inserted one."""
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return self._on_layers_changed()
        self._on_layer_inserted(SimpleNamespace(value=layer))

    def _on_layer_inserted(self, event) -> None:
        layer, patient = event.value, None
        role = (layer.metadata or {}).get("lgg_role")
        if role == layers.ROLE_PREDICTION and hasattr(layer.events, "paint"):  # also the reader's (a `segment` output)
            self._watch_labels(layer)
        elif role != layers.ROLE_PROBABILITY:
            patient = core.patient_showing(self.viewer, layer, by_metadata=False)
        if patient is not None:
            self.select_patient(patient.patient_id)  # a newly opened patient is the one to segment
            if patient.is_lgg:
                self._queue_recovery_check(patient.patient_id)
        self._on_layers_changed()

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "removed":
            self._last_autosave.pop(id(event.value), None)
        self.reset_choices()

    def _on_patient_changed(self, *args) -> None:
        patient = self.current_patient()
        if patient is not None:
            self._queue_spare_layer()
        pid = patient.patient_id if patient is not None else None
        if pid != self._patient_id:  # the status names the patient on screen (issue 13, bug 2)
            self._patient_id, self._compare_text = pid, ""
            if not self.running:
                self._say(core.patient_status(patient, self._loaded, self.viewer))
        self._update_buttons()
        self.update_readout()

    def _queue_spare_layer(self) -> None:
        if not self._spares_queued:
            self._spares_queued = True
            _later(self._add_spare_layer, STEP_DELAY_MS)

    def _add_spare_layer(self) -> None:
        """Add one parked result layer the patient on screen will need (a model is loaded) per event-loop turn."""
        self._spares_queued = False
        patient = self.current_patient()
        if patient is None or self._adding_result or self._loaded is None:
            return
        added = core.add_spare_for(self.viewer, patient)
        if added is not None:
            kind, give_back, more = added

            def then() -> None:
                give_back()
                if more:
                    self._queue_spare_layer()

            if kind == "labels":  # napari shows (and styles) the Labels controls once now, not at the first result
                _later(then, STEP_DELAY_MS)
            else:
                then()

    # --------------------------------------------------------------------------------- models

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from ..model import default_model_path

        return core.model_choices(default_model_path(), core.registered_models(), self._checkpoint_files)

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
        path = self.model_combo.value
        if self._loaded is not None and self._loaded.path == path:
            return
        self._loaded, error = core.load_cached(path, self._models) if path is not None else (None, None)
        if error:
            self._checkpoint_files.pop(path, None)
        if self._loaded is not None:
            core.set_current_model_path(self._loaded.path)
            self.set_postprocessing_controls(self._loaded.inference_defaults)
            if self.current_patient() is not None:
                self._queue_spare_layer()
        text = core.model_text(self._loaded, error, bool(self.model_combo.choices))
        self.model_label.value = ui.status_html(text, error=bool(error))
        self.model_label.tooltip = self._loaded.path if self._loaded is not None else ""
        self._update_buttons()

    @property
    def loaded_model(self):
        """The selected, loaded model (``LoadedModel``) or None."""
        return self._loaded

    # ------------------------------------------------------------------------- post-processing

    def settings(self):
        """The post-processing settings in the controls (``inference.PostProcessing``)."""
        return core.settings_from_controls({key: control.value for key, control in self._controls.items()})

    def set_postprocessing_controls(self, values: dict) -> None:
        """Set threshold / TTA / post-processing controls without re-thresholding anything."""
        self._setting_controls = True
        try:
            for key, value in core.control_values(values).items():
                self._controls[key].value = value
        finally:
            self._setting_controls = False

    def set_threshold(self, value: float) -> None:
        """Move the threshold as the user would (re-thresholds the current result)."""
        self.threshold.value = value

    def current_prediction_layer(self):
        """The chosen patient's tumour Labels layer (the active one if it is such a layer)."""
        patient = self.current_patient()
        return layers.tumour_layer(self.viewer, patient.patient_id) if patient is not None else None

    def apply_postprocessing(self, *args) -> bool:
        """Recompute the current result's labels from its probabilities with the controls' settings, in a worker
        (``postprocessing`` is True until the mask is in the layer), after asking before discarding corrections.
        Returns True when a recompute started."""
        layer = self.current_prediction_layer()
        prob_layer = layers.probability_layer_for(self.viewer, layer) if layer is not None else None
        if self._setting_controls or prob_layer is None:
            return False
        in_flight = any(job_layer is layer for _, job_layer in self._postprocessing)
        question = None if in_flight else core.discard_question(layer)
        if question is not None and not self.ask(*question):
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
        if settings == self.settings() and layers.probability_layer_for(self.viewer, layer) is prob_layer:
            core.set_result_mask(layer, mask, settings)
            self._on_labels_edited()

    # ----------------------------------------------------------------------------- segmenting

    @property
    def running(self) -> bool:
        """True while a segmentation runs or its result is being added to the viewer."""
        return self._worker is not None or self._adding_result

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.value = ui.status_html(text, error)

    def _update_buttons(self) -> None:
        running, patient = self.running, self.current_patient()
        self.segment_button.enabled = not running and self._loaded is not None and patient is not None
        self.stop_button.enabled = running and self._worker is not None
        for control in (self.browse_button, self.model_combo, self.device_combo, self.image_combo):
            control.enabled = not running
        hints = ("", NO_MODEL_TEXT, OPEN_PATIENT_TEXT)  # a status line that only hints is kept up to date
        if not running and self.status_label.value in {ui.status_html(hint) for hint in hints}:
            self._say(NO_MODEL_TEXT if not self.model_combo.choices else OPEN_PATIENT_TEXT if patient is None else "")

    def segment(self, patient_id: str | None = None):
        """Segment the chosen patient (or ``patient_id``) in a worker thread; returns the worker, or None with the
        reason in the status line."""
        if self.running:
            return None
        if patient_id is not None:
            self.select_patient(patient_id)
        patient = self.current_patient()
        reason = core.refusal(patient_id, patient, self._loaded, bool(self.model_combo.choices))
        if reason is not None:
            self._say(*reason)
            return None
        question = core.replace_question(self.viewer, patient.patient_id)
        if question is not None and not self.ask(*question):
            return None
        try:
            images = patient.volume()
        except ValueError as err:
            self._say(f"Cannot segment: {err}", error=True)
            return None
        run = self._job = core.SegmentRun(patient, self._loaded, self.model_combo.current_choice, self.settings())
        worker = _segment_job(run.model.model, images, self.device_combo.value or "auto", self.tta_check.value,
                              int(self.batch_size), run.settings, run.model.training_size, run.timing)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.aborted.connect(lambda: self._finish(run.patient_id, None, STOPPED_TEXT))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.progress.max, self.progress.value = max(images.shape[0], 1), 0
        self._say(f"Segmenting {run.patient_id}…")
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
        if not self._adding_result and not self._job.reported:  # stopped after the last batch: no `aborted`
            self._finish(self._job.patient_id, None, STOPPED_TEXT)
        self._update_buttons()

    def _finish(self, pid: str, layer, message: str, error: bool = False) -> None:
        """The end of a run: the status line, and ``segmentation_done`` for the workflow."""
        if self._job is not None:
            self._job.reported = True
        self._say(message, error)
        if error:
            ui.notify(message, "error")
        self.segmentation_done.emit(pid, layer, message)

    def _on_result(self, result) -> None:
        run = self._job
        if run is None:
            return
        try:
            probs, mask = run.check(self.viewer, result)
        except core.RunFailed as failed:
            return self._finish(run.patient_id, None, *failed.args)
        self.last_timing = dict(run.timing)
        if self.settings() == run.settings:
            return self._add_result(run, probs, mask, run.settings)
        self._adding_result, settings = True, self.settings()  # the controls changed meanwhile: redo the mask
        worker = _postprocess_job(probs, settings)
        worker.returned.connect(lambda new_mask: self._add_result(run, probs, new_mask, settings))
        worker.errored.connect(lambda err: (self._end_adding(), self._finish(
            run.patient_id, None, f"Post-processing of {run.patient_id} failed: {err}", error=True)))
        worker.start()

    def _add_result(self, run: core.SegmentRun, probs: np.ndarray, mask: np.ndarray, settings) -> None:
        """Put the result in the viewer in steps one event-loop turn apart (``segmentation.ResultPlacement``)."""
        placed = core.ResultPlacement(self.viewer, run.patient, probs, mask, run.model.path, run.model_label,
                                      settings)

        def ready_for_the_brush() -> None:
            placed.labels.mode = "paint"
            self._compare_text = ""
            self.update_readout()
            self._finish(run.patient_id, placed.labels, core.done_text(run.patient_id, run.model_label))
            if not mask.any():
                ui.notify(f"{run.patient_id}: the model found no tumour at threshold {settings.threshold:.2f}")

        self._adding_result = True
        self._run_gui_steps(run.patient, [placed.place_probabilities, lambda: self._watch_labels(placed.place_labels()),
                                          placed.select_labels, ready_for_the_brush])

    def _end_adding(self) -> None:
        self._adding_result, self._job = False, None
        self._update_buttons()

    def _run_gui_steps(self, patient: PatientLayers, steps: list) -> None:
        """Run GUI-thread steps one event-loop turn apart, so that the window repaints and reacts between them
        (adding each layer costs napari 0.1-0.3 s); stops if the patient's layers are closed meanwhile."""
        if steps and not patient.alive(self.viewer):
            self._finish(patient.patient_id, None, f"The layers of {patient.patient_id} were closed while the "
                         "result was being added; it was discarded.")
            steps = []
        if not steps:
            return self._end_adding()
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
        self.readout_label.value = text = core.readout_text(layer, self._compare_text)
        self.readout_label.visible = bool(text)
        self.compare_button.enabled = layer is not None and layers.ai_mask_of(layer) is not None

    def compare_with_ai(self) -> dict | None:
        """Dice between the AI output and the current labels, and voxels changed; shown in the readout."""
        layer = self.current_prediction_layer()
        result = layers.compare_with_ai(layer) if layer is not None else None
        self._compare_text = core.compare_text(result)
        self.update_readout()
        return result

    # ------------------------------------------------------------------------------- recovery

    def autosave_now(self) -> list[Path]:
        """Save edited, unexported tumour layers that changed since their last autosave; returns the files."""
        saved, errors = core.autosave(self.viewer, self._last_autosave)
        for error in errors:
            self._say(error, error=True)
        return saved

    def _queue_recovery_check(self, patient_id: str) -> None:
        if patient_id not in self._recovery_offered:
            _later(lambda: self.check_recovery(patient_id))

    def check_recovery(self, patient_id: str):
        """Offer to restore an autosaved correction of the patient (once per session); returns the layer."""
        patient = find_patients(self.viewer).get(patient_id)
        rec = None if patient is None else core.pending_recovery(self.viewer, patient_id, self._recovery_offered)
        if rec is None or not self.ask(*core.recovery_question(patient_id, rec)):
            return None
        return self.restore_recovery(patient, rec)

    def restore_recovery(self, patient: PatientLayers, rec):
        """Add a ``recovery.Recovery`` as '<PATIENT> tumour (recovered)', ready for the brush; returns the layer."""
        try:
            layer = core.restore_autosave(self.viewer, patient, rec, self._last_autosave)
        except ValueError as err:
            self._say(str(err), error=True)
            return None
        self._watch_labels(layer)
        self._say(f"Restored the autosaved corrections of {patient.patient_id}.")
        return layer


def segment_dock(viewer) -> SegmentWidget:
    """The viewer's Segment dock, opened through the plugin's manifest when it is not docked yet."""
    return viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")[1]


def segment_current(viewer, patient_id: str | None = None):
    """Segment ``patient_id`` (default: the dock's patient) with the Segment dock's model and settings; returns the
    worker, or None (the reason is in the dock's status). The result arrives through ``segmentation_done``."""
    return segment_dock(viewer).segment(patient_id)
