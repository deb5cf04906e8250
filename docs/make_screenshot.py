"""Regenerate docs/screenshot.png: napari with the synthetic sample patient segmented by the shipped model.

Needs an X server:  xvfb-run -a .venv/bin/python docs/make_screenshot.py [--weights W] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", help="checkpoint (default: the shipped model)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("no display: run under xvfb-run -a", file=sys.stderr)
        return 2
    os.environ.setdefault("LGG_SEG_RECOVERY_DIR", str(Path(args.out).parent / ".recovery-screenshot"))
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-lgg-seg", show=True)
    viewer.window._qt_window.resize(1400, 850)
    viewer.open_sample("napari-lgg-seg", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")
    if args.weights:
        widget.add_checkpoint(args.weights)
    if widget.loaded_model is None:
        print("no model available: pass --weights or install the default model", file=sys.stderr)
        return 2
    widget.segment()
    start = time.monotonic()
    while widget.running and time.monotonic() - start < args.timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    tumour = next(layer for layer in viewer.layers if layer.name.endswith(" tumour"))
    areas = np.asarray(tumour.data).reshape(tumour.data.shape[0], -1).sum(1)
    viewer.dims.set_current_step(0, int(np.argmax(areas)))
    viewer.layers.selection.active = tumour
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
