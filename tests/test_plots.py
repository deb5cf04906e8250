"""Figures of training runs: curve images and PNGs (matplotlib Agg, no viewer)."""

from __future__ import annotations

import numpy as np

from napari_lgg_seg.plots import render_curves, save_curve_pngs, save_prediction_grid

HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_slice_dice": 0.2 * e,
            "val_slice_iou": 0.15 * e, "val_patient_dice_mean": 0.18 * e} for e in (1, 2, 3)]


def test_curve_image_shows_the_history():
    image = render_curves(HISTORY, 400, 200)
    assert image.shape == (200, 400, 4) and image.dtype == np.uint8
    empty = render_curves([], 400, 200)
    assert (image[..., :3] != empty[..., :3]).any()  # the curves are drawn


def test_pngs_are_written_without_leftovers(tmp_path):
    save_curve_pngs(tmp_path, HISTORY)
    grid = tmp_path / "grid.png"
    images = np.zeros((4, 32, 32, 3), np.uint8)
    truth = np.zeros((4, 32, 32), np.uint8)
    truth[1, 8:16, 8:16] = 1
    save_prediction_grid(grid, images, truth, truth.astype(np.float32), rows=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "loss_curves.png", "val_metrics.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in tmp_path.iterdir())
