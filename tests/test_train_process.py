"""The Train dock's Qt-free side (``train_process``): what a run folder holds, data checks, status lines."""

from __future__ import annotations

import json


def test_run_progress_reads_the_run_folder(tmp_path):
    from napari_lgg_seg.train_process import run_progress

    assert run_progress(tmp_path) is None  # no last.pt: no run
    (tmp_path / "last.pt").write_bytes(b"x")
    assert run_progress(tmp_path) == (0, 0)  # no history, no config
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n2,0.4\n")
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 5}))
    assert run_progress(tmp_path) == (2, 5)
    (tmp_path / "config.json").write_text("not json")
    assert run_progress(tmp_path) == (2, 2)


def test_data_roots_are_described_and_checked(tmp_path):
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.train_process import check_patients, describe_data_root

    assert describe_data_root(tmp_path) is None
    root = tmp_path / "phantoms"
    write_phantom_dataset(root, n_patients=2, n_slices=4)
    assert describe_data_root(root) == f"{root} (2 patients, 2 with masks)"
    assert check_patients([str(root)], 0.2) is None
    assert check_patients([str(tmp_path / "none")], 0.2) == "The data folders hold no patients."
    one = sorted(p for p in root.iterdir() if p.is_dir())[0]
    assert "Only one patient" in check_patients([str(one)], 0.2)
    assert check_patients([str(one)], 0.0) is None


def test_report_text_of_each_kind():
    from napari_lgg_seg.train_process import report_text

    start = {"kind": "start", "train_slices": 40, "split": {"train": ["a", "b"], "val": ["c"]}, "device": "cpu",
             "start_epoch": 0, "epochs": 3}
    assert report_text(start) == "Training on 40 slices (2 patients, 1 for validation) on cpu; epoch 1 of 3."
    step = {"kind": "step", "epoch": 1, "batch": 2, "steps_per_epoch": 5, "loss": 0.51234, "slices_per_s": 9.87}
    assert report_text(step) == "Epoch 1, batch 2/5: loss 0.5123 (9.9 slices/s)"
    epoch = {"kind": "epoch", "epoch": 2, "train_loss": 0.3, "val_patient_dice_mean": 0.71, "improved": True}
    assert report_text(epoch) == "Epoch 2 done: train loss 0.3000, val Dice 0.710 (best so far)"
    assert report_text({"kind": "done"}) is None
