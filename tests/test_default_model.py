"""The shipped default model: present, small, with a consistent model card, and it segments the phantom."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_checkpoint
from napari_lgg_seg.inference import PostProcessing, postprocess, predict_any_size
from napari_lgg_seg.metrics import dice
from napari_lgg_seg.model import default_model_path, load_model, read_checkpoint
from napari_lgg_seg.sample import make_phantom


def test_default_model_is_installed_small_and_fp16():
    path = default_model_path()
    assert path is not None and path.is_file()
    assert path.stat().st_size <= 16 * 1024 * 1024
    state = read_checkpoint(path)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_model_card_is_complete_portable_and_split_by_patient():
    loaded = load_model(default_model_path())
    meta = loaded.meta
    for key in ("split", "inference", "test", "expected_accuracy", "epochs_done", "wall_seconds", "hardware", "torch",
                "commit"):
        assert key in meta, key
    test_split = meta.get("test_run", {}).get("split") or meta["split"]
    train, test = set(test_split["train"]), set(test_split["test"])
    assert train and test and not train & test
    assert set(meta["test"]["patient_ids"]) == test and meta["test"]["summary"]["patients"] == len(test)
    assert set(meta["test"]["conditions"]) >= {"flair_only", "no_post"}
    assert set(loaded.inference_defaults) >= {"threshold", "tta", "keep_largest", "min_lesion_voxels", "fill_holes"}
    card = json.loads(default_model_path().with_suffix(".json").read_text())
    assert not [s for s in _strings(card) if s.startswith(("/", "~")) or "/root/" in s or "/work/" in s]


def test_default_model_segments_the_sample_phantom():
    loaded = load_model(default_model_path())
    images, truth = make_phantom(n_slices=16, seed=0)
    # the product path: the model runs at its own size (the card's image_size) and the result is pasted back
    probs = predict_any_size(loaded.model, images, size=loaded.training_size, device="cpu", batch_size=8)
    mask = postprocess(probs, PostProcessing.from_dict(loaded.inference_defaults))
    assert dice(mask, truth) > 0.8


def _training_script(name: str):
    path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_card_table_prints_the_cards_numbers(capsys):
    """training/model_card_table.py (the README's results table) reads the shipped card."""
    module = _training_script("model_card_table")
    assert module.main([]) == 0
    out = capsys.readouterr().out
    summary = json.loads(default_model_path().with_suffix(".json").read_text())["meta"]["test"]["summary"]
    assert f"**{summary['patient_dice_mean']:.3f}**" in out and "| per-patient volumetric Dice, mean |" in out


def _phantom_run(run: Path, phantom_root: Path, test: bool = True) -> dict:
    ids = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    split = {"train": ids[:2], "val": [], "test": ids[2:]} if test else {"train": ids, "val": [], "test": []}
    run.mkdir()
    make_tiny_checkpoint(run / "last.pt", meta={
        "split": split, "epochs_done": 2, "steps_done": 20, "wall_seconds": 1.0, "hardware": "test CPU",
        "data_roots": [str(phantom_root.resolve())], "init_weights": "/root/runs/start/last.pt"})
    return split


def test_make_default_model_writes_a_portable_card_and_says_whose_figures_they_are(tmp_path, phantom_root):
    """training/make_default_model.py: the run's last.pt is shipped; the test figures come from --test-run (the same
    recipe without the test patients), intact and with missing sequences; the card holds no machine paths."""
    module = _training_script("make_default_model")
    own, everything = tmp_path / "own", tmp_path / "all"
    split = _phantom_run(own, phantom_root)
    _phantom_run(everything, phantom_root, test=False)
    out = tmp_path / "shipped" / "model.pt"
    common = ["--data", str(phantom_root), "--out", str(out), "--device", "cpu"]

    assert module.main(["--run", str(own), *common]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["meta"]["test"]["patient_ids"] == split["test"] and "own score" in card["meta"]["expected_accuracy"]
    assert set(card["meta"]["test"]["conditions"]) == {"flair_only", "no_post"}
    assert card["meta"]["data_roots"] == [phantom_root.name] and card["meta"]["init_weights"] == "last.pt"
    assert not [s for s in _strings(card) if str(tmp_path) in s or s.startswith("/")]
    assert load_model(out).inference_defaults == card["meta"]["inference"]

    with pytest.raises(SystemExit):  # an existing model is replaced only with --force
        module.main(["--run", str(everything), "--test-run", str(own), *common])
    with pytest.raises(SystemExit):  # a run without test patients cannot give the expected accuracy itself
        module.main(["--run", str(everything), *common, "--force"])
    assert module.main(["--run", str(everything), "--test-run", str(own), *common, "--force"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["meta"]["split"]["test"] == [] and card["meta"]["test_run"]["split"] == split
    assert "NOT this model's score" in card["meta"]["expected_accuracy"]


def test_crossval_folds_exclude_the_test_patients_and_pool(tmp_path, phantom_root):
    """training/crossval.py: folds partition the non-test patients; a fold trains, scores its held-out patients
    intact and with missing sequences, and summarize pools the folds (and grid-searches post-processing)."""
    module = _training_script("crossval")
    ids = [f"P{i:02d}" for i in range(10)]
    folds = module.folds_of(ids, 3)
    assert sorted(sum(folds, [])) == ids and max(map(len, folds)) - min(map(len, folds)) <= 1
    config = tmp_path / "tiny.toml"
    config.write_text('model_features = [4, 8, 16, 32]\nmodel_bottleneck = 32\nimage_size = 64\nbatch_size = 2\n'
                      'epochs = 1\nsteps_per_epoch = 2\nprecision = "fp32"\nnum_threads = 1\nscheduler = "cosine"\n'
                      'seed = 0\nval_fraction = 0.0\ntest_fraction = 0.34\n')
    patients = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    pool, test = module.non_test_patients(patients, module.TrainConfig.from_file(config))
    assert len(test) == 1 and sorted(pool + test) == patients
    out = tmp_path / "cv"
    for fold in (0, 1):
        assert module.main(["run", "--data", str(phantom_root), "--config", str(config), "--split-config", str(config),
                            "--folds", "2", "--fold", str(fold), "--out", str(out), "--set", "missing_both=0.5"]) == 0
        saved = json.loads((out / f"fold_{fold}" / "fold.json").read_text())
        assert test[0] not in saved["val"] + saved["train"] and saved["config"]["missing_both"] == 0.5
    assert module.main(["summarize", str(out), "--data", str(phantom_root), "--postprocessing"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == 2 and summary["patients"] == 2 and "postprocessing" in summary
