"""What the docks share in Qt: later turns and low-priority workers, short GC pauses while a dock is open, a layer
list wide enough for patient names, their rows, status lines and questions. The Qt-free side (patients, results,
worker priority, the GC freeze itself) is in ``napari_lgg_seg.layers``. Importing this imports no torch (only
``device_choices``, when a form calls it).
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Callable
from types import SimpleNamespace

from magicgui.widgets import Container

from .. import layers
from ..layers import unproxied

# ------------------------------------------------------------------------------ responsiveness


def later(delay_ms: int, callback: Callable[[], object]) -> None:
    """Run ``callback`` on a later event-loop turn; nothing if its dock was closed meanwhile. The ``later`` the docks
    give their Qt-free sessions."""
    from qtpy.QtCore import QTimer

    def run() -> None:
        try:
            callback()
        except RuntimeError:  # the dock's Qt objects are gone
            pass

    QTimer.singleShot(delay_ms, run)


def background(function: Callable):
    """A ``thread_worker`` (not started) running ``function`` below the window's CPU priority."""
    from napari.qt.threading import thread_worker

    def run(*args):
        layers.run_below_the_window()
        return function(*args)

    return thread_worker(run, start_thread=False)


def device_choices(_widget=None) -> list[str]:
    """The devices of this machine for a device list (imports torch: call it from a form, not at import)."""
    from ..inference import available_devices

    return available_devices()


def keep_gc_pauses_short(viewer, dock) -> None:
    """``layers.keep_gc_pauses_short`` while ``dock`` (a QWidget) is open."""
    dock.destroyed.connect(layers.keep_gc_pauses_short(viewer, later))


def row(*items, label: str = "") -> Container:
    """A horizontal row of widgets without margins (a form row titled ``label``)."""
    widget_row = Container(widgets=items, layout="horizontal", labels=False, label=label)
    widget_row.margins = (0, 0, 0, 0)
    return widget_row


def delegate(name: str, writable: bool = False) -> property:
    """A dock property that is its Qt-free session's ``name`` (the dock's API predates the session)."""
    setter = (lambda self, value: setattr(self.session, name, value)) if writable else None
    return property(lambda self: getattr(self.session, name), setter, doc=f"The session's ``{name}``.")


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
