"""Training engine: patient split, run files, checkpoints, stop / resume / kill (tiny models on phantoms)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from napari_lgg_seg import cli
from napari_lgg_seg._testing import disk_full_on_atomic_writes
from napari_lgg_seg.config import TrainConfig
from napari_lgg_seg.data import split_patients
from napari_lgg_seg.model import CheckpointError, load_model, read_checkpoint
from napari_lgg_seg.training import train


def tiny_config(**kw) -> TrainConfig:
    """A run that takes a second or two on 64x64 phantoms."""
    base = dict(model_features=TINY["features"], model_bottleneck=TINY["bottleneck"], image_size=64, crop_size=None,
                batch_size=2, epochs=2, steps_per_epoch=3, val_fraction=0.34, num_threads=1, precision="fp32",
                val_batch_size=8, scheduler="plateau", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def run(config, roots, out, **kw) -> list[dict]:
    return list(train(config, [str(r) for r in roots], out, **kw))


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="loss"):
        tiny_config(loss="focal").validate()
    with pytest.raises(ValueError, match="image_size"):
        tiny_config(image_size=50).validate()
    with pytest.raises(ValueError, match="crop_size"):
        tiny_config(crop_size=128).validate()  # larger than image_size 64
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


def test_shipped_configs_parse_and_share_the_split():
    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    loaded = {p.stem: TrainConfig.from_file(p) for p in sorted(configs.glob("*.toml"))}
    assert {"baseline", "weighted", "default"} <= set(loaded)
    for c in loaded.values():
        c.validate()
    assert loaded["baseline"].loss == "bce_dice"
    assert loaded["weighted"].loss == "weighted_bce_dice" and loaded["weighted"].pos_weight == 3.0
    for name in ("baseline", "weighted"):
        c = loaded[name]
        assert (c.lr, c.batch_size, c.scheduler, c.crop_size) == (1e-3, 8, "plateau", None)
        assert (c.plateau_factor, c.plateau_patience) == (0.5, 3)
        assert (c.seed, c.val_fraction, c.test_fraction) == (0, 0.1, 0.2)
    # the same test patients for every experiment; default_all trains the shipped model on every patient
    ids = [f"P{i:02d}" for i in range(66)]
    tests = {name: tuple(split_patients(ids, val_fraction=c.val_fraction, test_fraction=c.test_fraction,
                                        seed=c.seed)["test"]) for name, c in loaded.items() if name != "default_all"}
    assert len(set(tests.values())) == 1 and len(next(iter(tests.values()))) == 13
    assert loaded["default_all"].test_fraction == 0 and loaded["default_all"].val_fraction == 0
    recipe = {k: v for k, v in loaded["default"].to_dict().items() if k not in ("name", "test_fraction")}
    assert recipe == {k: v for k, v in loaded["default_all"].to_dict().items() if k not in ("name", "test_fraction")}


# --- a short run ----------------------------------------------------------------------------------------------------

def test_short_run_writes_files_and_loadable_checkpoints(phantom_root, tmp_path):
    out = tmp_path / "run"
    reports = run(tiny_config(keep_epoch_checkpoints=True), [phantom_root], out)
    kinds = [r["kind"] for r in reports]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch") == 2 and kinds.count("step") == 6
    for name in ("best.pt", "last.pt", "metrics.csv", "loss_curves.png", "val_metrics.png", "val_predictions.png",
                 "split.json", "config.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 2 and not set(split["val"]) & set(split["train"])
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_slice_dice", "val_slice_iou", "val_patient_dice_mean"} <= set(rows[0])
    # weights_only loading (no code-running pickles) and the model size from the config
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["features"] == TINY["features"]
    assert ckpt["config"]["image_size"] == 64
    assert ckpt["meta"]["split"] == split
    loaded = load_model(out / "best.pt")
    assert loaded.model.config.bottleneck == TINY["bottleneck"]
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["epoch"] == 2 and last["train_state"]["step"] == 6
    assert reports[-1]["best_path"] == str(out / "best.pt") and not reports[-1]["stopped"]
    # keep_epoch_checkpoints: each epoch's weights, the last one equal to last.pt's
    assert sorted(p.name for p in out.glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    assert load_model(out / "epoch_1.pt").meta["epochs_done"] == 1
    for key, value in load_model(out / "epoch_2.pt").model.state_dict().items():
        assert torch.equal(value, last["state_dict"][key]), key


def test_default_model_size_is_unchanged():
    from napari_lgg_seg.model import ModelConfig

    c = TrainConfig()
    assert (tuple(c.model_features), c.model_bottleneck) == (ModelConfig().features, ModelConfig().bottleneck)
    assert c.image_size == 256


def test_should_stop_ends_within_one_batch(phantom_root, tmp_path):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    reports = run(tiny_config(epochs=3, steps_per_epoch=4), [phantom_root], tmp_path / "run", should_stop=stop)
    steps = [r for r in reports if r["kind"] == "step"]
    assert len(steps) == 2  # stopped right after the batch where the flag was seen
    assert reports[-1]["kind"] == "done" and reports[-1]["stopped"]
    # a partial first epoch is not saved: nothing half-trained is offered as best
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_resume_after_stop_is_exact(phantom_root, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume for the second (RNG, optimiser, scheduler restored)."""
    config = tiny_config(epochs=2, steps_per_epoch=3)
    straight = tmp_path / "straight"
    run(config, [phantom_root], straight)

    parts = tmp_path / "parts"
    seen = {"steps": 0}

    def stop_after_first_epoch() -> bool:
        seen["steps"] += 1
        return seen["steps"] >= 3

    first = run(config, [phantom_root], parts, should_stop=stop_after_first_epoch)
    assert [r["epoch"] for r in first if r["kind"] == "epoch"] == [1]
    assert read_checkpoint(parts / "last.pt")["train_state"]["epoch"] == 1
    resumed = run(tiny_config(epochs=99), [phantom_root], parts, resume=True)  # the saved config wins
    assert resumed[0]["kind"] == "start" and resumed[0]["start_epoch"] == 1
    assert [r["epoch"] for r in resumed if r["kind"] == "epoch"] == [2]
    assert [r["step"] for r in resumed if r["kind"] == "step"] == [4, 5, 6]

    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(parts / "last.pt")
    assert states_equal(a["state_dict"], b["state_dict"])
    history_a, history_b = json.loads(a["train_state"]["history"]), json.loads(b["train_state"]["history"])
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]
    assert states_equal(read_checkpoint(straight / "best.pt")["state_dict"],
                        read_checkpoint(parts / "best.pt")["state_dict"])
    with open(parts / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


def test_resume_can_extend_a_finished_run(phantom_root, tmp_path):
    out = tmp_path / "run"
    run(tiny_config(epochs=1, steps_per_epoch=2), [phantom_root], out)
    before = read_checkpoint(out / "last.pt")["state_dict"]
    reports = run(tiny_config(), [phantom_root], out, resume=True, epochs=2)
    assert [r["epoch"] for r in reports if r["kind"] == "epoch"] == [2]
    after = read_checkpoint(out / "last.pt")
    assert after["train_state"]["epoch"] == 2 and after["config"]["epochs"] == 2
    assert not states_equal(before, after["state_dict"])
    # resuming a finished run without new epochs trains nothing
    again = run(tiny_config(), [phantom_root], out, resume=True)
    assert [r["kind"] for r in again] == ["start", "done"]


def test_resume_without_last_checkpoint_is_a_clear_error(phantom_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        run(tiny_config(), [phantom_root], tmp_path / "empty", resume=True)


def test_fine_tune_takes_the_start_checkpoints_architecture(phantom_root, tmp_path, tiny_checkpoint):
    config = tiny_config(epochs=1, steps_per_epoch=1, init_weights=str(tiny_checkpoint),
                         model_features=[32, 64, 128, 256], model_bottleneck=512)
    run(config, [phantom_root], tmp_path / "ft")
    ckpt = read_checkpoint(tmp_path / "ft" / "best.pt")
    assert ckpt["model_config"]["features"] == TINY["features"]
    assert ckpt["config"]["model_features"] == TINY["features"]
    assert ckpt["meta"]["init_weights"] == str(tiny_checkpoint)
    # a resumed fine-tuning run keeps its start checkpoint in the card (make_default_model follows it)
    run(config, [phantom_root], tmp_path / "ft", resume=True, epochs=2)
    for name in ("best.pt", "last.pt"):
        assert read_checkpoint(tmp_path / "ft" / name)["meta"]["init_weights"] == str(tiny_checkpoint), name


def _write_toml(path: Path, config: TrainConfig) -> None:
    lines = []
    for key, value in config.to_dict().items():
        if value is None or value == [] or key == "name":
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {list(value) if isinstance(value, (list, tuple)) else value}")
    path.write_text("\n".join(lines) + "\n")


def test_killed_mid_epoch_keeps_last_checkpoint_readable(phantom_root, tmp_path):
    """SIGKILL during the second epoch: last.pt (atomic writes) holds epoch 1 and the run resumes."""
    cfg = tmp_path / "tiny.toml"
    _write_toml(cfg, tiny_config(epochs=50, steps_per_epoch=2))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_lgg_seg.cli", "train", "--data", str(phantom_root),
                             "--config", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch 1:"):
                break
        time.sleep(0.05)  # now inside epoch 2 (or saving it)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert any(ln.startswith("epoch 1:") for ln in lines), "".join(lines)
    state = read_checkpoint(out / "last.pt")
    assert state["train_state"]["epoch"] >= 1
    load_model(out / "best.pt")
    done = state["train_state"]["epoch"]
    reports = run(tiny_config(), [phantom_root], out, resume=True, epochs=done + 1)
    assert [r["epoch"] for r in reports if r["kind"] == "epoch"] == [done + 1]


def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoints(phantom_root, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_config(epochs=1, steps_per_epoch=2), [phantom_root], out)
    saved = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")}
    with disk_full_on_atomic_writes():
        with pytest.raises(OSError, match="Could not save .*No space left on device.*Free disk space"):
            run(tiny_config(), [phantom_root], out, resume=True, epochs=2)
        # the CLI says the same in one line, without a traceback, and exits non-zero
        code = cli.main(["train", "--data", str(phantom_root), "--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "No space left on device" in err and "Traceback" not in err
    # nothing torn, nothing left behind: the epoch-1 checkpoints are byte-identical and still load
    assert {name: (out / name).read_bytes() for name in saved} == saved
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    load_model(out / "best.pt")
    # once there is space again, resume continues from epoch 1
    reports = run(tiny_config(), [phantom_root], out, resume=True, epochs=2)
    assert [r["epoch"] for r in reports if r["kind"] == "epoch"] == [2]


def test_truncated_checkpoint_is_refused_with_a_message(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(broken)



def test_memory_format_follows_the_precision():
    from napari_lgg_seg.training import training_memory_format

    cpu = torch.device("cpu")
    assert training_memory_format(cpu, "fp32") == torch.contiguous_format  # channels_last trains slower in fp32
    assert training_memory_format(cpu, "bf16") == torch.channels_last


def test_validation_scores_missing_sequences_and_validate_every(phantom_root, tmp_path):
    """The training's validation also reports the patients made FLAIR-only / without post-contrast; with
    validate_every it validates every N epochs and after the last."""
    reports = run(tiny_config(epochs=3, val_conditions=["flair_only", "no_post"], validate_every=2,
                              missing_both=0.5, missing_post=0.2, gamma=0.2, noise=0.05), [phantom_root],
                  tmp_path / "run")
    epochs = [r for r in reports if r["kind"] == "epoch"]
    assert [("val_flair_only_patient_dice_mean" in r, "val_no_post_patient_dice_mean" in r) for r in epochs] == [
        (False, False), (True, True), (True, True)]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[1]["val_flair_only_patient_dice_mean"] != ""


def test_group_norm_recipe_trains_and_reloads(phantom_root, tmp_path):
    reports = run(tiny_config(model_norm="group", epochs=1), [phantom_root], tmp_path / "run")
    assert reports[-1]["kind"] == "done"
    loaded = load_model(tmp_path / "run" / "last.pt")
    assert loaded.model.config.norm == "group"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in loaded.model.modules())


def test_new_config_fields_are_checked():
    for bad in (dict(missing_both=0.7, missing_post=0.5), dict(missing_pre=-0.1), dict(gamma=-1.0),
                dict(val_conditions=["no_flair"]), dict(scale_min=1.2, scale_max=1.1)):
        with pytest.raises(ValueError):
            tiny_config(**bad).validate()


# --- issue 12: run folders, resumes and best-checkpoint selection ---------------------------------------------------


def test_new_run_refuses_a_folder_holding_checkpoints(phantom_root, tmp_path, tiny_checkpoint, capsys):
    """A copied shipped model (best.pt, no last.pt) is never overwritten by a new run without --overwrite."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    before = (out / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        run(tiny_config(), [phantom_root], out)
    code = cli.main(["train", "--data", str(phantom_root), "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds checkpoints (best.pt)" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["best.pt"]
    # an overwrite that cannot start (no patients in the data root) keeps the old checkpoints
    (tmp_path / "no_data").mkdir()
    with pytest.raises(Exception):  # noqa: B017 - whatever the reader raises; the point is what is left
        run(tiny_config(), [tmp_path / "no_data"], out, overwrite=True)
    assert (out / "best.pt").read_bytes() == before
    # an explicit overwrite replaces the old run's checkpoints
    reports = run(tiny_config(epochs=1), [phantom_root], out, overwrite=True)
    assert reports[-1]["best_path"] == str(out / "best.pt") and (out / "best.pt").read_bytes() != before
    with pytest.raises(ValueError, match="choose one"):
        run(tiny_config(), [phantom_root], out, resume=True, overwrite=True)


def test_resume_from_a_model_only_checkpoint_is_refused(phantom_root, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_config(epochs=1), [phantom_root], out)
    (out / "last.pt").write_bytes((out / "best.pt").read_bytes())  # best.pt copied to last.pt
    with pytest.raises(CheckpointError, match="no training state"):
        run(tiny_config(), [phantom_root], out, resume=True)
    code = cli.main(["train", "--data", str(phantom_root), "--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--init-weights" in err and "Traceback" not in err and "KeyError" not in err


def test_resume_with_a_data_root_missing_a_patient_is_refused(phantom_root, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    run(tiny_config(epochs=1), [phantom_root], out)
    partial = tmp_path / "partial"
    shutil.copytree(phantom_root, partial)
    gone = sorted(p for p in partial.iterdir() if p.is_dir())[0]
    shutil.rmtree(gone)
    before = (out / "last.pt").read_bytes()
    code = cli.main(["train", "--data", str(partial), "--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and gone.name in err and "KeyError" not in err
    assert (out / "last.pt").read_bytes() == before


def test_resume_says_which_options_it_ignores(phantom_root, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_config(epochs=1), [phantom_root], out)
    code = cli.main(["train", "--data", str(phantom_root), "--out", str(out), "--resume", "--epochs", "2",
                     "--batch-size", "4", "--lr", "0.5", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    assert "--batch-size, --lr ignored" in err and "saved config" in err and "--device" not in err.split("ignored")[0]
    saved = read_checkpoint(out / "last.pt")["config"]
    assert (saved["batch_size"], saved["lr"]) == (2, tiny_config().lr)


def test_validation_without_tumour_still_selects_best_and_says_so(phantom_root, tmp_path, capsys):
    """The per-patient Dice is undefined without tumour: best.pt is chosen on the slice Dice, and the CLI says so."""
    import numpy as np
    import tifffile

    patients = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    for mask in (phantom_root / patients[0]).glob("*_mask.tif"):
        tifffile.imwrite(mask, np.zeros_like(tifffile.imread(mask)))
    config = tiny_config(epochs=2, val_patients=[patients[0]], train_patients=patients[1:])
    reports = run(config, [phantom_root], tmp_path / "run")
    done = reports[-1]
    assert done["selected_on"] == "slice_dice" and done["best"] >= 0 and done["best_epoch"] in (1, 2)
    assert done["best_saved"] and done["best_path"] == str(tmp_path / "run" / "best.pt")
    assert read_checkpoint(tmp_path / "run" / "best.pt")["meta"]["selected_on"] == "slice_dice"
    assert "no tumour" in done["summary"] and "-1.0000" not in done["summary"]
    toml = tmp_path / "c.toml"
    toml.write_text("\n".join(f"{k} = {v!r}".replace("'", '"').replace("None", "0") for k, v in {
        "model_features": list(TINY["features"]), "model_bottleneck": TINY["bottleneck"], "image_size": 64,
        "batch_size": 2, "epochs": 1, "steps_per_epoch": 2, "num_threads": 1, "precision": "fp32",
        "val_patients": [patients[0]], "train_patients": patients[1:]}.items()) + "\n")
    code = cli.main(["train", "--config", str(toml), "--data", str(phantom_root), "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert code == 0 and "selected on validation slice_dice" in out and "-1.0000" not in out


def test_stopped_before_an_epoch_reports_no_checkpoint(phantom_root, tmp_path):
    reports = run(tiny_config(), [phantom_root], tmp_path / "run", should_stop=lambda: True)
    assert not reports[-1]["best_saved"] and "no checkpoint was written" in reports[-1]["summary"]


def test_train_config_file_type_error_names_file_and_field(phantom_root, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('epochs = "3"\n')
    code = cli.main(["train", "--config", str(toml), "--data", str(phantom_root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and str(toml) in err and "epochs must be a whole number" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
