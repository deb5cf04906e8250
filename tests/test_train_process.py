"""The Train dock's Qt-free side (``train_process``): what a run folder holds, data checks, status lines."""

from __future__ import annotations

import json

import pytest


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


def test_data_roots_add_remove_and_refuse(tmp_path):
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.train_process import DataRoots

    roots = DataRoots()
    assert "no patient folders" in roots.add(tmp_path / "empty") and roots.paths() == []
    write_phantom_dataset(tmp_path / "data", n_patients=2, n_slices=2)
    assert roots.add(tmp_path / "data") is None and roots.add(tmp_path / "data") is None  # once
    key = str((tmp_path / "data").resolve())
    assert roots.choices() == [(f"{tmp_path / 'data'} (2 patients, 2 with masks)", key)]
    roots.remove([key])
    assert roots.paths() == []


def test_start_models_list_each_path_once_and_find_choices(tmp_path):
    from napari_lgg_seg.train_process import SCRATCH, StartModels, start_lr

    starts = StartModels()
    ckpt = tmp_path / "a.pt"
    key = starts.remember(ckpt)
    assert key == str(ckpt.resolve()) and starts.remember(ckpt) == key and starts.files == [key]
    entries = starts.choices("/m/default.pt", "/m/default.pt", [("Trained: run", key)])
    assert entries == [("Default model", ("default", "/m/default.pt")), ("Trained: run", ("file", key)),
                       ("Scratch (random weights)", (SCRATCH, None))]
    values = [value for _, value in entries]
    assert StartModels.find(values, key) == ("file", key) and StartModels.find(values, SCRATCH) == (SCRATCH, None)
    with pytest.raises(ValueError, match="not available"):
        StartModels.find(values, "current")
    assert start_lr(SCRATCH) == 1e-3 and start_lr("default") == start_lr("file") == 1e-4  # issue 13 bug 6


SETTINGS = {"epochs": 3, "steps_per_epoch": 0, "batch_size": 2, "lr": 1e-4, "loss": "bce_dice", "pos_weight": 3.0,
            "val_fraction": 0.0, "device": "", "crops": True}


def test_make_config_and_jobs(tmp_path):
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.train_process import RunRefused, describe_run, make_config, new_run_job, resume_job

    config = make_config(SETTINGS, "run", None)
    assert (config.name, config.epochs, config.steps_per_epoch, config.device, config.init_weights) == \
        ("run", 3, None, "auto", "")
    assert make_config(SETTINGS, "run", None, crops=True).crop_size == 128  # 256-px scratch model: crops
    root = tmp_path / "data"
    write_phantom_dataset(root, n_patients=1, n_slices=2)
    with pytest.raises(RunRefused, match="data folder"):
        new_run_job([], tmp_path / "run", SETTINGS, None)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    assert describe_run(out)[1].startswith(f"{out} holds a run: 0 of 0 epochs done")
    with pytest.raises(RunRefused, match="Resume it"):
        new_run_job([str(root)], out, SETTINGS, None)
    job = new_run_job([str(root)], out, SETTINGS, None, rename=True)  # the default folder: a new one beside it
    assert job["out"] == str(tmp_path / "run-1") and job["config"]["name"] == "run-1" and job["crops"] is True
    with pytest.raises(RunRefused, match="validation share to 0"):
        new_run_job([str(root)], tmp_path / "new", {**SETTINGS, "val_fraction": 0.2}, None)
    with pytest.raises(RunRefused, match="Cannot start"):
        new_run_job([str(root)], tmp_path / "new", {**SETTINGS, "loss": "nope"}, None)
    assert resume_job([str(root)], out, 4) == {"roots": [str(root)], "out": str(out), "resume": True, "epochs": 4}
    with pytest.raises(RunRefused, match="no run to resume"):
        resume_job([str(root)], tmp_path / "new", 4)
    with pytest.raises(RunRefused, match="data folders first"):
        resume_job([], out, 4)


def test_run_monitor_follows_the_reports(tmp_path):
    from napari_lgg_seg.train_process import RunMonitor

    run = RunMonitor()
    start = {"kind": "start", "train_slices": 4, "split": {"train": ["a"], "val": []}, "device": "cpu",
             "start_epoch": 1, "epochs": 3, "total_steps": 6, "steps_per_epoch": 2}
    assert run.handle(start) == ("Training on 4 slices (1 patients, 0 for validation) on cpu; epoch 2 of 3.", False)
    assert (run.step, run.total_steps) == (2, 6)
    step = {"kind": "step", "epoch": 2, "batch": 1, "steps_per_epoch": 2, "loss": 0.5, "slices_per_s": 1.0, "step": 9}
    assert run.handle(step) is not None and run.step == 6  # clamped to the total
    run.stopping = True
    assert run.handle(step) is None  # "Stopping…" stays while the batch ends
    assert run.handle({"kind": "epoch", "epoch": 2, "train_loss": 0.4})[0].startswith("Epoch 2 done")
    assert run.history == [{"epoch": 2, "train_loss": 0.4}]
    done = {"kind": "done", "stopped": True, "best_path": str(tmp_path / "best.pt"), "out_dir": str(tmp_path)}
    assert "no model was saved" in run.handle(done)[0] and run.best_path is None
    run.finish()
    assert run.step == 0  # a stopped run empties the bar
    (tmp_path / "best.pt").write_bytes(b"x")
    assert run.handle({**done, "stopped": False}) == (
        f"Finished. Best model: {tmp_path / 'best.pt'}. It is offered in the Segment dock's model list.", False)
    assert run.best_path == str(tmp_path / "best.pt") and run.best_model_label() == \
        f"Trained: {tmp_path.name} (best of 1 epoch)"
    run.finish()
    assert run.step == run.total_steps == 6  # a finished run fills it
    assert run.handle({"kind": "error", "error": "boom"}) == ("Training failed: boom", True)
    run.finish()
    assert run.step == 0
