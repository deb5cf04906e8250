"""Segmentation metrics on numpy masks (no torch: the widgets use them too).

Slice metrics follow the seed work: Dice and IoU per slice with a smoothing of 1 in numerator and
denominator, so a slice with an empty truth and an empty prediction scores 1, and an empty truth
with ``n`` false-positive pixels scores 1 / (n + 1). They are averaged over all slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMOOTH = 1.0


def dice(pred: np.ndarray, truth: np.ndarray, smooth: float = 0.0) -> float:
    """Dice of two binary arrays; 1.0 when both are empty and ``smooth`` is 0."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = np.count_nonzero(pred & truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    if total == 0 and smooth == 0:
        return 1.0
    return float((2 * inter + smooth) / (total + smooth))


def slice_dice_iou(pred: np.ndarray, truth: np.ndarray, smooth: float = SMOOTH) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Dice and IoU (smoothed, as in the seed work) of (Z, H, W) binary volumes."""
    pred = np.asarray(pred, bool).reshape(pred.shape[0], -1)
    truth = np.asarray(truth, bool).reshape(truth.shape[0], -1)
    inter = np.count_nonzero(pred & truth, axis=1).astype(np.float64)
    p, t = np.count_nonzero(pred, axis=1), np.count_nonzero(truth, axis=1)
    d = (2 * inter + smooth) / (p + t + smooth)
    iou = (inter + smooth) / (p + t - inter + smooth)
    return d, iou


@dataclass
class PatientScores:
    """Per-patient scores, kept so that summaries can be recomputed exactly."""

    patient_id: str
    volume_dice: float
    slice_dice: list[float]
    slice_iou: list[float]
    tumour_slice_dice: list[float]
    empty_slices: int
    empty_slices_with_fp: int
    truth_voxels: int
    pred_voxels: int


def score_patient(patient_id: str, pred: np.ndarray, truth: np.ndarray) -> PatientScores:
    """All metrics of one patient from binary (Z, H, W) prediction and truth."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    sd, si = slice_dice_iou(pred, truth)
    has_tumour = truth.reshape(truth.shape[0], -1).any(axis=1)
    has_pred = pred.reshape(pred.shape[0], -1).any(axis=1)
    tumour_dice = [dice(pred[i], truth[i]) for i in np.flatnonzero(has_tumour)]
    return PatientScores(
        patient_id=patient_id,
        volume_dice=dice(pred, truth),
        slice_dice=sd.tolist(),
        slice_iou=si.tolist(),
        tumour_slice_dice=tumour_dice,
        empty_slices=int((~has_tumour).sum()),
        empty_slices_with_fp=int((~has_tumour & has_pred).sum()),
        truth_voxels=int(truth.sum()),
        pred_voxels=int(pred.sum()),
    )


def summarize(scores: list[PatientScores]) -> dict[str, float]:
    """Summary over patients: slice-averaged Dice/IoU, tumour-slice Dice, per-patient Dice, FP rate.

    Per-patient volumetric Dice is reported over patients whose truth has tumour.
    """
    if not scores:
        return {}
    sd = np.concatenate([s.slice_dice for s in scores])
    si = np.concatenate([s.slice_iou for s in scores])
    td = np.concatenate([s.tumour_slice_dice for s in scores]) if any(s.tumour_slice_dice for s in scores) else np.array([])
    pd = np.array([s.volume_dice for s in scores if s.truth_voxels > 0])
    empty = sum(s.empty_slices for s in scores)
    fp = sum(s.empty_slices_with_fp for s in scores)
    return {
        "slice_dice": float(sd.mean()),
        "slice_iou": float(si.mean()),
        "tumour_slice_dice": float(td.mean()) if td.size else float("nan"),
        "patient_dice_mean": float(pd.mean()) if pd.size else float("nan"),
        "patient_dice_median": float(np.median(pd)) if pd.size else float("nan"),
        "empty_slice_fp_rate": float(fp / empty) if empty else 0.0,
        "patients": len(scores),
        "slices": int(sd.size),
    }
