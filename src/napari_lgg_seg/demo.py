"""``napari-lgg-seg demo``: the phantom sample segmented in napari, or headless with a PNG overview."""

from __future__ import annotations

import io as _io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEMO_TOOL = "napari-lgg-seg demo"
SEGMENT_WIDGET = "Segment tumour"  # display name in napari.yaml


def display_available() -> bool:
    """True when a GUI can be shown: macOS/Windows, or DISPLAY / WAYLAND_DISPLAY set (and Qt not offscreen)."""
    if os.environ.get("QT_QPA_PLATFORM", "").lower() in ("offscreen", "minimal"):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _overview_slices(truth: np.ndarray | None, pred: np.ndarray | None, n_slices: int, count: int) -> list[int]:
    """Up to ``count`` slice indices spread over the slices with tumour (truth or prediction)."""
    has = np.zeros(n_slices, bool)
    for m in (truth, pred):
        if m is not None:
            has |= m.reshape(n_slices, -1).any(axis=1)
    candidates = np.flatnonzero(has)
    if candidates.size == 0:
        candidates = np.arange(n_slices)
    if candidates.size <= count:
        return [int(i) for i in candidates]
    picks = np.linspace(0, candidates.size - 1, count).round().astype(int)
    return [int(i) for i in candidates[np.unique(picks)]]


def save_overview(path: str | os.PathLike, images: np.ndarray, truth: np.ndarray | None = None,
                  pred: np.ndarray | None = None, *, title: str = "", count: int = 12, columns: int = 4) -> Path:
    """PNG grid of FLAIR slices with the ground-truth (green) and predicted (red) contours.

    Uses matplotlib's Agg canvas directly (no pyplot), so it is safe inside a running napari.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .io import FLAIR_CHANNEL, atomic_write_bytes

    images = np.asarray(images)
    z = images.shape[0]
    chosen = _overview_slices(truth, pred, z, count)
    columns = max(1, min(columns, len(chosen)))
    rows = -(-len(chosen) // columns)
    fig = Figure(figsize=(2.6 * columns, 2.8 * rows + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, i in zip(axes.ravel(), chosen):
        ax.imshow(images[i, :, :, FLAIR_CHANNEL], cmap="gray", vmin=0, vmax=255)
        for mask, colour, style in ((truth, "lime", "solid"), (pred, "red", "dashed")):
            if mask is not None and mask[i].any():
                ax.contour(mask[i].astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0,
                           linestyles=style)
        ax.set_title(f"slice {i + 1}", fontsize=8)
    handles = [Line2D([], [], color="lime", label="ground truth")]
    if pred is not None:
        handles.append(Line2D([], [], color="red", linestyle="dashed", label="prediction"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _is_demo_output(folder: Path) -> bool:
    try:
        return json.loads((folder / "lgg_seg_export.json").read_text()).get("tool") == DEMO_TOOL
    except (OSError, ValueError, AttributeError):
        return False


def _check_demo_out(out: Path, patient_id: str, overwrite: bool, masks: bool) -> None:
    """Refuse to replace what ``out`` holds: the overview (and the masks folder, when masks will be written)."""
    target = out / patient_id
    if masks and (target.exists() or target.is_symlink()) and not _is_demo_output(target):
        raise FileExistsError(f"{target} exists and is not an earlier demo's output; choose another --out.")
    if overwrite:
        return
    for path in ([out / "overview.png"] + ([target] if masks else [])):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; choose a new --out folder, or pass --overwrite to "
                                  "replace the demo's output there.")


def run_headless(out: str | os.PathLike = "demo_output", device: str = "auto", n_slices: int = 24,
                 overwrite: bool = False) -> dict:
    """Segment the phantom with the default model (if installed); write masks and ``overview.png`` to ``out``.

    Refuses (``FileExistsError``, before any work) when ``out`` already holds ``overview.png`` or the masks,
    unless ``overwrite``; a masks folder that is not an earlier demo's output is never replaced.

    Returns a dict with ``overview``, ``masks`` (folder or None) and ``dice`` (or None).
    """
    from ._sample_data import sample_patient
    from .model import default_model_path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out.")
    patient = sample_patient(n_slices)
    model_path = default_model_path()
    _check_demo_out(out, patient.patient_id, overwrite, masks=model_path is not None)
    result: dict = {"overview": None, "masks": None, "dice": None}
    mask = None
    if model_path is None:
        print("no default model is installed yet; writing an overview of the sample without prediction.")
        title = f"{patient.patient_id} (phantom): ground truth only, no model installed"
    else:
        from .console import inference_settings, load_inference_model
        from .console import progress_line as _progress_line
        from .inference import postprocess, predict_any_size
        from .io import write_patient_folder
        from .metrics import dice

        loaded, dev, path = load_inference_model(str(model_path), device)
        settings, tta = inference_settings(loaded)
        start = time.perf_counter()
        probs = predict_any_size(loaded.model, patient.images, size=loaded.training_size, device=dev, tta=tta,
                                 progress=lambda done, total: _progress_line(f"segmenting: {done}/{total} slices"))
        mask = postprocess(probs, settings)
        seconds = time.perf_counter() - start
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        score = dice(mask, patient.masks)
        sidecar = {"patient_id": patient.patient_id, "model": str(path), "threshold": settings.threshold,
                   "tta": tta, "dice_vs_truth": score, "tool": DEMO_TOOL}
        result["masks"] = write_patient_folder(out, patient.patient_id, mask, slice_numbers=patient.slice_numbers,
                                               masks_only=True, overwrite=True, sidecar=sidecar)
        result["dice"] = score
        print(f"segmented {patient.num_slices} slices on {dev} in {seconds:.1f} s with {path.name}")
        print(f"masks: {result['masks']}")
        print(f"Dice vs the phantom's truth: {score:.3f}")
        title = f"{patient.patient_id} (phantom): Dice {score:.3f}"
    result["overview"] = save_overview(out / "overview.png", patient.images, patient.masks, mask, title=title)
    print(f"overview: {result['overview']}")
    return result


def _press_segment(widget, patient_id: str | None = None) -> bool:
    """Start segmentation in the segment dock as if its Segment button had been pressed."""
    select = getattr(widget, "select_patient", None)
    if patient_id is not None and callable(select):
        select(patient_id)
    segment = getattr(widget, "segment", None)
    if callable(segment):
        segment()
        return True
    button = getattr(widget, "segment_button", None)
    if button is not None and hasattr(button, "click"):
        button.click()
        return True
    return False


def open_demo_viewer():
    """A napari viewer with the phantom open and the segment dock; segmentation started if a default
    model is installed. Returns ``(viewer, segment_widget)``."""
    import napari

    from ._sample_data import SAMPLE_PATIENT_ID
    from .model import default_model_path

    viewer = napari.Viewer(title="napari-lgg-seg demo")
    _use_the_screen(viewer)
    viewer.open_sample("napari-lgg-seg", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgg-seg", SEGMENT_WIDGET)
    _fit_view_once_docked(viewer)
    if default_model_path() is None:
        print("no default model is installed yet: the phantom sample is open; choose weights in the "
              f"'{SEGMENT_WIDGET}' dock to segment it.")
    elif not _press_segment(widget, SAMPLE_PATIENT_ID):
        print(f"press Segment in the '{SEGMENT_WIDGET}' dock to segment the phantom.")
    return viewer, widget


def _use_the_screen(viewer) -> None:
    """Grow napari's default window (about 1090x630 px on a 1400x900 screen) to the screen's free area: with the
    layer list, the canvas and the Segment dock side by side, the smaller window cut the layer names in the middle
    ("PHANTOM_00_200…ur probability") and showed three rows of the layer list. A larger window is left alone."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    if screen is None:
        return
    free = screen.availableGeometry()
    _left, _top, width, height = viewer.window.geometry()
    if width < 0.9 * free.width() or height < 0.9 * free.height():
        viewer.window.set_geometry(free.left(), free.top(), free.width(), free.height())


def _fit_view_once_docked(viewer) -> None:
    """Re-centre the phantom once the window has laid out the new dock (it narrows the canvas: in napari's default
    window the phantom was left cut at the canvas's edge)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.reset_view()


def run_gui() -> int:
    """Open napari with the phantom, dock the segment widget and segment if a default model exists."""
    import napari

    open_demo_viewer()
    napari.run()
    return 0


def run_demo(out: str | os.PathLike = "demo_output", headless: bool = False, device: str = "auto",
             overwrite: bool = False) -> int:
    """The ``demo`` command: napari when a display is available (and not ``headless``), else headless."""
    if not headless and display_available():
        return run_gui()
    if not headless:
        print("no display is available (DISPLAY and WAYLAND_DISPLAY are unset); running the demo headless.")
    run_headless(out, device=device, overwrite=overwrite)
    return 0
