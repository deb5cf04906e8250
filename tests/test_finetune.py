"""The human-in-the-loop loop: a weak model, corrected patients exported as training data, fine-tuning,
and a measurable gain on held-out patients (tiny model, 64x64 phantoms)."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import make_tiny_checkpoint
from napari_lgg_seg.config import TrainConfig
from napari_lgg_seg.evaluation import evaluate_folders
from napari_lgg_seg.export import export_corrected_patient
from napari_lgg_seg.inference import postprocess, predict_volume
from napari_lgg_seg.io import load_patient, write_patient_folder
from napari_lgg_seg.model import load_model, read_checkpoint
from napari_lgg_seg.sample import make_phantom, write_phantom_dataset
from napari_lgg_seg.training import train


def test_fine_tuning_on_exported_corrections_improves_held_out_dice(tmp_path):
    # a weak start model: random weights, card says 64-px slices
    start = make_tiny_checkpoint(tmp_path / "start.pt", seed=0)
    raw = torch.load(start, weights_only=True)
    raw["config"] = {"image_size": 64}
    torch.save(raw, start)
    weak = load_model(start)

    # new patients arrive without masks; the weak model segments them and the user corrects the result
    incoming, corrections = tmp_path / "incoming", tmp_path / "corrections"
    truths = {}
    for i in range(4):
        images, masks = make_phantom(n_slices=12, size=64, seed=10 + i)
        pid = f"CASE_{i:02d}_20000101"
        folder = write_patient_folder(incoming, pid, masks, images=images)
        for mask_file in folder.glob("*_mask.tif"):
            mask_file.unlink()
        truths[pid] = masks
    for pid, truth in truths.items():
        patient = load_patient(incoming / pid)
        assert patient.masks is None
        ai = postprocess(predict_volume(weak.model, patient.images, device="cpu"))
        corrected = truth  # what the user painted
        export_corrected_patient(corrections, corrected, patient.metadata(), images=patient.images, model=str(start),
                                 voxels_edited=int(np.count_nonzero((ai > 0) != (corrected > 0))))
    exported = sorted(p.name for p in corrections.iterdir() if p.is_dir())
    assert exported == sorted(truths)
    sidecar = json.loads((corrections / exported[0] / "lgg_seg_export.json").read_text())
    assert sidecar["model"] == str(start) and sidecar["voxels_edited"] > 0

    # held-out patients (never used for training)
    held_out = tmp_path / "held_out"
    write_phantom_dataset(held_out, n_patients=2, n_slices=12, size=64, seed=30, prefix="HELD")
    before = evaluate_folders([held_out], start, device="cpu")["summary"]["patient_dice_mean"]

    config = TrainConfig(init_weights=str(start), image_size=64, epochs=1, steps_per_epoch=100, batch_size=8, lr=5e-3,
                         tumour_fraction=0.5, val_fraction=0.0, device="cpu", precision="fp32", num_threads=1)
    reports = list(train(config, [corrections], tmp_path / "finetune"))
    assert reports[-1]["kind"] == "done" and not reports[-1]["stopped"]
    best = tmp_path / "finetune" / "best.pt"
    ckpt = read_checkpoint(best)
    assert ckpt["meta"]["init_weights"] == str(start)
    assert sorted(ckpt["meta"]["split"]["train"]) == sorted(truths)
    after_result = evaluate_folders([held_out], best, device="cpu")
    after = after_result["summary"]["patient_dice_mean"]
    assert after >= before + 0.3, (before, after)
    assert all(row["volume_dice"] > before for row in after_result["patients"])
