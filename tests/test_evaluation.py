"""Evaluation on labelled folders, post-processing choice, and the EDA report (phantoms, tiny models)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from conftest import REAL_DATA, make_tiny_checkpoint, requires_real_data
from napari_lgg_seg import evaluation
from napari_lgg_seg.eda import run_eda
from napari_lgg_seg.evaluation import (
    choose_inference_settings,
    choose_postprocessing,
    evaluate_folders,
    load_labelled_patients,
    predict_patients,
)
from napari_lgg_seg.io import LGGFormatError, load_patient
from napari_lgg_seg.model import CheckpointError, load_model


@pytest.fixture
def tiny64(tmp_path):
    return make_tiny_checkpoint(tmp_path / "tiny64.pt")


def test_evaluate_folders_writes_csv_and_json(phantom_root, tiny64, tmp_path):
    out = tmp_path / "eval"
    messages = []
    result = evaluate_folders([str(phantom_root)], str(tiny64), device="cpu", batch_size=4, out=str(out),
                              progress=messages.append)
    assert result["summary"]["patients"] == 3 and result["summary"]["slices"] == 36
    assert len(result["patients"]) == 3 and messages
    rows = list(csv.DictReader(open(out / "per_patient.csv")))
    assert [r["patient_id"] for r in rows] == [r["patient_id"] for r in result["patients"]]
    assert {"volume_dice", "slice_dice", "slice_iou", "tumour_slice_dice", "empty_slices_with_fp"} <= set(rows[0])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["summary"]["slices"] == 36
    assert saved["settings"]["tta"] is False and saved["settings"]["postprocessing"]["threshold"] == 0.5
    assert saved["settings"]["weights"] == str(tiny64) and saved["settings"]["image_size"] == 64


def test_evaluate_reports_missing_sequences_next_to_intact(phantom_root, tiny64, tmp_path):
    """Each patient is also scored with pre/post replaced by FLAIR (and post only), as the dataset stores patients
    lacking them; the per-patient Dice lost is summarised and written to the CSV."""
    out = tmp_path / "eval"
    result = evaluate_folders([str(phantom_root)], str(tiny64), device="cpu", batch_size=4, out=str(out))
    assert set(result["conditions"]) == {"flair_only", "no_post"}
    for name, summary in result["conditions"].items():
        assert summary["patients"] == 3 and math.isfinite(summary["patient_dice_drop_mean"])
        assert all(f"{name}_volume_dice" in row for row in result["patients"])
    rows = list(csv.DictReader(open(out / "per_patient.csv")))
    assert {"flair_only_volume_dice", "no_post_volume_dice"} <= set(rows[0])
    assert set(json.loads((out / "summary.json").read_text())["conditions"]) == {"flair_only", "no_post"}
    only = evaluate_folders([str(phantom_root)], str(tiny64), device="cpu", conditions=("intact",))
    assert only["conditions"] == {} and only["summary"] == result["summary"]


def test_evaluate_uses_card_defaults_unless_overridden(phantom_root, tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "card.pt", meta={"inference": {"threshold": 0.9999999, "tta": True,
                                                                         "min_lesion_voxels": 7}}, image_size=None)
    result = evaluate_folders([phantom_root], ckpt, device="cpu", patients=["PHANTOM_01_20000101"])
    s = result["settings"]
    assert s["tta"] is True and s["postprocessing"]["threshold"] == 0.9999999 and s["postprocessing"]["min_lesion_voxels"] == 7
    assert s["patients"] == ["PHANTOM_01_20000101"]
    assert s["image_size"] == 256  # a card without a training size: the dataset's 256 px (slices are resized)
    row = result["patients"][0]
    assert row["pred_voxels"] == 0 and row["volume_dice"] == 0.0  # threshold next to 1 (a card may not exceed 1): nothing
    assert result["summary"]["empty_slice_fp_rate"] == 0.0
    # overrides win: threshold 0 marks every voxel
    result = evaluate_folders([phantom_root], ckpt, device="cpu", tta=False, postprocessing={"threshold": 0.0,
                              "min_lesion_voxels": 0}, patients=["PHANTOM_01_20000101"])
    assert result["settings"]["tta"] is False
    assert result["patients"][0]["pred_voxels"] == 12 * 64 * 64
    assert result["summary"]["empty_slice_fp_rate"] == 1.0


def test_evaluate_matches_the_inference_pipeline(phantom_root, tmp_path):
    """Scores equal those of predict_volume + postprocess done by hand (model trained at 64 px: no resize)."""
    from napari_lgg_seg.inference import PostProcessing, postprocess, predict_volume
    from napari_lgg_seg.metrics import score_patient

    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", seed=3)
    pid = "PHANTOM_02_20000101"
    result = evaluate_folders([phantom_root], ckpt, device="cpu", patients=[pid], postprocessing={"threshold": 0.45})
    assert result["settings"]["image_size"] == 64
    patient = load_patient(phantom_root / pid)
    probs = predict_volume(load_model(ckpt).model, patient.images, device="cpu")
    expected = score_patient(pid, postprocess(probs, PostProcessing(threshold=0.45)), patient.masks)
    assert result["patients"][0]["volume_dice"] == pytest.approx(expected.volume_dice)
    assert result["patients"][0]["pred_voxels"] == expected.pred_voxels


def test_evaluate_errors_are_clear(phantom_root, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr("napari_lgg_seg.model.default_model_path", lambda: None)
    with pytest.raises(CheckpointError, match="no default model"):
        evaluate_folders([phantom_root], None)
    with pytest.raises(ValueError, match="not found in the data"):
        evaluate_folders([phantom_root], tiny_checkpoint, patients=["NOPE"])


def _blob_case():
    """One tumour patient: a cube at probability 0.6 with a wide 0.4 halo; threshold 0.5 is right."""
    truth = np.zeros((6, 32, 32), np.uint8)
    truth[1:5, 8:20, 8:20] = 1
    probs = np.full(truth.shape, 0.05, np.float32)
    probs[1:5, 4:24, 4:24] = 0.4
    probs[truth > 0] = 0.6
    return probs, truth


def test_choose_postprocessing_picks_the_better_threshold():
    probs, truth = _blob_case()
    best, table = choose_postprocessing({"A": probs}, {"A": truth}, thresholds=(0.3, 0.5, 0.7), min_sizes=(0,),
                                        keep_largest=(False,), fill_holes=(False,))
    assert best == {"threshold": 0.5, "min_lesion_voxels": 0, "keep_largest": False, "fill_holes": False}
    assert len(table) == 3 and table[0]["patient_dice_mean"] == pytest.approx(1.0)
    dices = [r["patient_dice_mean"] for r in table]
    assert dices == sorted(dices, reverse=True)
    by_t = {r["threshold"]: r["patient_dice_mean"] for r in table}
    assert by_t[0.3] < 1.0 and by_t[0.7] == 0.0


def test_choose_postprocessing_removes_small_false_positives():
    probs, truth = _blob_case()
    probs[5, 28:30, 28:30] = 0.9  # a 4-voxel speck on an empty slice
    best, _ = choose_postprocessing({"A": probs}, {"A": truth}, thresholds=(0.5,), min_sizes=(0, 10),
                                    keep_largest=(False,), fill_holes=(False,))
    assert best["min_lesion_voxels"] == 10


def test_tie_on_dice_breaks_on_empty_slice_false_positives():
    probs, truth = _blob_case()
    # a patient without tumour does not enter the per-patient Dice but its false positives count
    empty_truth = np.zeros((3, 32, 32), np.uint8)
    empty_probs = np.zeros((3, 32, 32), np.float32)
    empty_probs[1, 3:5, 3:5] = 0.9
    best, table = choose_postprocessing({"A": probs, "B": empty_probs}, {"A": truth, "B": empty_truth},
                                        thresholds=(0.5,), min_sizes=(0, 10), keep_largest=(False,),
                                        fill_holes=(False,))
    assert table[0]["patient_dice_mean"] == table[1]["patient_dice_mean"]
    assert best["min_lesion_voxels"] == 10 and table[0]["empty_slice_fp_rate"] < table[1]["empty_slice_fp_rate"]
    # without a difference the simpler setting wins
    best, _ = choose_postprocessing({"A": probs}, {"A": truth}, thresholds=(0.5,), min_sizes=(0, 10),
                                    keep_largest=(False, True), fill_holes=(False, True))
    assert best == {"threshold": 0.5, "min_lesion_voxels": 0, "keep_largest": False, "fill_holes": False}


def test_grid_scores_equal_the_inference_postprocessing():
    """Every row of the table scores exactly what inference.postprocess + score_patient give."""
    from scipy import ndimage

    from napari_lgg_seg.inference import PostProcessing, postprocess
    from napari_lgg_seg.metrics import score_patient, summarize

    rng = np.random.default_rng(0)
    probabilities, truths = {}, {}
    for i in range(2):
        noise = ndimage.gaussian_filter(rng.random((6, 40, 40)), (0.5, 1.5, 1.5)).astype(np.float32)
        probs = np.clip((noise - noise.min()) / (noise.max() - noise.min()), 0, 1)
        probs[2:5, 10:22, 10:22] = 0.8
        probs[3, 14:17, 14:17] = 0.2  # a hole
        truth = np.zeros(probs.shape, np.uint8)
        truth[2:5, 9:22, 10:23] = 1
        probabilities[f"P{i}"], truths[f"P{i}"] = probs, truth
    _, table = choose_postprocessing(probabilities, truths, thresholds=(0.5, 0.7), min_sizes=(0, 5, 40),
                                     keep_largest=(False, True), fill_holes=(False, True))
    assert len(table) == 24
    for row in table:
        settings = PostProcessing.from_dict(row)
        summary = summarize([score_patient(p, postprocess(probabilities[p], settings), truths[p]) for p in truths])
        assert row["patient_dice_mean"] == pytest.approx(summary["patient_dice_mean"], abs=1e-12), row
        assert row["empty_slice_fp_rate"] == pytest.approx(summary["empty_slice_fp_rate"], abs=1e-12), row
        assert row["slice_dice"] == pytest.approx(summary["slice_dice"], abs=1e-12), row


def test_choose_postprocessing_checks_shapes():
    probs, truth = _blob_case()
    with pytest.raises(ValueError, match="differ"):
        choose_postprocessing({"A": probs}, {"A": truth[:3]})
    with pytest.raises(ValueError, match="no patient"):
        choose_postprocessing({"A": probs}, {"B": truth})


def test_choose_inference_settings_includes_tta():
    probs, truth = _blob_case()
    worse = probs.copy()
    worse[1:5, 8:20, 8:14] = 0.45  # without TTA half the lesion is under threshold
    best, table = choose_inference_settings({False: {"A": worse}, True: {"A": probs}}, {"A": truth},
                                            thresholds=(0.5,), min_sizes=(0,), keep_largest=(False,),
                                            fill_holes=(False,))
    assert best["tta"] is True and best["threshold"] == 0.5
    assert {r["tta"] for r in table} == {False, True}
    best, _ = choose_inference_settings({False: {"A": probs}, True: {"A": probs}}, {"A": truth},
                                        thresholds=(0.5,), min_sizes=(0,), keep_largest=(False,),
                                        fill_holes=(False,))
    assert best["tta"] is False  # a tie: the cheaper option


def test_predict_patients_with_and_without_tta(phantom_root, tiny64):
    images, truths = load_labelled_patients([phantom_root], ["PHANTOM_00_20000101"])
    assert set(images) == set(truths) == {"PHANTOM_00_20000101"}
    probs = predict_patients(load_model(tiny64), images, device="cpu", batch_size=6)
    assert set(probs) == {False, True}
    plain, flipped = probs[False]["PHANTOM_00_20000101"], probs[True]["PHANTOM_00_20000101"]
    assert plain.shape == truths["PHANTOM_00_20000101"].shape == flipped.shape
    assert plain.dtype == np.float32 and 0 <= plain.min() and plain.max() <= 1
    assert not np.allclose(plain, flipped)  # a random model is not left-right symmetric
    best, table = choose_inference_settings(probs, truths, thresholds=(0.5,), min_sizes=(0,))
    assert set(best) == {"tta", *evaluation.POSTPROCESSING_KEYS} and len(table) == 8


# --- EDA ------------------------------------------------------------------------------------------------------------

def test_run_eda_on_phantoms(phantom_root, tmp_path):
    out = tmp_path / "eda"
    report = run_eda(phantom_root, out)
    assert report["patients"] == 3 and report["pairs"] == 36 and report["image_files"] == 36
    masks = np.concatenate([load_patient(p).masks for p in sorted(phantom_root.iterdir())])
    empty = int((masks.reshape(len(masks), -1).max(axis=1) == 0).sum())
    assert report["empty_masks"] == empty and report["tumour_masks"] == 36 - empty
    assert report["empty_mask_share"] == pytest.approx(empty / 36)
    assert report["slices_per_patient"]["min"] == report["slices_per_patient"]["max"] == 12
    assert report["image_shapes"] == {"64x64x3": 36} and report["image_dtypes"] == {"uint8": 36}
    assert report["masks_binary_0_255"] and report["mask_values"] == [0, 255]
    assert report["aligned"] and report["corrupt_files"]["count"] == 0
    assert (out / "eda_samples.png").stat().st_size > 1000
    assert json.loads((out / "eda.json").read_text())["pairs"] == 36


def test_run_eda_finds_problems(phantom_root, tmp_path):
    import tifffile

    first, second, _ = sorted(p for p in phantom_root.iterdir() if p.is_dir())
    (first / f"{first.name}_3_mask.tif").unlink()  # an image without its mask
    (second / f"{second.name}_2.tif").write_bytes(b"II*\x00garbage")  # a corrupt image
    tifffile.imwrite(second / f"{second.name}_5_mask.tif", np.ones((64, 64), np.uint8))  # mask in {0, 1}
    tifffile.imwrite(second / f"{second.name}_6_mask.tif", np.zeros((32, 32), np.uint8))  # wrong size
    report = run_eda(phantom_root, tmp_path / "eda")
    assert report["images_without_mask"] == {"count": 1, "examples": [f"{first.name}_3.tif"]}
    assert report["corrupt_files"]["count"] == 1 and "_2.tif" in report["corrupt_files"]["examples"][0]["file"]
    assert report["nonbinary_masks"]["count"] == 1 and 1 in report["mask_values"]
    assert not report["masks_binary_0_255"]
    assert report["size_mismatches"]["count"] == 1 and not report["aligned"]
    assert report["pairs"] == 36 - 1 - 1  # one mask missing, one image unreadable
    assert math.isfinite(report["empty_mask_share"])


def test_run_eda_rejects_a_folder_without_patients(tmp_path):
    with pytest.raises(LGGFormatError, match="no patient folders"):
        run_eda(tmp_path, tmp_path / "out")


@requires_real_data
def test_run_eda_on_the_real_data(tmp_path):
    report = run_eda(REAL_DATA, tmp_path / "eda")
    assert report["patients"] == 66 and report["pairs"] == 2270
    assert report["image_shapes"] == {"256x256x3": 2270} and report["masks_binary_0_255"] and report["aligned"]
    assert report["corrupt_files"]["count"] == 0 and 0.5 < report["empty_mask_share"] < 0.8
    assert report["slices_per_patient"]["min"] >= 20 and report["slices_per_patient"]["max"] <= 88
