"""The shipped default model: present, small, with a consistent model card, and it segments the phantom."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

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


def test_model_card_table_prints_the_cards_numbers(capsys):
    """training/model_card_table.py (the README's results table) reads the shipped card."""
    path = Path(__file__).resolve().parents[1] / "training" / "model_card_table.py"
    spec = importlib.util.spec_from_file_location("model_card_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 0
    out = capsys.readouterr().out
    summary = json.loads(default_model_path().with_suffix(".json").read_text())["meta"]["test"]["summary"]
    assert f"**{summary['patient_dice_mean']:.3f}**" in out and "| per-patient volumetric Dice, mean |" in out
