"""The "Segment tumour" dock: a magicgui form on :mod:`napari_lgg_seg.segmentation`; the network and the
post-processing run in ``thread_worker`` workers (torch is imported lazily: opening napari does not import it)."""

import os
from pathlib import Path
from typing import Annotated

import numpy as np
from magicgui import widgets
from magicgui.signature import magic_signature
from napari.qt.threading import thread_worker
from psygnal import Signal
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog
from superqt import QCollapsible

from .. import layers
from .. import segmentation as core
from ..layers import PatientLayers, find_patients
from ..segmentation import NO_MODEL_TEXT, STOPPED_TEXT  # noqa: F401 - NO_MODEL_TEXT: for the tests
from . import _common as ui

AUTOSAVE_INTERVAL_MS = 30_000
#: delay of the next GUI step of a chain (ms). Not 0: Qt delivers a 0-ms single shot as a posted event, and a chain
#: of them runs two steps per event-loop turn (no timer, no repaint in between: two layer adds froze the window for
#: one 190-230 ms stall instead of two short ones). A 1-ms timer lets the window's own timers and paints run first.
STEP_DELAY_MS = 1


def segment_options(
    *,
    threshold: Annotated[float, {"widget_type": "FloatSlider", "label": "Threshold", "min": core.THRESHOLD_RANGE[0],
                                 "max": core.THRESHOLD_RANGE[1], "step": 0.05, "tracking": False}] = 0.5,
    device: Annotated[str, {"label": "Device", "choices": ui.device_choices}],
    tta: Annotated[bool, {"text": "Test-time augmentation (left-right flip)",
                          "tooltip": "Average with the flipped image's prediction: slower, slightly smoother"}] = False,
    keep_largest: Annotated[bool, {"text": "Keep largest 3D component"}] = False,
    fill_holes: Annotated[bool, {"text": "Fill holes in each slice"}] = False,
    min_lesion_voxels: Annotated[int, {"label": "Minimum lesion (voxels)", "max": 10_000_000, "step": 10,
                                       "tooltip": "Remove 3D lesions smaller than this many voxels (0: keep all)"}] = 0,
) -> None:
    """The dock's segmentation settings (all but ``device``: ``segmentation.settings_from_controls``)."""


@thread_worker(start_thread=False)
def _segment_job(*args):
    """``segmentation.segment_volume`` below the window's CPU priority. Any error is returned as its message (a
    ``str``): superqt drops a RuntimeError raised by a generator worker (torch allocation failure, CUDA out of
    memory) without ``errored`` or ``finished``, which hung the dock."""
    try:
        layers.run_below_the_window()
        for module in ("napari._vispy.layers.image", "napari._vispy.layers.labels", "scipy.ndimage"):
            __import__(module)  # otherwise the first Labels layer of a session imports these on the GUI thread
        return (yield from core.segment_volume(*args))
    except Exception as err:  # noqa: BLE001 - reported in the dock, never lost
        return f"{type(err).__name__}: {err}"


@ui.background
def _postprocess_job(probs: np.ndarray, settings) -> np.ndarray:
    """The mask of ``probs`` with ``settings`` (80-110 ms for a real patient: too long for the GUI thread)."""
    from ..inference import postprocess

    return postprocess(probs, settings)


class SegmentWidget(widgets.Container):
    """Segment the chosen patient with a U-Net and hand the result to the brush.

    ``ask(title, text) -> bool`` asks the user yes/no questions; replace it in tests. ``segmentation_done``
    ``(patient_id, labels layer or None, message)`` is emitted once per run, when the result is ready for the brush
    (None after an error, Stop, or a discarded result).
    """

    segmentation_done = Signal(str, object, str)

    def __init__(self, napari_viewer) -> None:
        import napari.layers

        self.viewer, self.batch_size, self.last_timing = napari_viewer, 8, {}  # last_timing: the worker's seconds
        self._worker, self._setting_controls, self._status = None, False, ""  # _status: the status line's text
        self._loading_model = False  # a checkpoint loads in a worker
        self.session = core.SegmentSession(napari_viewer, lambda *question: self.ask(*question), ui.later,
                                           self.restore_recovery, STEP_DELAY_MS)

        self.image_combo = widgets.create_widget(annotation=napari.layers.Image, label="Image", options={
            "tooltip": "The patient to segment: any of its image layers"})
        self.model_combo = widgets.ComboBox(choices=lambda _widget: self.session.model_choices())
        self.browse_button = widgets.PushButton(text="Checkpoint…", tooltip="Load a U-Net checkpoint (.pt)")
        self.model_label = ui.wrapped_label(widgets.Label(), rich=True)
        options = dict(magic_signature(segment_options).widgets())
        self.threshold, self.device_combo, self.tta_check = options["threshold"], options.pop("device"), options["tta"]
        self.largest_check, self.fill_check, self.min_size = (options["keep_largest"], options["fill_holes"],
                                                              options["min_lesion_voxels"])
        self._controls = options  # the post-processing settings, by ``PostProcessing`` field
        self.min_size.native.setKeyboardTracking(False)
        self.segment_button = widgets.PushButton(text="Segment")
        self.stop_button = widgets.PushButton(text="Stop", enabled=False)
        self.progress = widgets.ProgressBar(min=0, max=1, value=0, label="")
        self.progress.native.setFormat("%v / %m slices")
        self.status_label = ui.wrapped_label(widgets.Label(), rich=True)
        self.readout_label = ui.wrapped_label(widgets.Label())
        self.compare_button = widgets.PushButton(text="Compare with AI", enabled=False,
                                                 tooltip="Dice between the AI output and your corrected labels")
        form = widgets.Container(widgets=[self.image_combo, ui.row(self.model_combo, self.browse_button, label="Model"),
                                          self.threshold])
        form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[form, self.model_label, ui.row(self.segment_button, self.stop_button, self.progress),
                                  self.status_label, self.readout_label, self.compare_button], labels=False)
        self.ask = ui.qt_ask(self.native)
        self.more_options = QCollapsible("More options")  # collapsed: a short dock (issue 13, bug 5)
        self.more_options.addWidget(widgets.Container(widgets=[self.device_combo, self.tta_check, self.largest_check,
                                                               self.fill_check, self.min_size]).native)
        self.more_options.setContentsMargins(0, 0, 0, 0)
        self.native.layout().insertWidget(2, self.more_options)

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
        self._connections = [(events.inserted, self._on_layer_event), (events.removed, self._on_layer_event),
                             (events.renamed, self._on_layer_event),
                             (self.viewer.layers.selection.events.active, self._on_labels_edited),
                             (core.MODEL_REGISTRY.changed, self._on_registry_changed)]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.native.destroyed.connect(ui.disconnector(self._connections))
        self.autosave_timer = QTimer(self.native, interval=AUTOSAVE_INTERVAL_MS)
        self.autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_timer.start()
        for layer in self.session.open_results():
            self._watch_labels(layer)
        self._on_model_changed(wait=True)  # the dock opens with its model loaded
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

    def _on_layer_event(self, event) -> None:
        watch, patient = self.session.layer_event(event)
        if watch is not None:
            self._watch_labels(watch)
        if patient is not None:
            self.select_patient(patient.patient_id)  # a newly opened patient is the one to segment
        self.reset_choices()

    def _on_patient_changed(self, *args) -> None:
        patient = self.current_patient()
        if self.session.patient_changed(patient) and not self.running:  # the status names the patient on screen
            self._say(core.patient_status(patient, self.session.loaded, self.viewer))
        self._update_buttons()
        self.update_readout()

    # --------------------------------------------------------------------------------- models

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
            self.add_checkpoint(path, wait=False)

    def add_checkpoint(self, path: str | os.PathLike, label: str | None = None, wait: bool = True) -> bool:
        """Add a checkpoint file to the model list and select it; False (and a message) if it cannot be loaded.
        ``wait=False`` (the Checkpoint… button) loads it in a worker: False until it is loaded."""
        key = self.session.add_checkpoint_file(path, label)
        with self.model_combo.changed.blocked():  # one selection below, loaded as ``wait`` says
            self.model_combo.reset_choices()
            self.model_combo.value = key
        self._on_model_changed(wait=wait)
        return self.loaded_model is not None and self.loaded_model.path == key

    def _on_model_changed(self, *args, wait: bool = False) -> None:
        """Load the listed model as the current one: in a worker, or here and now with ``wait``."""
        path = self.model_combo.value
        if self._loading_model:  # the loaded model follows the list when the load ends
            return
        if not wait and self.session.needs_loading(path):  # torch takes 50-150 ms: in a worker, the window paints
            self._loading_model = True
            self.model_label.value = ui.status_html(f"Loading {Path(path).name}…")
            worker = ui.background(self.session.preload)(path)
            worker.finished.connect(self._on_model_loaded)
            self._update_buttons()
            return worker.start()
        line = self.session.select_model(path, bool(self.model_combo.choices))
        if line is None:  # already the current model
            return
        if self.loaded_model is not None:
            self.set_postprocessing_controls(self.loaded_model.inference_defaults)
            if self.current_patient() is not None:
                self.session.queue_spare_layer()
        self.model_label.value = ui.status_html(*line)
        self.model_label.tooltip = self.loaded_model.path if self.loaded_model is not None else ""
        self._update_buttons()

    def _on_model_loaded(self) -> None:
        self._loading_model = False
        try:
            self._on_model_changed()
        except RuntimeError:  # the dock was closed meanwhile
            pass

    loaded_model = ui.delegate("loaded")  # the selected, loaded model (``LoadedModel``) or None

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
        if self._setting_controls:
            return False
        layer = self.current_prediction_layer()
        prob_layer, declined = self.session.recompute_source(layer)
        if declined:
            self.set_postprocessing_controls(layer.metadata.get("lgg_postprocessing") or {})
            self._say("Kept your corrections; post-processing unchanged.")
        if prob_layer is None:
            return False
        settings = self.settings()
        worker = _postprocess_job(np.asarray(prob_layer.data, dtype=np.float32), settings)
        worker.returned.connect(lambda mask: self.session.set_mask(layer, prob_layer, settings, self.settings(), mask)
                                and self._on_labels_edited())
        worker.errored.connect(lambda err: self._say(f"Post-processing failed: {err}", error=True))
        worker.finished.connect(self.session.track_job(worker, layer))
        worker.start()
        return True

    postprocessing = ui.delegate("postprocessing")  # True while a re-threshold of the current result runs

    # ----------------------------------------------------------------------------- segmenting

    @property
    def running(self) -> bool:
        """True while a segmentation runs, its result is being added to the viewer, or a model loads."""
        return self._worker is not None or self.session.adding_result or self._loading_model

    _adding_result = ui.delegate("adding_result", writable=True)  # a result is being added (test_workflow sets it)

    def _say(self, text: str, error: bool = False) -> None:
        self._status = None if error else text  # an error is never a hint
        self.status_label.value = ui.status_html(text, error)

    def _update_buttons(self) -> None:
        running, patient = self.running, self.current_patient()
        self.segment_button.enabled = not running and self.loaded_model is not None and patient is not None
        self.stop_button.enabled = running and self._worker is not None
        for control in (self.browse_button, self.model_combo, self.device_combo, self.image_combo):
            control.enabled = not running
        hint = None if running else self.session.hint(self._status, bool(self.model_combo.choices), patient)
        if hint is not None:  # a status line that only hints is kept up to date
            self._say(hint)

    def segment(self, patient_id: str | None = None):
        """Segment the chosen patient (or ``patient_id``) in a worker thread; returns the worker, or None with the
        reason in the status line."""
        if self.running:
            return None
        if patient_id is not None:
            self.select_patient(patient_id)
        try:
            started = self.session.new_run(patient_id, self.current_patient(), self.model_combo.current_choice,
                                           self.settings(), bool(self.model_combo.choices))
        except core.RunFailed as failed:
            return self._say(*failed.args)
        if started is None:
            return None
        run, images = started
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
        run = self.session.run
        if not self.session.adding_result and not run.reported:  # stopped after the last batch: no `aborted`
            self._finish(run.patient_id, None, STOPPED_TEXT)
        self._update_buttons()

    def _finish(self, pid: str, layer, message: str, error: bool = False) -> None:
        """The end of a run: the status line, and ``segmentation_done`` for the workflow."""
        if self.session.run is not None:
            self.session.run.reported = True
        self._say(message, error)
        if error:
            ui.notify(message, "error")
        self.segmentation_done.emit(pid, layer, message)

    def _on_result(self, result) -> None:
        run = self.session.run
        if run is None:
            return
        try:
            probs, mask = run.check(self.viewer, result)
        except core.RunFailed as failed:
            return self._finish(run.patient_id, None, *failed.args)
        self.last_timing = dict(run.timing)
        if self.settings() == run.settings:
            return self._add_result(run, probs, mask, run.settings)
        self.session.adding_result, settings = True, self.settings()  # the controls changed meanwhile: redo the mask
        worker = _postprocess_job(probs, settings)
        worker.returned.connect(lambda new_mask: self._add_result(run, probs, new_mask, settings))
        worker.errored.connect(lambda err: (self._end_adding(), self._finish(
            run.patient_id, None, f"Post-processing of {run.patient_id} failed: {err}", error=True)))
        worker.start()

    def _add_result(self, run: core.SegmentRun, probs: np.ndarray, mask: np.ndarray, settings) -> None:
        """Put the result in the viewer in steps one event-loop turn apart (``segmentation.ResultPlacement``)."""
        def ready_for_the_brush(labels) -> None:
            self.update_readout()
            self._finish(run.patient_id, labels, core.done_text(run.patient_id, run.model_label))
            if not mask.any():
                ui.notify(f"{run.patient_id}: the model found no tumour at threshold {settings.threshold:.2f}")

        steps = self.session.placement_steps(run, probs, mask, settings, self._watch_labels, ready_for_the_brush)
        self.session.run_steps(run.patient, steps, self._end_adding)  # one event-loop turn apart

    def _end_adding(self, patient_id: str = "", discarded: str | None = None) -> None:
        """The end of adding a result (``discarded``: why the patient's result was not added)."""
        if discarded is not None:
            self._finish(patient_id, None, discarded)
        self.session.adding_result, self.session.run = False, None
        self._update_buttons()

    # -------------------------------------------------------------------------- edits, readout

    def _watch_labels(self, layer) -> None:
        for emitter in (layer.events.paint, layer.events.data):
            emitter.disconnect(self._on_labels_edited)
            emitter.connect(self._on_labels_edited)
            self._connections.append((emitter, self._on_labels_edited))

    def _on_labels_edited(self, event=None) -> None:
        self.session.compare_text = ""
        if getattr(event, "type", "") == "paint":  # napari emits it before writing an edit made in code
            ui.later(0, self.update_readout)
        else:
            self.update_readout()

    def update_readout(self) -> None:
        """Show tumour voxels, slices and volume of the current result (and the last comparison)."""
        layer = self.current_prediction_layer()
        self.readout_label.value = text = core.readout_text(layer, self.session.compare_text)
        self.readout_label.visible = bool(text)
        self.compare_button.enabled = layer is not None and layers.ai_mask_of(layer) is not None

    def compare_with_ai(self) -> dict | None:
        """Dice between the AI output and the current labels, and voxels changed; shown in the readout."""
        layer = self.current_prediction_layer()
        result = layers.compare_with_ai(layer) if layer is not None else None
        self.session.compare_text = core.compare_text(result)
        self.update_readout()
        return result

    # ------------------------------------------------------------------------------- recovery

    def autosave_now(self) -> list[Path]:
        """Save edited, unexported tumour layers that changed since their last autosave; returns the files."""
        saved, errors = core.autosave(self.viewer, self.session.last_autosave)
        for error in errors:
            self._say(error, error=True)
        return saved

    check_recovery = ui.delegate("check_recovery")  # offer a patient's autosaved corrections; returns the layer

    def restore_recovery(self, patient: PatientLayers, rec):
        """Add a ``recovery.Recovery`` as '<PATIENT> tumour (recovered)', ready for the brush; returns the layer."""
        try:
            layer = core.restore_autosave(self.viewer, patient, rec, self.session.last_autosave)
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
