"""The plugin's layers in a napari viewer: patients, results, edit tracking, and the layer operations that keep the
window responsive (refill instead of add, park instead of remove, remove without napari's crash; workers below the
window's CPU priority; short garbage-collection pauses).

napari's layer model only: no Qt, no torch, no widget. The docks, the workflow and the export call these.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .display import (
    PROBABILITY_LOOK,
    ROLE_GROUND_TRUTH,
    ROLE_PREDICTION,
    TUMOUR_COLOR,
    TUMOUR_OPACITY,
    tumour_look,
)
from .io import CHANNEL_NAMES, FLAIR_CHANNEL, sanitize_name
from .metrics import dice
from .recovery import mask_digest

PATIENT_META_KEYS = ("lgg_patient_id", "lgg_folder", "lgg_slice_numbers", "lgg_image_files", "lgg_mask_files")
ROLE_PROBABILITY = "probability"
ROLE_SPARE = "spare"  # a result layer of a patient that left the screen, hidden and emptied, for the next result
SPARE_NAMES = {"image": "spare result layer (probability)", "labels": "spare result layer (tumour)"}
AI_MASK_KEY = "lgg_ai_mask"  # uint8 (Z, H, W) copy of the network's output, to count the user's edits
EXPORTED_KEY = "lgg_exported_digest"  # mask_digest of the labels when they were last exported
RESULT_KEY = "lgg_result_id"  # links a prediction layer to its probability layer
FLAIR_NAME = CHANNEL_NAMES[FLAIR_CHANNEL]


# --------------------------------------------------------------------------------------- patients


@dataclass
class PatientLayers:
    """The image layers of one patient in a viewer (channel name -> layer)."""

    patient_id: str
    channels: dict = field(default_factory=dict)
    is_lgg: bool = True

    @property
    def reference(self):
        """The FLAIR layer (or the only image layer): geometry and metadata come from it."""
        return self.channels.get(FLAIR_NAME) or next(iter(self.channels.values()))

    @property
    def label(self) -> str:
        return self.patient_id if self.is_lgg else f"{self.reference.name} (single image)"

    def metadata(self) -> dict:
        """The patient's ``Patient.metadata()`` keys, copied from the reference layer."""
        meta = dict(self.reference.metadata or {})
        out = {k: meta[k] for k in PATIENT_META_KEYS if k in meta}
        out.setdefault("lgg_patient_id", self.patient_id)
        return out

    def volume(self) -> np.ndarray:
        """(Z, H, W, 3) uint8 pre/FLAIR/post volume; missing channels are filled with FLAIR."""
        ref = self.reference
        if self.is_lgg or not getattr(ref, "rgb", False):
            stack = []
            for name in CHANNEL_NAMES:
                layer = self.channels.get(name, ref)
                stack.append(_as_zyx(to_uint8(np.asarray(layer.data)), layer.name))
            shapes = {s.shape for s in stack}
            if len(shapes) != 1:
                raise ValueError(f"{self.patient_id}: channel layers have different shapes {sorted(shapes)}")
            return np.stack(stack, axis=-1)
        data = to_uint8(np.asarray(ref.data)[..., :3])
        return data[None] if data.ndim == 3 else data

    def alive(self, viewer) -> bool:
        """True while the reference layer is still in the viewer and still shows this patient (the patient browser
        refills the same layers with the next patient)."""
        ref = self.reference
        if self.is_lgg and patient_of_layer(ref) not in (None, self.patient_id):
            return False
        return any(layer is ref for layer in viewer.layers)


def _as_zyx(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"layer {name!r} has {arr.ndim} dimensions; expected a 2D slice or a 3D (Z, H, W) volume")
    return arr


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 as is; other types rescaled from their min/max to 0-255."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    data = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(data.min(initial=0)), float(data.max(initial=0))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.round((data - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def _is_image(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def find_patients(viewer) -> dict[str, PatientLayers]:
    """Patients in the viewer: reader layers grouped by ``lgg_patient_id``, then other image layers alone."""
    found: dict[str, PatientLayers] = {}
    singles: dict[str, PatientLayers] = {}
    for layer in viewer.layers:
        if not _is_image(layer):
            continue
        meta = layer.metadata or {}
        pid = meta.get("lgg_patient_id")
        role = meta.get("lgg_role")
        if role in (ROLE_PROBABILITY, ROLE_SPARE):
            continue
        if pid and meta.get("lgg_channel"):
            found.setdefault(pid, PatientLayers(pid)).channels[meta["lgg_channel"]] = layer
        elif layer.ndim in (2, 3) and not getattr(layer, "multiscale", False):
            key = sanitize_name(pid or layer.name)
            if key not in found:
                singles[key] = PatientLayers(key, {FLAIR_NAME: layer}, is_lgg=bool(pid))
    for key, value in singles.items():
        found.setdefault(key, value)
    return found


def patient_of_layer(layer) -> str | None:
    """The patient id stored in a layer's metadata."""
    return (layer.metadata or {}).get("lgg_patient_id")


def is_reader_layer(layer) -> bool:
    """A layer the reader made for a patient: an image channel or the ground truth."""
    meta = layer.metadata or {}
    return bool(meta.get("lgg_channel")) or meta.get("lgg_role") == ROLE_GROUND_TRUTH


def reader_key(metadata: dict | None) -> str | None:
    """Which reader layer a layer's metadata describe (a channel, or the ground truth): the layer of the previous
    patient with the same key is refilled with the next patient's."""
    meta = metadata or {}
    if meta.get("lgg_channel"):
        return f"channel:{meta['lgg_channel']}"
    if meta.get("lgg_role") == ROLE_GROUND_TRUTH:
        return "ground_truth"
    return None


# ---------------------------------------------------------------------------------------- results


def prediction_layers(viewer, patient_id: str | None = None) -> list:
    """Labels layers made by the segment widget (optionally of one patient)."""
    from napari.layers import Labels

    return [
        layer for layer in viewer.layers
        if isinstance(layer, Labels) and (layer.metadata or {}).get("lgg_role") == ROLE_PREDICTION
        and (patient_id is None or patient_of_layer(layer) == patient_id)
    ]


def tumour_layer(viewer, patient_id: str | None):
    """The patient's correction layer: the active layer if it is one of its prediction layers, else
    ``"<PATIENT> tumour"``, else its newest prediction (or recovered) layer; never the ground truth."""
    if patient_id is None:
        return None
    layers = prediction_layers(viewer, patient_id)
    active = active_layer(viewer)
    if any(layer is active for layer in layers):
        return active
    named = [layer for layer in layers if layer.name == f"{patient_id} tumour"]
    return (named or layers or [None])[-1]


def probability_layer_for(viewer, labels_layer):
    """The probability image linked to a prediction layer, if still open."""
    rid = (labels_layer.metadata or {}).get(RESULT_KEY)
    if rid is None:
        return None
    for layer in viewer.layers:
        meta = layer.metadata or {}
        if meta.get("lgg_role") == ROLE_PROBABILITY and meta.get(RESULT_KEY) == rid:
            return layer
    return None


def is_result_layer(layer) -> bool:
    """A patient's segmentation result that can be parked: its probability layer, or a tumour layer without
    unexported edits (those are kept for the patient, not reused)."""
    role = (layer.metadata or {}).get("lgg_role")
    return role == ROLE_PROBABILITY or (role == ROLE_PREDICTION and not has_unexported_edits(layer))


def ai_mask_of(layer) -> np.ndarray | None:
    """The network's output kept with a prediction layer, when it has the layer's shape."""
    ai = (layer.metadata or {}).get(AI_MASK_KEY)
    if ai is None:
        return None
    ai = np.asarray(ai)
    return ai if ai.shape == np.shape(layer.data) else None


def voxels_changed(layer) -> int | None:
    """How many voxels differ (tumour vs not) between the labels and the AI output; None if unknown."""
    ai = ai_mask_of(layer)
    if ai is None:
        return None
    return int(np.count_nonzero((np.asarray(layer.data) > 0) != (ai > 0)))


def compare_with_ai(layer) -> dict | None:
    """Dice between the AI output and the layer's labels, and the voxels the user added and removed; None when
    the layer has no AI output."""
    ai = ai_mask_of(layer)
    if ai is None:
        return None
    labels = np.asarray(layer.data) > 0
    added, removed = int(np.count_nonzero(labels & (ai == 0))), int(np.count_nonzero(~labels & (ai > 0)))
    return {"dice": dice(ai, labels), "voxels_changed": added + removed, "voxels_added": added,
            "voxels_removed": removed}


def is_edited(layer) -> bool:
    """True when the labels differ from the AI output (False when no AI output is known)."""
    return bool(voxels_changed(layer))


def mark_exported(layer, data: np.ndarray | None = None) -> None:
    """Remember the exported content (``data``, default the layer's), so later checks know whether edits were
    saved."""
    layer.metadata[EXPORTED_KEY] = mask_digest(np.asarray(layer.data if data is None else data))


def has_unexported_edits(layer) -> bool:
    """Edited (vs the AI output, or a recovered layer) and not exported since the last change."""
    meta = layer.metadata or {}
    edited = is_edited(layer) or (meta.get("lgg_recovered") and ai_mask_of(layer) is None)
    if not edited:
        return False
    return meta.get(EXPORTED_KEY) != mask_digest(np.asarray(layer.data))


def volume_readout(mask: np.ndarray, scale=None) -> str:
    """'N voxels in K slices' plus the volume in mm^3 when the scale is not all 1."""
    mask = np.asarray(mask)  # no `mask > 0` copy: counted in place (a 5-M voxel patient: ms, not tens of ms)
    voxels = int(np.count_nonzero(mask))
    slices = int(np.count_nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))) if mask.ndim == 3 else int(voxels > 0)
    text = f"{voxels:,} voxels in {slices} slice{'s' if slices != 1 else ''}"
    if scale is not None:
        scale = [float(s) for s in scale]
        if any(abs(s - 1.0) > 1e-9 for s in scale):
            text += f" = {voxels * float(np.prod(scale)):,.1f} mm\u00b3"
    return text


# ------------------------------------------------------------------ selection and napari's proxies


def unproxied(viewer):
    """The viewer behind a dock's viewer (napari gives each dock its own public-only proxy of it); also the object
    behind anything that proxy returns."""
    return getattr(viewer, "__wrapped__", viewer)


def active_layer(viewer):
    """The selected layer itself: through a dock's proxy ``selection.active`` is a new wrapper at each access, never
    ``is`` the layer (iterating ``viewer.layers`` gives the layers themselves)."""
    return unproxied(viewer.layers.selection.active)


# ------------------------------------------------- refill, park and remove (napari's slow paths avoided)


def safe_remove_layers(viewer, layers) -> None:
    """Remove layers without napari's crash (issue 13, bug 1): a Labels layer removed while active in paint mode,
    followed by new layers, segfaults in ``glDrawArrays``. Every layer leaves its drawing mode (pan_zoom) and the
    selection moves off the removed layers first.

    All the layers leave in one batch (napari rebuilds its scene graph once), with napari's full garbage collection
    of each removal made cheap (``deferred_full_gc``)."""
    doomed = [layer for layer in layers if layer in viewer.layers]
    if not doomed:
        return
    for layer in doomed:
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom":
            layer.mode = "pan_zoom"
    selection = viewer.layers.selection
    active = active_layer(viewer)
    if any(layer is active for layer in doomed) or any(layer in selection for layer in doomed):
        kept = [layer for layer in viewer.layers if not any(layer is d for d in doomed)]
        selection.active = kept[-1] if kept else None
    batched = getattr(viewer.layers, "batched_update", None) or contextlib.nullcontext
    with deferred_full_gc(), batched():
        for layer in doomed:
            viewer.layers.remove(layer)


@contextlib.contextmanager
def deferred_full_gc():
    """Make ``gc.collect()`` calls inside the block cheap by freezing the objects that exist (``gc.freeze``).

    napari runs a full ``gc.collect()`` for every removed layer (a Windows/NVIDIA OpenGL workaround in
    ``VispyCanvas._clean_and_update_scenegraph``): with torch loaded that walks ~420,000 objects, 110-250 ms of frozen
    window per layer. Inside this block it only walks the objects made since the freeze (none); the removed layers'
    reference cycles are collected by Python's next automatic full collection. Not on Windows, where napari's
    collection guards against a driver crash."""
    if sys.platform == "win32" or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def is_spare_layer(layer) -> bool:
    """A result layer parked for the next result (``park_result_layers``)."""
    return (layer.metadata or {}).get("lgg_role") == ROLE_SPARE


def park_result_layers(viewer, layers) -> list:
    """Keep result layers (probability image, tumour labels) of a patient leaving the screen for the next patient's
    result, instead of removing them: napari needs 0.1-0.25 s of frozen window to remove a layer and as much to add
    one, a few ms to refill one. A parked layer is hidden, emptied (one voxel: it does not stretch the dims slider),
    named ``SPARE_NAMES`` and belongs to no patient. At most one of each type is kept; returns the layers that were
    not parked (the caller removes them)."""
    spare_types = {layer._type_string for layer in viewer.layers if is_spare_layer(layer)}
    rest, parked = [], []
    for layer in layers:
        kind = layer._type_string
        if kind not in SPARE_NAMES or kind in spare_types or layer not in viewer.layers:
            rest.append(layer)
            continue
        spare_types.add(kind)
        if getattr(layer, "mode", "pan_zoom") != "pan_zoom":  # never a painting layer left behind (bug 1)
            layer.mode = "pan_zoom"
        if active_layer(viewer) is layer:
            viewer.layers.selection.active = None
        viewer.layers.selection.discard(layer)
        parked.append(layer)
    with one_dims_update(viewer, parked):
        for layer in parked:
            layer.visible = False
            layer.metadata = {"lgg_role": ROLE_SPARE}
            layer.data = np.zeros((1,) * layer.ndim, np.asarray(layer.data).dtype)
    for layer in parked:
        layer.name = SPARE_NAMES[layer._type_string]
    return rest


def take_spare_layer(viewer, layer_type: str, ndim: int):
    """A parked result layer of ``layer_type`` ("image" / "labels") and ``ndim`` for reuse, or None."""
    return next((layer for layer in viewer.layers
                 if is_spare_layer(layer) and layer._type_string == layer_type and layer.ndim == ndim), None)


def add_spare_layer(viewer, layer_type: str, ndim: int, geometry: dict):
    """Add a parked result layer of ``layer_type`` ("image" / "labels"): hidden, one voxel, the result's look, so that
    the next result only refills it (napari freezes the window 0.12-0.19 s to create a layer). Returns the layer
    itself (not a dock proxy's wrapper)."""
    options = {"name": SPARE_NAMES[layer_type], "visible": False, "metadata": {"lgg_role": ROLE_SPARE},
               "multiscale": False, **geometry}
    if layer_type == "image":
        return unproxied(viewer.add_image(np.zeros((1,) * ndim, np.float32), **PROBABILITY_LOOK, **options))
    return unproxied(viewer.add_labels(np.zeros((1,) * ndim, np.uint8), **tumour_look(), **options))


@contextlib.contextmanager
def one_dims_update(viewer, layers: list):
    """Refill ``layers`` with one update of the viewer's dims at the end instead of one per layer (napari recomputes
    the dims and re-slices every layer for each new ``data``: about a quarter of a patient switch). Uses napari's
    private ``ViewerModel._on_layers_change`` (of the viewer behind a dock's public-only proxy); without it, napari's
    own per-layer updates run."""
    update = getattr(unproxied(viewer), "_on_layers_change", None)
    if update is None or not layers:
        yield
        return
    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(layer.events.data.blocker(update))
        yield
    update()


def move_to_top(viewer, layers: list) -> None:
    """Put ``layers`` on top of the layer list, in this order. Nothing moves when they already are, parked result
    layers aside: hidden and one voxel, those may stay above (the next result refills them and puts them on top),
    which saves napari a reorder (about 10 ms of frozen window) per patient and per result."""
    n = len(viewer.layers)
    shown = [layer for layer in viewer.layers if not is_spare_layer(layer)]
    on_top = shown[len(shown) - len(layers):]
    if len(on_top) == len(layers) and all(a is b for a, b in zip(on_top, layers)):
        return
    indices = [viewer.layers.index(layer) for layer in layers]
    viewer.layers.move_multiple(indices, n)


def reuse_layer(viewer, layer, data: np.ndarray, metadata: dict, name: str, geometry: dict) -> None:
    """Refill a parked result layer with a new result, on top of the list (or under other parked layers only, which
    the next refill takes: nothing moves then)."""
    layer.metadata = metadata
    layer.scale, layer.translate = geometry["scale"], geometry["translate"]
    if tuple(layer.axis_labels) != tuple(geometry["axis_labels"]):
        layer.axis_labels = geometry["axis_labels"]
    layer.data = data
    layer.name = name
    move_to_top(viewer, [layer])


def give_tumour_look(labels) -> None:
    """Give a reused Labels layer the tumour look, setting only what differs (napari rebuilds its colour textures
    and redraws for each set, changed or not)."""
    from napari.utils.colormaps.standardize_color import transform_color

    try:
        background, other = labels.get_color(0), labels.get_color(2)  # None: napari's background, not drawn
        same_colours = (np.allclose(labels.get_color(1), transform_color(TUMOUR_COLOR)[0])
                        and (background is None or background[3] == 0) and (other is None or other[3] == 0))
    except (AttributeError, TypeError, ValueError, IndexError):
        same_colours = False
    if not same_colours:
        labels.colormap = tumour_look()["colormap"]
    if labels.opacity != TUMOUR_OPACITY:
        labels.opacity = TUMOUR_OPACITY
    if labels.contour != 0:
        labels.contour = 0


_REFILLED = ("contrast_limits", "colormap", "blending", "opacity", "visible", "scale", "translate")


def refill_layer(layer, data, kwargs: dict) -> None:
    """Give an existing layer another patient's data and display settings from its layer-data ``kwargs`` (not its
    name), setting only what differs: napari redraws the canvas for every set, changed or not."""
    layer.data = data
    for key in _REFILLED:
        if key not in kwargs:
            continue
        value = kwargs[key]
        if key == "colormap" and (hasattr(layer, "selected_label") or getattr(layer.colormap, "name", None) == value):
            continue  # the same colormap (a Labels colormap is a dict: the reader's is always the same)
        if key in ("scale", "translate"):
            if np.array_equal(np.asarray(getattr(layer, key)), np.broadcast_to(value, np.shape(getattr(layer, key)))):
                continue
        elif key != "colormap" and _same(getattr(layer, key), value):
            continue  # a visibility set alone: 5-10 ms
        setattr(layer, key, value)


def _same(current, value) -> bool:
    try:
        return bool(np.array_equal(np.asarray(current, dtype=float), np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        return str(current) == str(value)


# --------------------------------------------------------------------- one patient on screen at a time


def leave_patient(viewer, patient_id: str, keep_reader_layers: bool = False) -> tuple[tuple | None, list]:
    """Take a patient off screen: its reader layers and results leave the viewer through ``safe_remove_layers``
    (never an active Labels layer in paint mode, bug 1); its results are parked for the next patient's result when
    ``keep_reader_layers`` (the image channels and ground truth then stay, for ``show_patient_layers`` to refill).
    Corrections not yet exported leave the viewer too, hidden, for the caller to keep and bring back with the
    patient (bug 2). Returns the patient's (Z, H, W) (None if unknown) and those kept layers."""
    shape = None
    doomed, kept, results = [], [], []
    for layer in list(viewer.layers):
        if patient_of_layer(layer) != patient_id:
            continue
        meta = layer.metadata or {}
        if meta.get("lgg_channel") and shape is None:
            shape = tuple(layer.data.shape[:3])
        if is_reader_layer(layer):
            if not keep_reader_layers:
                doomed.append(layer)
        elif meta.get("lgg_role") == ROLE_PREDICTION and has_unexported_edits(layer):
            layer.visible = False
            doomed.append(layer)
            kept.append(layer)
        elif is_result_layer(layer):
            results.append(layer)
    # the next patient's result refills them (Segment dock): no layer removed now, none added then
    doomed += park_result_layers(viewer, results) if keep_reader_layers else results
    safe_remove_layers(viewer, doomed)
    return shape, kept


def show_patient_layers(viewer, layer_data: list[tuple], previous: str | None = None, kept: list = ()) -> list:
    """Show a patient's layer-data tuples: the ``previous`` patient's channel and ground-truth layers are refilled in
    place (metadata, data and contrast, then the name: a few ms each, where napari needs 0.1-0.3 s to add or remove a
    layer), an output folder's tumour layer refills a parked one; layers without a counterpart are added, the
    leftovers removed; the patient's layers end on top in the tuples' order, then its ``kept`` corrections, shown
    and selected (bug 2). Returns the layers of the tuples."""
    from napari.layers import Layer

    reusable = {reader_key(la.metadata): la for la in viewer.layers
                if previous is not None and patient_of_layer(la) == previous and is_reader_layer(la)}
    plan = []
    for data, kwargs, layer_type in layer_data:
        key = reader_key(kwargs.get("metadata"))
        old = reusable.pop(key, None) if key is not None else None
        if old is not None and old._type_string != layer_type:
            reusable[key] = old
            old = None
        if old is None and (kwargs.get("metadata") or {}).get("lgg_role") == ROLE_PREDICTION:
            old = take_spare_layer(viewer, layer_type, np.ndim(data))  # an output folder's tumour layer
            if old is not None:
                old.visible = True
        plan.append((old, data, kwargs, layer_type))
    safe_remove_layers(viewer, list(reusable.values()))  # e.g. a ground truth the next patient lacks
    for old, _data, kwargs, _type in plan:  # metadata first: whoever reacts to the new data or name sees it
        if old is not None:
            old.metadata = kwargs.get("metadata") or {}
    with one_dims_update(viewer, [old for old, *_ in plan if old is not None]):
        for old, data, kwargs, _type in plan:
            if old is not None:
                refill_layer(old, data, kwargs)
    for old, _data, kwargs, _type in plan:
        if old is not None:
            old.name = kwargs["name"]
    layers = [old if old is not None else viewer.add_layer(Layer.create(data, kwargs, layer_type))
              for old, data, kwargs, layer_type in plan]
    move_to_top(viewer, layers)
    for layer in kept:
        layer.visible = True
        viewer.layers.append(layer)
    if kept:
        viewer.layers.selection.active = kept[-1]
    return layers


# ------------------------------------------------------------------------ a result, refilled or added


def place_probability_layer(viewer, patient_id: str, probs: np.ndarray, metadata: dict, geometry: dict):
    """Show a new result's probabilities (hidden): in the patient's previous result's probability layer, else in a
    parked one, else a new layer. Returns the patient's ``"<PATIENT> tumour"`` layer whose result it replaces (None
    for a first result), for ``place_tumour_layer``."""
    labels = next((la for la in prediction_layers(viewer, patient_id) if la.name == f"{patient_id} tumour"), None)
    old = probability_layer_for(viewer, labels) if labels is not None else None
    if old is not None and old.ndim == probs.ndim:  # refill: no napari layer start-up, no removal
        old.metadata = metadata
        old.data = probs
        return labels
    if old is not None:
        safe_remove_layers(viewer, [old])
    name = f"{patient_id} tumour probability"
    spare = take_spare_layer(viewer, "image", probs.ndim)  # the previous patient's, parked
    if spare is not None:
        reuse_layer(viewer, spare, probs, metadata, name, geometry)
    else:
        viewer.add_image(probs, name=name, visible=False, metadata=metadata, multiscale=False, **PROBABILITY_LOOK,
                         **geometry)
    return labels


def place_tumour_layer(viewer, labels, mask: np.ndarray, metadata: dict, name: str, geometry: dict):
    """Show a new result's mask: in ``labels`` (the patient's previous result), else in a parked Labels layer, else a
    new layer, with the tumour look. Returns the layer itself."""
    if labels is not None and labels in viewer.layers:
        labels.metadata = metadata
        labels.data = mask
        return labels
    labels = take_spare_layer(viewer, "labels", mask.ndim)
    if labels is not None:
        give_tumour_look(labels)
        reuse_layer(viewer, labels, mask, metadata, name, geometry)
        labels.visible = True
        return labels
    return unproxied(viewer.add_labels(mask, name=name, metadata=metadata, multiscale=False, **tumour_look(),
                                       **geometry))


def add_recovered_layer(viewer, patient: PatientLayers, rec):
    """Add an autosaved correction (``recovery.Recovery``) of the patient as ``"<PATIENT> tumour (recovered)"``;
    ``ValueError`` (the file kept) when it does not fit the open patient."""
    ref = patient.reference
    shape = tuple(np.shape(ref.data))
    if rec.mask.size != int(np.prod(shape)):
        raise ValueError(f"The autosave of {patient.patient_id} has shape {rec.mask.shape}, but the open patient has "
                         f"{shape}; not restored (file kept: {rec.path}).")
    mask = rec.mask.reshape(shape).astype(np.uint8)
    meta = {**patient.metadata(), "lgg_role": ROLE_PREDICTION, "lgg_recovered": True,
            "lgg_model": rec.info.get("lgg_model"), "lgg_model_label": rec.info.get("lgg_model_label")}
    if rec.ai_mask is not None and rec.ai_mask.size == mask.size:
        meta[AI_MASK_KEY] = rec.ai_mask.reshape(shape)
    return unproxied(viewer.add_labels(mask, name=f"{patient.patient_id} tumour (recovered)", metadata=meta,
                                       scale=ref.scale, translate=ref.translate, axis_labels=ref.axis_labels,
                                       **tumour_look()))


# ------------------------------------------------- the window's responsiveness (threads, garbage collection)

WORKER_NICENESS = 10  # a worker thread's CPU priority below the GUI thread's (Linux)


def run_below_the_window() -> None:
    """Lower the calling worker thread's CPU priority (Linux: nice is per thread; the torch threads it starts
    inherit it). On 2 cores the network's threads otherwise take the CPU from the GUI thread, which then needs two
    to three times longer for the same layout and paint work. Once per thread: an unprivileged process cannot raise
    it again, so the pool thread stays below the window, which only ever favours the window."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < WORKER_NICENESS:
            os.setpriority(os.PRIO_PROCESS, tid, WORKER_NICENESS)
    except OSError:
        pass


_FREEZE_AFTER_FULL_GC: dict = {"callback": None, "docks": 0}
_gc_watched: weakref.WeakSet = weakref.WeakSet()  # viewers whose layer removals unfreeze


def keep_gc_pauses_short(viewer, later: Callable[[int, Callable], object]) -> Callable[..., None]:
    """Freeze the survivors of each full garbage collection until the returned function is called (a dock calls it
    when it closes); ``later(ms, callback)`` runs a callback on a later event-loop turn (``QTimer.singleShot``).

    A full collection walks every tracked object: with napari, Qt and torch loaded that is ~400,000 objects, 180-300
    ms of frozen window on a 2-core EPYC, several times a minute while the plugin works (the GC runs in whichever
    thread allocates, and holds the GIL). Moving the survivors of each full collection to the permanent generation
    makes the next one walk only what was made since (20-30 ms). What exists when the first dock opens (napari, Qt,
    torch) is frozen at once, or the first full collection (often during the first result) would walk it all.
    Objects of a removed layer may have been frozen: each removal unfreezes everything on the next event-loop turn
    (after napari's own collection, made cheap), so Python's next full collection frees them, then freezes the rest
    again. Releasing the last dock unfreezes everything and stops. Off with ``LGG_SEG_GC_FREEZE=0``, and on Windows
    (napari's collection at layer removal guards a driver crash there)."""
    if sys.platform == "win32" or os.environ.get("LGG_SEG_GC_FREEZE", "1") == "0":
        return lambda *_args: None
    state = _FREEZE_AFTER_FULL_GC
    if state["callback"] is None:
        def freeze_survivors(phase: str, info: dict) -> None:
            if phase == "stop" and info.get("generation") == 2 and gc.isenabled():
                gc.freeze()

        state["callback"] = freeze_survivors
        gc.callbacks.append(freeze_survivors)
        gc.freeze()  # what exists now (napari, Qt, torch) is long-lived: the next full collection skips it too
    state["docks"] += 1
    viewer = unproxied(viewer)
    if viewer not in _gc_watched:  # once per viewer, not once per dock (an unfreeze with nothing frozen is free)
        _gc_watched.add(viewer)
        viewer.layers.events.removed.connect(lambda _event=None: later(0, gc.unfreeze))

    def on_closed(*_args) -> None:
        state["docks"] -= 1
        if state["docks"] <= 0 and state["callback"] is not None:
            gc.callbacks.remove(state["callback"])
            state["callback"] = None
        gc.unfreeze()

    return on_closed
