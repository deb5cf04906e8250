"""Regenerate docs/screenshot.png: napari correcting a synthetic data set (four phantom patients) in the patient
browser, the first accepted (exported), the second segmented by the shipped model and ready for the brush.

Needs an X server:  xvfb-run -a .venv/bin/python docs/make_screenshot.py [--weights W] [--out PATH]
Everything is written to a temporary folder (the remembered settings too); no patient data is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

WINDOW = (1400, 950)  # fits a 1,000-px-high screen (issue 13, bug 5)


def _wait(condition, timeout: float) -> bool:
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while not condition() and time.monotonic() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(25):  # let the window lay out and paint
        QApplication.processEvents()
        time.sleep(0.02)
    return condition()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", help="checkpoint (default: the shipped model)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("no display: run under xvfb-run -a", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lgg-screenshot-"))
    os.environ["LGG_SEG_CONFIG_DIR"] = str(work / "config")  # never the user's remembered export root
    os.environ["LGG_SEG_RECOVERY_DIR"] = str(work / "recovery")
    import napari
    import numpy as np

    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.widgets.segment import segment_dock

    root = work / "phantoms"
    write_phantom_dataset(root, n_patients=4, n_slices=24)
    viewer = napari.Viewer(title="napari-lgg-seg", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    segment = segment_dock(viewer)
    if args.weights:
        segment.add_checkpoint(args.weights)
    if segment.loaded_model is None:
        print("no model available: pass --weights or install the default model", file=sys.stderr)
        return 2
    viewer.open(str(root), plugin="napari-lgg-seg")  # the first patient and the patient browser
    _, browser = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Patient browser")
    browser.export_root.value = work / "corrected"
    first = browser.current_patient_id
    if not _wait(lambda: f"{first} tumour" in viewer.layers and not segment.running, args.timeout):
        print(f"{first} was not segmented: {segment.status_label.value}", file=sys.stderr)
        return 1
    browser.accept_and_next()  # export, open the next patient, segment it
    second_open = lambda: browser.current_patient_id not in (None, first)  # noqa: E731
    if not _wait(lambda: second_open() and f"{browser.current_patient_id} tumour" in viewer.layers
                 and not segment.running, args.timeout):
        print(f"accept and next did not segment the next patient: {browser.status_label.value}", file=sys.stderr)
        return 1
    tumour = viewer.layers[f"{browser.current_patient_id} tumour"]
    areas = np.asarray(tumour.data).reshape(tumour.data.shape[0], -1).sum(1)
    viewer.dims.set_current_step(0, int(np.argmax(areas)))
    viewer.layers.selection.active = tumour
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for toast in [w for w in QApplication.allWidgets() if isinstance(w, NapariQtNotification)]:
        toast.close()  # the "Accepted ..." notification would cover the canvas
    _wait(lambda: True, 1)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}: {first} exported, {browser.current_patient_id} segmented")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
