"""Matplotlib figures of training runs (curves, prediction grids); object API only, no pyplot, no torch.

Safe in a running napari and off the GUI thread: nothing here touches matplotlib's global backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

CURVES = (("train_loss", "train loss", 0), ("val_loss", "val loss", 0), ("val_slice_dice", "val Dice (slices)", 1),
          ("val_slice_iou", "val IoU (slices)", 1), ("val_patient_dice_mean", "val Dice (per patient)", 1))


def draw_curves(history: list[dict], loss_ax=None, metric_ax=None, fontsize: float | None = None) -> None:
    """Plot the loss curves on ``loss_ax`` and the validation Dice / IoU curves on ``metric_ax`` (either may be
    None)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [h.get("epoch") for h in history]
    axes = (loss_ax, metric_ax)
    for key, label, which in CURVES:
        values = [h.get(key) for h in history]
        if axes[which] is not None and any(isinstance(v, float) and not math.isnan(v) for v in values):
            axes[which].plot(epochs, [v if isinstance(v, float) else float("nan") for v in values],
                             marker="o", markersize=3, label=label)
    for ax, ylabel in zip(axes, ("loss", "validation")):
        if ax is None:
            continue
        ax.set_ylabel(ylabel, fontsize=fontsize)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        known = [e for e in epochs if isinstance(e, (int, float))]
        if known and max(known) - min(known) < 2:  # one or two epochs: whole-epoch ticks, not 0.96 0.98 1.00 ...
            ax.set_xlim(min(known) - 1, max(known) + 1)
        ax.set_xlabel("epoch", fontsize=fontsize)
        if fontsize:
            ax.tick_params(labelsize=fontsize)
        if ax.get_legend_handles_labels()[0]:
            small = fontsize - 1 if fontsize else None  # the dock's narrow panels: a legend that leaves room
            ax.legend(fontsize=small, handlelength=1.0, borderpad=0.2, labelspacing=0.2, framealpha=0.6)
    if metric_ax is not None:
        metric_ax.set_ylim(0, 1)


def save_figure(fig, path: str | os.PathLike, dpi: float) -> None:
    """Save a matplotlib figure as PNG atomically (``io.atomic_write``)."""
    from .io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def render_curves(history: list[dict], width_px: int, height_px: int, dpi: float = 100.0) -> np.ndarray:
    """The two curve panels as an (H, W, 4) uint8 RGBA image (matplotlib Agg; safe off the GUI thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="tight")
    canvas = FigureCanvasAgg(fig)
    draw_curves(history, fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2), fontsize=7)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_curve_pngs(out: Path, history: list[dict]) -> None:
    """``loss_curves.png`` and ``val_metrics.png`` (matplotlib's object API: no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for name, which in (("loss_curves.png", 0), ("val_metrics.png", 1)):
        fig = Figure(figsize=(6, 4), layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_curves(history, *((ax, None) if which == 0 else (None, ax)))
        save_figure(fig, out / name, dpi=100)


def save_prediction_grid(path: Path, images: np.ndarray, truth: np.ndarray, probs: np.ndarray,
                         threshold: float = 0.5, rows: int = 6, title: str = "") -> None:
    """PNG of (FLAIR, truth, prediction) rows for the slices with the most tumour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    area = truth.reshape(len(truth), -1).sum(1) + (probs >= threshold).reshape(len(probs), -1).sum(1)
    chosen = np.argsort(-area)[:rows]
    chosen = chosen[np.argsort(chosen)]
    fig = Figure(figsize=(6, 2 * len(chosen)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), 3, squeeze=False)
    for r, i in enumerate(chosen):
        for c, (img, name) in enumerate(((images[i, :, :, 1], "FLAIR"), (truth[i], "truth"),
                                         (probs[i] >= threshold, "prediction"))):
            axes[r, c].imshow(np.asarray(img, np.uint8), cmap="gray", interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
