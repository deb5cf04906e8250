"""The shipped default model: present, small, with a consistent model card, and it segments the phantom."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from conftest import make_tiny_checkpoint
from napari_lgg_seg.inference import PostProcessing, postprocess, predict_volume
from napari_lgg_seg.metrics import dice
from napari_lgg_seg.model import default_model_path, load_model, read_checkpoint
from napari_lgg_seg.sample import make_phantom


def test_default_model_is_installed_small_and_fp16():
    path = default_model_path()
    assert path is not None and path.is_file()
    assert path.stat().st_size <= 16 * 1024 * 1024
    state = read_checkpoint(path)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


def test_model_card_is_complete_and_split_by_patient():
    loaded = load_model(default_model_path())
    meta = loaded.meta
    for key in ("split", "inference", "test", "validation", "epochs_done", "wall_seconds", "hardware", "torch", "commit"):
        assert key in meta, key
    split = meta["split"]
    train, val, test = set(split["train"]), set(split["val"]), set(split["test"])
    assert train and val and test and not (train & val or train & test or val & test)
    assert set(loaded.inference_defaults) >= {"threshold", "tta", "keep_largest", "min_lesion_voxels", "fill_holes"}
    assert meta["test"]["summary"]["patients"] == len(test)


def test_default_model_segments_the_sample_phantom():
    loaded = load_model(default_model_path())
    images, truth = make_phantom(n_slices=16, seed=0)
    probs = predict_volume(loaded.model, images, device="cpu", batch_size=8)
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


def _phantom_run(run: Path, phantom_root: Path, epochs: tuple[int, ...]) -> dict:
    ids = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    split = {"train": ids[:1], "val": ids[1:2], "test": ids[2:]}
    run.mkdir()
    for epoch in epochs:
        make_tiny_checkpoint(run / f"epoch_{epoch}.pt", seed=epoch,
                             meta={"split": split, "epochs_done": epoch, "steps_done": 10 * epoch, "wall_seconds": 1.0})
    return split


def test_make_default_model_chooses_on_validation_and_never_replaces_a_better_model(tmp_path, phantom_root):
    """training/make_default_model.py: candidates and their average are compared on validation only; a shipped
    model that did better on the same validation patients is kept byte for byte unless --force is given."""
    module = _training_script("make_default_model")
    run, out = tmp_path / "run", tmp_path / "shipped" / "model.pt"
    split = _phantom_run(run, phantom_root, (1, 2, 3))
    common = ["--run", str(run), "--data", str(phantom_root), "--out", str(out), "--device", "cpu"]

    assert module.main([*common, "--checkpoint", "epoch_1.pt", "epoch_2.pt", "--average", "epoch_2.pt", "epoch_3.pt"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert set(card["meta"]["validation"]["candidates"]) == {"epoch_1.pt", "epoch_2.pt", "averaged.pt"}
    assert (run / "averaged.pt").is_file()
    assert card["meta"]["split"] == split and card["meta"]["test"]["summary"]["patients"] == 1
    assert load_model(out).inference_defaults == card["meta"]["inference"]

    # a shipped model that did better on the same validation patients stays
    card["meta"]["validation"]["chosen"]["patient_dice_mean"] = 1.0
    out.with_suffix(".json").write_text(json.dumps(card))
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert module.main([*common, "--checkpoint", "epoch_1.pt"]) == 1
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
    assert module.main([*common, "--checkpoint", "epoch_1.pt", "--force"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["validation"]["candidates"] == {
        "epoch_1.pt": card["meta"]["validation"]["candidates"]["epoch_1.pt"]}
