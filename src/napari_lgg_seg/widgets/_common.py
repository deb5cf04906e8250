"""Helpers shared by the widgets: patient layers in a viewer, the model registry, edit tracking.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import gc
import html
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from psygnal import Signal

from ..io import CHANNEL_NAMES, FLAIR_CHANNEL, sanitize_name
from ..recovery import mask_digest

PATIENT_META_KEYS = ("lgg_patient_id", "lgg_folder", "lgg_slice_numbers", "lgg_image_files", "lgg_mask_files")
ROLE_PREDICTION = "prediction"
ROLE_PROBABILITY = "probability"
ROLE_GROUND_TRUTH = "ground_truth"
ROLE_SPARE = "spare"  # a result layer of a patient that left the screen, hidden and emptied, for the next result
SPARE_NAMES = {"image": "spare result layer (probability)", "labels": "spare result layer (tumour)"}
AI_MASK_KEY = "lgg_ai_mask"  # uint8 (Z, H, W) copy of the network's output, to count the user's edits
EXPORTED_KEY = "lgg_exported_digest"  # mask_digest of the labels when they were last exported
RESULT_KEY = "lgg_result_id"  # links a prediction layer to its probability layer
FLAIR_NAME = CHANNEL_NAMES[FLAIR_CHANNEL]


# ----------------------------------------------------------------------------------------- models


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


def park_result_layers(viewer, layers) -> list:
    """Keep result layers (probability image, tumour labels) of a patient leaving the screen for the next patient's
    result, instead of removing them: napari needs 0.1-0.25 s of frozen window to remove a layer and as much to add
    one, a few ms to refill one. A parked layer is hidden, emptied (one voxel: it does not stretch the dims slider),
    named ``SPARE_NAMES`` and belongs to no patient. At most one of each type is kept; returns the layers that were
    not parked (the caller removes them)."""
    spare_types = {layer._type_string for layer in viewer.layers if _is_spare(layer)}
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


def unproxied(viewer):
    """The viewer behind a dock's viewer (napari gives each dock its own public-only proxy of it); also the object
    behind anything that proxy returns."""
    return getattr(viewer, "__wrapped__", viewer)


def active_layer(viewer):
    """The selected layer itself: through a dock's proxy ``selection.active`` is a new wrapper at each access, never
    ``is`` the layer (iterating ``viewer.layers`` gives the layers themselves)."""
    return unproxied(viewer.layers.selection.active)


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


def _is_spare(layer) -> bool:
    """A result layer parked for the next result (``park_result_layers``)."""
    return (layer.metadata or {}).get("lgg_role") == ROLE_SPARE


def move_to_top(viewer, layers: list) -> None:
    """Put ``layers`` on top of the layer list, in this order. Nothing moves when they already are, parked result
    layers aside: hidden and one voxel, those may stay above (the next result refills them and puts them on top),
    which saves napari a reorder (about 10 ms of frozen window) per patient and per result."""
    n = len(viewer.layers)
    shown = [layer for layer in viewer.layers if not _is_spare(layer)]
    on_top = shown[len(shown) - len(layers):]
    if len(on_top) == len(layers) and all(a is b for a, b in zip(on_top, layers)):
        return
    indices = [viewer.layers.index(layer) for layer in layers]
    viewer.layers.move_multiple(indices, n)


def take_spare_layer(viewer, layer_type: str, ndim: int):
    """A parked result layer of ``layer_type`` ("image" / "labels") and ``ndim`` for reuse, or None."""
    return next((layer for layer in viewer.layers
                 if _is_spare(layer) and layer._type_string == layer_type and layer.ndim == ndim), None)


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


def keep_gc_pauses_short(viewer, dock) -> None:
    """Freeze the survivors of each full garbage collection while ``dock`` is open (``gc.freeze``).

    A full collection walks every tracked object: with napari, Qt and torch loaded that is ~400,000 objects, 180-300
    ms of frozen window on a 2-core EPYC, several times a minute while the plugin works (the GC runs in whichever
    thread allocates, and holds the GIL). Moving the survivors of each full collection to the permanent generation
    makes the next one walk only what was made since (20-30 ms). What exists when the first dock opens (napari, Qt,
    torch) is frozen at once, or the first full collection (often during the first result) would walk it all.
    Objects of a removed layer may have been frozen: each removal unfreezes everything on the next event-loop turn
    (after napari's own collection, made cheap), so Python's next full collection frees them, then freezes the rest
    again. Closing the last dock unfreezes everything and stops. Off with ``LGG_SEG_GC_FREEZE=0``, and on Windows
    (napari's collection at layer removal guards a driver crash there)."""
    if sys.platform == "win32" or os.environ.get("LGG_SEG_GC_FREEZE", "1") == "0":
        return
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
        viewer.layers.events.removed.connect(_unfreeze_next_turn)

    def on_closed(*_args) -> None:
        state["docks"] -= 1
        if state["docks"] <= 0 and state["callback"] is not None:
            gc.callbacks.remove(state["callback"])
            state["callback"] = None
        gc.unfreeze()

    dock.destroyed.connect(on_closed)


def _unfreeze_next_turn(_event=None) -> None:
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, gc.unfreeze)


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


def disconnector(connections: list):
    """A callback that disconnects ``(emitter, callback)`` pairs (run when the widget is destroyed)."""

    def disconnect(*_args) -> None:
        for emitter, callback in connections:
            try:
                emitter.disconnect(callback)
            except Exception:  # already gone
                pass
        connections.clear()

    return disconnect


# --------------------------------------------------------------------------------------- dialogs

ERROR_COLOUR = "#e05050"


LONGEST_SUFFIX = " tumour probability"  # the longest layer name of a patient is "<PATIENT> tumour probability"
LAYER_ROW_EXTRA_PX = 140  # thumbnail, eye and type icons and margins of a row of napari's layer list
_width_watched: weakref.WeakSet = weakref.WeakSet()


def fit_layer_list_to_patients(viewer) -> None:
    """From now on, widen napari's layer-list dock when a patient opens so that its layer names fit instead of being
    cut in the middle ("TCGA_HT_A61...00127 FLAIR", issue 13 bug 5); never narrows it, at most a third of the
    window. Idempotent; the docks call it (the reader stays Qt-free)."""
    viewer = unproxied(viewer)
    if viewer in _width_watched:
        return
    _width_watched.add(viewer)
    ref = weakref.ref(viewer)

    def on_inserted(event) -> None:
        meta = event.value.metadata or {}
        if meta.get("lgg_channel") and meta.get("lgg_patient_id") and ref() is not None:
            _fit_layer_list_soon(ref(), str(meta["lgg_patient_id"]))

    viewer.layers.events.inserted.connect(on_inserted)
    for layer in list(viewer.layers):
        on_inserted(SimpleNamespace(value=layer))


def _fit_layer_list_soon(viewer, patient_id: str) -> None:
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtGui import QFontMetrics

    window = getattr(viewer, "window", None)
    qt_window, qt_viewer = getattr(window, "_qt_window", None), getattr(window, "_qt_viewer", None)
    dock = getattr(qt_viewer, "dockLayerList", None)
    if qt_window is None or dock is None:  # napari's window layout changed: leave it as it is
        return

    def fit() -> None:  # after the current event, once laid out
        try:
            font = dock.widget().font()
            font.setBold(True)  # napari draws layer names in bold
            wanted = QFontMetrics(font).horizontalAdvance(patient_id + LONGEST_SUFFIX) + LAYER_ROW_EXTRA_PX
            wanted = min(wanted, qt_window.width() // 3)
            if dock.isVisible() and dock.width() < wanted:
                qt_window.resizeDocks([dock], [wanted], Qt.Orientation.Horizontal)
        except RuntimeError:  # the window was closed meanwhile
            pass

    QTimer.singleShot(0, fit)


def wrapped_label(label, rich: bool = False, selectable: bool = False):
    """A magicgui ``Label`` that wraps its text in the dock's width; ``rich`` for ``status_html`` text (escaped, so
    Qt must not guess the format), ``selectable`` to let the user copy it (paths in messages)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    if rich:
        label.native.setTextFormat(Qt.TextFormat.RichText)
    if selectable:
        label.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def status_html(text: str, error: bool = False) -> str:
    """Rich text for a status label: ``text`` escaped (paths may hold ``<``/``&``), in red for an error."""
    text = html.escape(text)
    return f"<span style='color:{ERROR_COLOUR}'>{text}</span>" if error else text



AskFunction = Callable[[str, str], bool]


def qt_ask(parent) -> AskFunction:
    """A yes/no question in a QMessageBox (the default ``ask`` of the widgets)."""

    def ask(title: str, text: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    return ask


def notify(message: str, level: str = "info") -> None:
    """A napari notification (info / warning / error); never raises."""
    try:
        from napari.utils import notifications

        {"info": notifications.show_info, "warning": notifications.show_warning,
         "error": notifications.show_error}.get(level, notifications.show_info)(message)
    except Exception:  # pragma: no cover - notification machinery missing
        pass
