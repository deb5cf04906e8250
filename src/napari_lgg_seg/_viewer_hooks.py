"""Small viewer hooks for the reader's layers (no widget import; Qt only through napari's own viewer API).

- a layer that came from opening a dataset root brings up the patient browser dock (through the manifest, so the
  reader never imports a widget);
- ground-truth Labels are drawn as an outline (``contour`` cannot be given as layer data);
- the channel layers of a patient are shown one at a time: showing one hides its siblings (not in grid mode, where
  each has its own cell);
- folders the user opened with this plugin are remembered in napari's reader preferences for the whole dataset, so
  the next patient folder (or slice) of it opens without the "Choose reader" dialog.
"""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

from .display import CONTOUR_KEY, DATASET_ROOT_KEY

PLUGIN = "napari-lgg-seg"
BROWSER_WIDGET = "Patient browser"

_installed: weakref.WeakSet = weakref.WeakSet()  # viewers watched
_exclusive: weakref.WeakSet = weakref.WeakSet()  # channel layers whose visibility is watched


def gui_viewer():
    """The current napari viewer when a Qt viewer can exist (napari's Qt main window already imported); else None.

    Never imports Qt itself: a script or the CLI reading a folder stays Qt-free.
    """
    if "napari._qt.qt_main_window" not in sys.modules:
        return None
    import napari

    try:
        return napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (closed, headless): nothing to hook
        return None


def install_viewer_hooks(viewer) -> None:
    """Watch ``viewer``'s layers for the plugin's display rules (idempotent)."""
    if viewer is None or viewer in _installed:
        return
    _installed.add(viewer)
    ref = weakref.ref(viewer)

    def on_inserted(event) -> None:
        v = ref()
        if v is not None:
            _style_layer(v, event.value)

    viewer.layers.events.inserted.connect(on_inserted)
    for layer in list(viewer.layers):
        _style_layer(viewer, layer)


def _style_layer(viewer, layer) -> None:
    meta = layer.metadata or {}
    contour = meta.get(CONTOUR_KEY)
    if contour and hasattr(layer, "contour"):
        layer.contour = int(contour)
    if meta.get("lgg_channel") and layer not in _exclusive:  # once per layer, however often it is re-inserted
        _exclusive.add(layer)
        ref = weakref.ref(viewer)
        layer.events.visible.connect(lambda event, layer=layer: _exclusive_channel(ref(), layer))
    root = meta.get(DATASET_ROOT_KEY)
    if root and meta.get("lgg_patient_id"):
        _show_browser(viewer, str(root), str(meta["lgg_patient_id"]))


def _exclusive_channel(viewer, layer) -> None:
    """Showing a channel hides the other channels of its patient (unless the grid shows them side by side)."""
    if viewer is None or not layer.visible:
        return
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9 (viewer.grid before)
    if (canvas.grid if canvas is not None else viewer.grid).enabled:
        return
    pid = (layer.metadata or {}).get("lgg_patient_id")
    for other in list(viewer.layers):
        meta = other.metadata or {}
        if other is not layer and meta.get("lgg_channel") and meta.get("lgg_patient_id") == pid and other.visible:
            other.visible = False


def _show_browser(viewer, root: str, patient_id: str) -> None:
    """Open (or reuse) the patient-browser dock for ``root`` with ``patient_id`` as its open patient."""
    window = getattr(viewer, "window", None)
    if window is None or not hasattr(window, "add_plugin_dock_widget"):
        return
    _, browser = window.add_plugin_dock_widget(PLUGIN, BROWSER_WIDGET)
    same_root = getattr(browser, "root", None) is not None and Path(browser.root) == Path(root)
    if same_root and getattr(browser, "current_patient_id", None) == patient_id:
        return
    adopt = getattr(browser, "adopt_root", None)
    if adopt is not None:
        adopt(root, patient_id)
    else:  # a browser without adopt_root: list the root at least
        browser.set_root(root, load=False)


def remember_reader_for(path: str | os.PathLike, dataset_root: str | os.PathLike | None) -> list[str]:
    """Prefer this plugin in napari's reader preferences for ``path`` and, with a dataset root, for the root, its
    patient folders and their slices; existing preferences are never replaced. Returns the patterns added."""
    from napari.settings import get_settings

    settings = get_settings().plugins
    current = dict(settings.extension2reader)
    base = Path(os.path.realpath(dataset_root if dataset_root is not None else path))
    patterns = [f"{base}{os.sep}"]
    if dataset_root is not None:
        patterns += [f"{base}{os.sep}*{os.sep}", f"{base}{os.sep}*{os.sep}*.tif", f"{base}{os.sep}*{os.sep}*.tiff"]
    added = [p for p in patterns if p not in current]
    if added:
        settings.extension2reader = {**current, **{p: PLUGIN for p in added}}
    return added


def after_read(path: str | os.PathLike, dataset_root: str | os.PathLike | None) -> None:
    """Called by the reader: in a napari window, install the hooks and remember the plugin for this dataset."""
    viewer = gui_viewer()
    if viewer is None:
        return
    install_viewer_hooks(viewer)
    remember_reader_for(path, dataset_root)
