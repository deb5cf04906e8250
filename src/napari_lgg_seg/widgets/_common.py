"""What the docks share: the window's responsiveness (worker priority, short GC
pauses, a layer list wide enough for patient names) and their status lines and questions.

The layers themselves (patients, results, edit tracking) are handled Qt-free in ``napari_lgg_seg.layers``. Nothing
here imports torch.
"""

from __future__ import annotations

import gc
import html
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import SimpleNamespace

from ..layers import unproxied

# ------------------------------------------------------------------------------ responsiveness


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
