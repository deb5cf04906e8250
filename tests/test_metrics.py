"""Metrics on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_lgg_seg.metrics import dice, score_patient, slice_dice_iou, summarize


def vol(*slices):
    return np.array(slices, dtype=np.uint8)


def test_dice_edge_cases():
    empty = np.zeros((4, 4), bool)
    one = empty.copy()
    one[1, 1] = True
    assert dice(empty, empty) == 1.0  # both empty, no smoothing: perfect by convention
    assert dice(empty, empty, smooth=1.0) == 1.0
    assert dice(one, empty) == 0.0
    assert dice(one, empty, smooth=1.0) == pytest.approx(1 / 2)
    assert dice(one, one) == 1.0
    two = one.copy()
    two[1, 2] = True
    assert dice(one, two) == pytest.approx(2 * 1 / 3)


def test_slice_dice_iou_smoothing_follows_the_seed_convention():
    truth = vol([[0, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 1], [1, 1]])
    pred = vol([[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]])
    d, iou = slice_dice_iou(pred, truth)
    # empty/empty = 1; 1 of 2 found: (2*1+1)/(1+2+1); nothing found of 4: 1/(4+1)
    np.testing.assert_allclose(d, [1.0, 3 / 4, 1 / 5])
    np.testing.assert_allclose(iou, [1.0, 2 / 3, 1 / 5])
    # false positives on an empty slice: n pixels -> 1 / (n + 1)
    d, iou = slice_dice_iou(vol([[1, 1], [1, 0]]), vol([[0, 0], [0, 0]]))
    assert d[0] == pytest.approx(1 / 4) and iou[0] == pytest.approx(1 / 4)


def test_score_patient_and_summarize_by_hand():
    truth_a = vol([[0, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 1], [1, 1]])
    pred_a = vol([[1, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 1], [0, 0]])
    a = score_patient("A", pred_a, truth_a)
    assert a.truth_voxels == 6 and a.pred_voxels == 5
    assert a.volume_dice == pytest.approx(2 * 4 / 11)
    assert a.tumour_slice_dice == pytest.approx([1.0, 2 * 2 / 6])
    assert (a.empty_slices, a.empty_slices_with_fp) == (1, 1)
    truth_b = vol([[0, 0], [0, 0]], [[0, 0], [0, 0]])
    b = score_patient("B", truth_b, truth_b)  # no tumour, nothing predicted
    assert b.volume_dice == 1.0 and b.empty_slices == 2 and b.empty_slices_with_fp == 0
    s = summarize([a, b])
    assert s["patients"] == 2 and s["slices"] == 5
    # per-patient Dice only over patients whose truth has tumour
    assert s["patient_dice_mean"] == pytest.approx(a.volume_dice)
    assert s["empty_slice_fp_rate"] == pytest.approx(1 / 3)
    assert s["slice_dice"] == pytest.approx(np.mean(a.slice_dice + b.slice_dice))
    assert s["tumour_slice_dice"] == pytest.approx(np.mean([1.0, 2 / 3]))
    assert summarize([]) == {}
    only_empty = summarize([b])
    assert math.isnan(only_empty["patient_dice_mean"]) and math.isnan(only_empty["tumour_slice_dice"])
