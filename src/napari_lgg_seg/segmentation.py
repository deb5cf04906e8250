"""The Segment dock's logic without Qt: the models offered to the docks (a run-time registry), model choices and
loading, post-processing settings, placing a result, spare result layers, autosave and recovery, the dock's
messages, and its state and decisions (``SegmentSession``); napari's layer model only, torch lazily."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from psygnal import Signal

from . import recovery
from .layers import (
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
from .recovery import mask_digest

# -------------------------------------------------- models offered to the docks (process-wide, run time)


class _ModelRegistry:
    """Models added at run time (e.g. by the training widget): path -> label, in insertion order."""

    changed = Signal()

    def __init__(self) -> None:
        self.models: dict[str, str] = {}


MODEL_REGISTRY = _ModelRegistry()


def register_model(path: str | os.PathLike, label: str | None = None) -> str:
    """Offer a checkpoint in every segment widget's model list; returns the label used."""
    key = os.fspath(Path(path).expanduser().resolve())
    label = label or Path(key).name
    MODEL_REGISTRY.models[key] = label
    MODEL_REGISTRY.changed.emit()
    return label


def unregister_model(path: str | os.PathLike) -> None:
    """Remove a model added with :func:`register_model` (no error when absent)."""
    key = os.fspath(Path(path).expanduser().resolve())
    if MODEL_REGISTRY.models.pop(key, None) is not None:
        MODEL_REGISTRY.changed.emit()


def registered_models() -> list[tuple[str, str]]:
    """``(label, path)`` of the models registered at run time."""
    return [(label, path) for path, label in MODEL_REGISTRY.models.items()]


_CURRENT_MODEL: dict[str, str | None] = {"path": None}


def set_current_model_path(path: str | os.PathLike | None) -> None:
    """Record the model a Segment dock has just loaded (offered as "Current model" by the Train dock)."""
    _CURRENT_MODEL["path"] = os.fspath(path) if path else None


def current_model_path() -> str | None:
    """The checkpoint the Segment dock loaded last, or None."""
    return _CURRENT_MODEL["path"]


NO_MODEL_TEXT = "No default model is installed; choose a checkpoint file (.pt)"
OPEN_PATIENT_TEXT = ("Open a patient first: File > Open (an LGG patient folder) or "
                     "File > Open Sample > Synthetic LGG phantom patient.")
CHOOSE_MODEL_TEXT = "Choose a model."
STOPPED_TEXT = "Stopped; no layer was added."
DEFAULT_MODEL_LABEL = "Default model"
THRESHOLD_RANGE = (0.05, 0.95)
#: the post-processing / model-card keys the dock has controls for, and their types
CONTROL_TYPES = {"threshold": float, "tta": bool, "keep_largest": bool, "fill_holes": bool, "min_lesion_voxels": int}

Question = tuple[str, str]  # (title, text) of a yes/no question

# -------------------------------------------------------------------------------------- patients


def patient_showing(viewer, layer, by_metadata: bool = True) -> PatientLayers | None:
    """The patient of which ``layer`` is an image channel, else (``by_metadata``) the one its metadata names."""
    patients = find_patients(viewer)
    found = next((p for p in patients.values() if any(member is layer for member in p.channels.values())), None)
    return patients.get((layer.metadata or {}).get("lgg_patient_id")) if found is None and by_metadata else found


# ---------------------------------------------------------------------------------------- models


def model_choices(default: str | os.PathLike | None, registered: list[tuple[str, str]],
                  chosen: dict[str, str]) -> list[tuple[str, str]]:
    """``(label, path)`` of the model list: the installed default, the registered models, then the files chosen
    (path -> label); a path listed twice keeps its first place and label."""
    entries = [(DEFAULT_MODEL_LABEL, os.fspath(default))] if default is not None else []
    unique: dict[str, tuple[str, str]] = {}
    for label, path in entries + registered + [(label, path) for path, label in chosen.items()]:
        unique.setdefault(path, (label, path))
    return list(unique.values())


def load_cached(path: str, cache: dict) -> tuple[object | None, str | None]:
    """``(LoadedModel, None)`` for the checkpoint at ``path`` (loaded once into ``cache``), or ``(None, message)``."""
    from .model import CheckpointError, load_model

    if path not in cache:
        try:
            cache[path] = load_model(path)
        except (CheckpointError, OSError) as err:
            return None, f"Could not load the model: {err}"
    return cache[path], None


def model_text(loaded, error: str | None, has_choices: bool) -> str:
    """The line under the model list: what was loaded, why nothing was, or what to do."""
    if loaded is None:
        return error or (CHOOSE_MODEL_TEXT if has_choices else NO_MODEL_TEXT)
    note = "defaults from its model card" if loaded.inference_defaults else ("no model card defaults; using the "
                                                                             "settings below")
    return f"Loaded {Path(loaded.path).name} ({note})"


# ------------------------------------------------------------------------------- post-processing


def control_values(values: dict) -> dict:
    """The controls' values for the ``CONTROL_TYPES`` keys of ``values`` (a model card's inference defaults, or a
    layer's ``asdict(PostProcessing)``), the threshold clipped to the slider's range."""
    out = {key: kind(values[key]) for key, kind in CONTROL_TYPES.items() if key in values}
    if "threshold" in out:
        out["threshold"] = float(np.clip(out["threshold"], *THRESHOLD_RANGE))
    return out


def settings_from_controls(values: dict):
    """``inference.PostProcessing`` from the controls' values (threshold rounded as the slider's steps)."""
    from .inference import PostProcessing

    return PostProcessing.from_dict({**values, "threshold": round(float(values["threshold"]), 4)})


def discard_question(layer) -> Question | None:
    """The question to ask before a re-threshold replaces ``layer``'s corrections (None: nothing corrected)."""
    changed = voxels_changed(layer)
    if not changed:
        return None
    return ("Discard your corrections?", f"'{layer.name}' has {changed:,} voxels you corrected. Changing the threshold "
            "or post-processing recomputes the mask from the AI probabilities and discards those corrections.\n\n"
            "Recompute anyway?")


def set_result_mask(layer, mask: np.ndarray, settings) -> None:
    """Put a re-thresholded ``mask`` in ``layer`` as its new AI output, with the settings that made it."""
    layer.metadata[AI_MASK_KEY] = mask.copy()
    layer.metadata["lgg_postprocessing"] = asdict(settings)
    layer.data = mask


# ------------------------------------------------------------------------------------ segmenting


def segment_volume(model, images: np.ndarray, device: str, tta: bool, batch_size: int, settings, size: int,
                   timing: dict):
    """Generator: yields ``(done, total)`` slices between batches and returns ``(probabilities, mask)`` (Z, H, W),
    float32 and uint8, the mask post-processed with ``settings``; slices far from ``size`` are resized.
    ``timing`` receives the seconds of the network and of the post-processing."""
    import time

    from .inference import iter_predict_any_size, postprocess

    probs, start = None, time.perf_counter()
    for done, total, p in iter_predict_any_size(model, images, size=size, device=device, batch_size=batch_size,
                                                tta=tta):
        probs = p if p is not None else probs
        yield done, total
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    network = time.perf_counter() - start
    mask = postprocess(probs, settings)
    timing.update(network_s=network, postprocess_s=time.perf_counter() - start - network)
    return probs, mask


def refusal(requested: str | None, patient: PatientLayers | None, loaded,
            has_choices: bool) -> tuple[str, bool] | None:
    """``(message, is_error)`` when a segmentation of ``patient`` (the dock's, or the one ``requested``) cannot
    start, else None."""
    if requested is not None and (patient is None or patient.patient_id != requested):
        return f"{requested} is not open; nothing was segmented.", True
    if not has_choices:
        return NO_MODEL_TEXT, False
    if loaded is None:
        return "Choose a model first.", False
    return (OPEN_PATIENT_TEXT, False) if patient is None else None


def replace_question(viewer, patient_id: str) -> Question | None:
    """The question to ask before a new result replaces corrections that were not exported (None: none)."""
    name = f"{patient_id} tumour"
    if name not in viewer.layers or not has_unexported_edits(viewer.layers[name]):
        return None
    return ("Replace your corrections?", f"'{name}' has corrections that were not exported. Segmenting again "
            "replaces them.\n\nSegment anyway?")


class RunFailed(Exception):
    """A run that ends without a result: ``args`` are the message and whether it is an error."""


@dataclass
class SegmentRun:
    """One segmentation: the patient, the model, the post-processing settings at the click, and the worker's
    ``timing`` (seconds of the network and the post-processing)."""

    patient: PatientLayers
    model: object  # model.LoadedModel
    model_label: str
    settings: object  # inference.PostProcessing
    timing: dict = field(default_factory=dict)
    reported: bool = False  # the run's end was reported (status line and segmentation_done)

    def __post_init__(self) -> None:
        self.shape = tuple(np.shape(self.patient.reference.data))  # the image's at the click

    @property
    def patient_id(self) -> str:
        return self.patient.patient_id

    def check(self, viewer, result) -> tuple[np.ndarray, np.ndarray]:
        """The worker's result (``(probabilities, mask)`` (Z, H, W), or an error message) in the image's shape
        ((H, W) for one slice); ``RunFailed`` when it is an error, the patient was closed, or it does not fit."""
        pid, shape = self.patient_id, self.shape
        if isinstance(result, str):
            raise RunFailed(f"Segmentation of {pid} failed: {result}", True)
        if not self.patient.alive(viewer):
            raise RunFailed(f"The layers of {pid} were closed while segmenting; the result was discarded.", False)
        probs, mask = np.asarray(result[0], np.float32), result[1]
        if len(shape) == 2:
            probs, mask = probs[0], mask[0]
        if probs.shape != shape:
            raise RunFailed(f"The result {probs.shape} does not fit the image {shape}; discarded.", True)
        return probs, mask


def geometry_of(layer) -> dict:
    """The world geometry a result layer copies from the patient's reference layer."""
    return {"scale": layer.scale, "translate": layer.translate, "axis_labels": layer.axis_labels}


def select_for_the_brush(viewer, labels, paint: bool = False) -> None:
    """Select ``labels`` with the tumour label and a 10-px brush (in paint mode if ``paint``)."""
    labels.selected_label, labels.brush_size = 1, 10
    viewer.layers.selection.active = labels
    if paint:
        labels.mode = "paint"


class ResultPlacement:
    """A new result put in the viewer in steps of one napari layer operation each, for the dock to run one
    event-loop turn apart: ``place_probabilities``, ``place_labels``, ``select_labels``. A patient segmented before
    keeps its two layers (refilled, never removed and added again: napari takes 0.1-0.3 s per layer)."""

    def __init__(self, viewer, patient: PatientLayers, probs: np.ndarray, mask: np.ndarray, model_path: str,
                 model_label: str, settings) -> None:
        pid, rid = patient.patient_id, uuid.uuid4().hex
        self.viewer, self.patient_id, self.probs, self.mask = viewer, pid, probs, mask
        self.geometry = geometry_of(patient.reference)
        self.probability_metadata = {**patient.metadata(), "lgg_role": ROLE_PROBABILITY, RESULT_KEY: rid}
        self.labels_metadata = {**patient.metadata(), "lgg_role": ROLE_PREDICTION, RESULT_KEY: rid,
                                "lgg_model": model_path, "lgg_model_label": model_label, AI_MASK_KEY: mask.copy(),
                                "lgg_postprocessing": asdict(settings)}
        self.labels = None  # the previous result's labels after the first step, the result's after the second

    def place_probabilities(self) -> None:
        self.labels = place_probability_layer(self.viewer, self.patient_id, self.probs, self.probability_metadata,
                                              self.geometry)

    def place_labels(self):
        """Show the mask (after ``place_probabilities``); returns its Labels layer."""
        self.labels = place_tumour_layer(self.viewer, self.labels, self.mask, self.labels_metadata,
                                         f"{self.patient_id} tumour", self.geometry)
        return self.labels

    def select_labels(self) -> None:  # napari builds the layer's controls on first selection: a step of its own
        select_for_the_brush(self.viewer, self.labels)


def add_spare_for(viewer, patient: PatientLayers) -> tuple[str, Callable[[], None], bool] | None:
    """Add one parked result layer (hidden, one voxel) that ``patient``'s first result will need, so that it only
    refills layers (napari freezes the window 0.12-0.19 s to create one). Returns ``(kind, give_back, more)``: the
    layer kind ("image" / "labels"), a function that gives the user's selection back (a hidden spare never keeps
    it) and whether another spare is missing; None when there is nothing to add."""
    ref = patient.reference
    ndim = ref.ndim - (1 if getattr(ref, "rgb", False) else 0)
    if tumour_layer(viewer, patient.patient_id) is not None or ndim not in (2, 3):
        return None
    missing = [kind for kind in SPARE_NAMES if take_spare_layer(viewer, kind, ndim) is None]
    if not missing:
        return None
    layers = viewer.layers
    active, selected = layers.selection.active, set(layers.selection)
    spare = add_spare_layer(viewer, missing[0], ndim, geometry_of(ref))

    def give_back() -> None:
        if active_layer(viewer) is spare and (active is None or active in layers):
            layers.selection.active = active
            layers.selection.update(la for la in selected if la in layers)

    return missing[0], give_back, len(missing) > 1


# ---------------------------------------------------------------------------------- the readout


def compare_text(result: dict | None) -> str:
    """The readout's line for a ``layers.compare_with_ai`` result."""
    if result is None:
        return "No AI output to compare with."
    added, removed = result["voxels_added"], result["voxels_removed"]
    return f"Dice vs AI: {result['dice']:.4f}; you changed {added + removed:,} voxels (+{added:,} / -{removed:,})"


def readout_text(layer, comparison: str = "") -> str:
    """Tumour voxels, slices and volume of ``layer`` (empty without one), and the last comparison's line."""
    if layer is None:
        return ""
    return f"Tumour in '{layer.name}': " + volume_readout(layer.data, layer.scale) + (
        f"\n{comparison}" if comparison else "")


def patient_status(patient: PatientLayers | None, loaded, viewer) -> str:
    """The status line naming the patient on screen (issue 13, bug 2); empty without a patient or a model."""
    if patient is None or loaded is None:
        return ""
    layer = tumour_layer(viewer, patient.patient_id)
    return f"{patient.label}: " + (f"'{layer.name}' is ready for the brush." if layer is not None else "press Segment.")


def done_text(patient_id: str, model_label: str) -> str:
    return (f"Done: {patient_id} segmented with {model_label}. Correct it with the brush (label 1 = tumour, "
            "0 = erase).")


# ------------------------------------------------------------------------------ autosave, recovery


def autosave(viewer, last_saved: dict[int, str]) -> tuple[list[Path], list[str]]:
    """Save edited, unexported tumour layers that changed since their last autosave (``last_saved``: id(layer) ->
    mask digest, updated); returns the files written and the errors."""
    saved, errors = [], []
    for layer in prediction_layers(viewer):
        pid = (layer.metadata or {}).get("lgg_patient_id")
        data = np.asarray(layer.data)
        digest = mask_digest(data)
        if not pid or not has_unexported_edits(layer) or last_saved.get(id(layer)) == digest:
            continue
        info = {"layer": layer.name, **{k: layer.metadata.get(k) for k in ("lgg_model", "lgg_model_label")}}
        try:
            saved.append(recovery.save_recovery(pid, data, ai_mask=ai_mask_of(layer), info=info))
        except OSError as err:
            errors.append(f"Autosave failed: {err}")
            continue
        last_saved[id(layer)] = digest
    return saved, errors


def pending_recovery(viewer, patient_id: str, offered: set[str]) -> recovery.Recovery | None:
    """The patient's autosaved correction to offer, once per session (``offered``: the patients asked about, updated);
    None when none is stored or a prediction layer already holds it."""
    if patient_id in offered or not recovery.has_recovery(patient_id):
        return None
    offered.add(patient_id)
    rec = recovery.load_recovery(patient_id)
    if rec is None or any(mask_digest(np.asarray(la.data)) == mask_digest(rec.mask)
                          for la in prediction_layers(viewer, patient_id)):
        return None
    return rec


def recovery_question(patient_id: str, rec: recovery.Recovery) -> Question:
    return ("Restore autosaved corrections?",
            f"Corrections of {patient_id} autosaved at {rec.saved} ({int(np.count_nonzero(rec.mask)):,} tumour "
            f"voxels) were found in {rec.path}.\n\nRestore them as a layer '{patient_id} tumour (recovered)'?")


def restore_autosave(viewer, patient: PatientLayers, rec: recovery.Recovery, last_saved: dict[int, str]):
    """Add ``rec`` as '<PATIENT> tumour (recovered)', selected in paint mode and counted as autosaved; returns the
    layer (``ValueError`` when it does not fit the patient)."""
    layer = add_recovered_layer(viewer, patient, rec)
    last_saved[id(layer)] = mask_digest(np.asarray(layer.data))
    select_for_the_brush(viewer, layer, paint=True)
    return layer


# ------------------------------------------------------------------------------- the dock's state


class SegmentSession:
    """The Segment dock's state and decisions without Qt: the model chosen and loaded, the run and re-thresholds in
    flight, spare layers and recovery checks to queue, what layer events mean, and the status hints. The dock keeps
    the widgets, workers and timers; ``ask(title, text) -> bool`` asks a yes/no question and
    ``later(delay_ms, callback)`` runs a callback on a later event-loop turn; ``restore(patient, recovery)`` adds
    autosaved corrections the user wants back."""

    def __init__(self, viewer, ask: Callable[[str, str], bool], later: Callable[[int, Callable[[], None]], object],
                 restore: Callable[[PatientLayers, recovery.Recovery], object], step_delay_ms: int = 1) -> None:
        self.viewer, self.ask, self.later, self.restore, self.step_delay_ms = viewer, ask, later, restore, step_delay_ms
        self.loaded = None  # model.LoadedModel of the model chosen
        self.models: dict[str, object] = {}  # path -> LoadedModel
        self.load_errors: dict[str, str] = {}  # path -> why it did not load, until the file is chosen again
        self.checkpoint_files: dict[str, str] = {}  # path -> label, chosen with the file picker
        self.patient_id: str | None = None  # the patient the status line names
        self.compare_text = ""
        self.recovery_offered: set[str] = set()
        self.last_autosave: dict[int, str] = {}
        self.run: SegmentRun | None = None
        self.adding_result = self.spares_queued = False
        self.postprocessing_jobs: list[tuple] = []  # (worker, labels layer) of re-thresholds in flight

    def open_results(self) -> list:
        """The result layers open before the dock (to watch for edits); queues the open LGG patients' recovery
        checks."""
        for pid, patient in find_patients(self.viewer).items():
            if patient.is_lgg:
                self.queue_recovery_check(pid)
        return prediction_layers(self.viewer)

    # -- models

    def model_choices(self, default: str | os.PathLike | None = None) -> list[tuple[str, str]]:
        """``(label, path)`` of the model list (``default``: the installed model's path, looked up when None)."""
        if default is None:
            from .model import default_model_path

            default = default_model_path()
        return model_choices(default, registered_models(), self.checkpoint_files)

    def add_checkpoint_file(self, path: str | os.PathLike, label: str | None = None) -> str:
        """Offer a checkpoint file in the model list; returns its key (the resolved path)."""
        key = os.fspath(Path(path).expanduser().resolve())
        self.checkpoint_files[key] = label or Path(key).name
        self.load_errors.pop(key, None)  # tried again (the file may have been fixed)
        return key

    def needs_loading(self, path: str | None) -> bool:
        """True when ``path`` is neither loaded nor tried yet (``preload`` it, e.g. in a worker, before
        ``select_model``)."""
        return path is not None and path not in self.models and path not in self.load_errors

    def preload(self, path: str) -> None:
        """Load the checkpoint at ``path`` into the cache, or note why it failed (for ``select_model``). Safe in a
        worker thread: it only adds one entry to a dict."""
        try:
            error = load_cached(path, self.models)[1]
        except Exception as err:  # noqa: BLE001 - an unreadable file of any kind is reported, never raised
            error = f"Could not load the model: {type(err).__name__}: {err}"
        if error:
            self.load_errors[path] = error

    def select_model(self, path: str | None, has_choices: bool) -> tuple[str, bool] | None:
        """Load the model at ``path`` (cached) as the current one; returns the model line's ``(text, is_error)``,
        None when it already is the current one. A file that fails to load leaves the list."""
        if self.loaded is not None and self.loaded.path == path:
            return None
        if self.needs_loading(path):
            self.preload(path)
        self.loaded, error = self.models.get(path), self.load_errors.get(path)
        if error:
            self.checkpoint_files.pop(path, None)
        if self.loaded is not None:
            set_current_model_path(self.loaded.path)
        return model_text(self.loaded, error, has_choices), bool(error)

    # -- patients, layer events, status

    def patient_changed(self, patient: PatientLayers | None) -> bool:
        """Note the patient on screen (queues its spare layers); True when it is another than before."""
        pid = patient.patient_id if patient is not None else None
        changed, self.patient_id = pid != self.patient_id, pid
        if changed:
            self.compare_text = ""
        if patient is not None:
            self.queue_spare_layer()
        return changed

    def layer_event(self, event) -> tuple[object | None, PatientLayers | None]:
        """What an ``inserted`` / ``renamed`` / ``removed`` event of the layer list means: ``(labels layer to
        watch for edits, newly opened patient to select)``, either None. The patient browser refills the open
        patient's layers with the next patient and renames them last: a renamed layer is a newly opened patient as
        much as an inserted one. An LGG patient's recovery check is queued."""
        if event.type == "removed":
            self.last_autosave.pop(id(event.value), None)
            return None, None
        if event.type == "renamed":
            try:
                layer = self.viewer.layers[event.index]
            except (IndexError, TypeError):
                return None, None
        else:
            layer = event.value
        role = (layer.metadata or {}).get("lgg_role")
        if role == ROLE_PREDICTION and hasattr(layer.events, "paint"):  # also the reader's (a `segment` output)
            return layer, None
        patient = None if role == ROLE_PROBABILITY else patient_showing(self.viewer, layer, by_metadata=False)
        if patient is not None and patient.is_lgg:
            self.queue_recovery_check(patient.patient_id)
        return None, patient

    def hint(self, status: str, has_choices: bool, patient: PatientLayers | None) -> str | None:
        """The hint the status line should show now when it only shows a hint (``status``), else None."""
        if status not in ("", NO_MODEL_TEXT, OPEN_PATIENT_TEXT):
            return None
        return NO_MODEL_TEXT if not has_choices else OPEN_PATIENT_TEXT if patient is None else ""

    # -- spare layers

    def queue_spare_layer(self) -> None:
        """Add the spare layers the patient on screen will need (a model is loaded), one per later turn."""
        if not self.spares_queued:
            self.spares_queued = True
            self.later(self.step_delay_ms, self._add_spare_layer)

    def _add_spare_layer(self) -> None:
        self.spares_queued = False
        patient = find_patients(self.viewer).get(self.patient_id)
        if patient is None or self.adding_result or self.loaded is None:
            return
        added = add_spare_for(self.viewer, patient)
        if added is not None:
            kind, give_back, more = added

            def then() -> None:
                give_back()
                if more:
                    self.queue_spare_layer()

            if kind == "labels":  # napari shows (and styles) the Labels controls once now, not at the first result
                self.later(self.step_delay_ms, then)
            else:
                then()

    # -- post-processing

    @property
    def postprocessing(self) -> bool:
        """True while a re-threshold runs in a worker."""
        return bool(self.postprocessing_jobs)

    def recompute_source(self, layer) -> tuple[object | None, bool]:
        """``(probabilities layer, declined)``: the layer to recompute ``layer``'s mask from (None: nothing to
        recompute), asking first when that discards corrections; ``declined`` when the user kept them."""
        prob_layer = probability_layer_for(self.viewer, layer) if layer is not None else None
        if prob_layer is None:
            return None, False
        question = None if any(job_layer is layer for _, job_layer in self.postprocessing_jobs) else (
            discard_question(layer))
        if question is not None and not self.ask(*question):
            return None, True
        return prob_layer, False

    def track_job(self, worker, layer) -> Callable[[], None]:
        """Count a re-threshold ``worker`` of ``layer`` in flight; returns the function that ends it."""
        job = (worker, layer)
        self.postprocessing_jobs.append(job)
        return lambda: self.postprocessing_jobs.remove(job)

    def set_mask(self, layer, prob_layer, settings, current_settings, mask: np.ndarray) -> bool:
        """Apply a re-thresholded mask unless the controls moved on (a later run applies) or the result changed."""
        if settings != current_settings or probability_layer_for(self.viewer, layer) is not prob_layer:
            return False
        set_result_mask(layer, mask, settings)
        return True

    # -- runs

    def new_run(self, requested: str | None, patient: PatientLayers | None, model_label: str, settings,
                has_choices: bool) -> tuple[SegmentRun, np.ndarray] | None:
        """A run of ``patient`` with the current model and its images; None when the user keeps unexported
        corrections, ``RunFailed`` when it cannot start."""
        reason = refusal(requested, patient, self.loaded, has_choices)
        if reason is not None:
            raise RunFailed(*reason)
        question = replace_question(self.viewer, patient.patient_id)
        if question is not None and not self.ask(*question):
            return None
        try:
            images = patient.volume()
        except ValueError as err:
            raise RunFailed(f"Cannot segment: {err}", True) from None
        self.run = SegmentRun(patient, self.loaded, model_label, settings)
        return self.run, images

    def placement_steps(self, run: SegmentRun, probs: np.ndarray, mask: np.ndarray, settings,
                        watch: Callable[[object], None], done: Callable[[object], None]) -> list[Callable[[], object]]:
        """The steps that put ``run``'s result in the viewer (``ResultPlacement``), for ``run_steps``: ``watch``
        gets the labels layer when it shows the mask, ``done`` when it is in paint mode, ready for the brush."""
        placed = ResultPlacement(self.viewer, run.patient, probs, mask, run.model.path, run.model_label, settings)

        def ready_for_the_brush() -> None:
            placed.labels.mode = "paint"
            self.compare_text = ""
            done(placed.labels)

        self.adding_result = True
        return [placed.place_probabilities, lambda: watch(placed.place_labels()), placed.select_labels,
                ready_for_the_brush]

    def run_steps(self, patient: PatientLayers, steps: list[Callable[[], object]],
                  end: Callable[[str, str | None], None]) -> None:
        """Run GUI-thread steps one later turn apart, so that the window repaints and reacts between them (adding
        each layer costs napari 0.1-0.3 s), then ``end(patient_id, None)``; ``end(patient_id, why)`` without the
        remaining steps if the patient's layers are closed meanwhile."""
        if steps and not patient.alive(self.viewer):
            return end(patient.patient_id, f"The layers of {patient.patient_id} were closed while the result was being added; it was "
                       "discarded.")
        if not steps:
            return end(patient.patient_id, None)
        steps[0]()
        self.later(self.step_delay_ms, lambda: self.run_steps(patient, steps[1:], end))

    # -- recovery

    def queue_recovery_check(self, patient_id: str) -> None:
        """Check for the patient's autosaved corrections on a later turn (once per session)."""
        if patient_id not in self.recovery_offered:
            self.later(0, lambda: self.check_recovery(patient_id))

    def check_recovery(self, patient_id: str):
        """Offer to restore the patient's autosaved corrections (once per session); returns what ``restore``
        returned, or None."""
        patient = find_patients(self.viewer).get(patient_id)
        rec = None if patient is None else pending_recovery(self.viewer, patient_id, self.recovery_offered)
        if rec is None or not self.ask(*recovery_question(patient_id, rec)):
            return None
        return self.restore(patient, rec)
