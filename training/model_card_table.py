"""Print the shipped model's results as Markdown, read from its model card (no model run, no data needed).

    python training/model_card_table.py [--card src/napari_lgg_seg/models/lgg_unet_default.json]

The README and training/README.md tables are this script's output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_lgg_seg.model import DEFAULT_MODEL_PATH

ROWS = (("per-patient volumetric Dice, mean", "patient_dice_mean",
         "0.82 (Buda et al. 2019, cross-validation); experts 0.84 +- 0.02"),
        ("per-patient volumetric Dice, median", "patient_dice_median", ""),
        ("slice-averaged Dice / IoU (seed's scoring)", ("slice_dice", "slice_iou"),
         "seed: 0.7752 / 0.7358 (BCE+Dice), 0.7296 / 0.6945 (weighted)"),
        ("tumour-slice Dice", "tumour_slice_dice", ""),
        ("empty-slice false-positive rate", "empty_slice_fp_rate", ""))


def _cell(summary: dict, key) -> str:
    if isinstance(key, tuple):
        return " / ".join(f"{summary[k]:.3f}" for k in key)
    return f"{summary[key]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", type=Path, default=DEFAULT_MODEL_PATH.with_suffix(".json"))
    args = parser.parse_args(argv)
    meta = json.loads(args.card.read_text())["meta"]
    test, inference = meta["test"], meta["inference"]
    chosen, raw = meta["validation"]["chosen"], meta["validation"]["raw"]
    print(f"Settings chosen on the {len(meta['split']['val'])} validation patients: threshold "
          f"{inference['threshold']}, TTA {'on' if inference['tta'] else 'off'}, keep largest 3D component "
          f"{'yes' if inference['keep_largest'] else 'no'}, minimum lesion {inference['min_lesion_voxels']} voxels, "
          f"hole filling {'yes' if inference['fill_holes'] else 'no'} (validation per-patient Dice "
          f"{raw['patient_dice_mean']:.3f} raw -> {chosen['patient_dice_mean']:.3f}, FP rate "
          f"{raw['empty_slice_fp_rate']:.2f} -> {chosen['empty_slice_fp_rate']:.3f}).\n")
    print(f"Results on the {test['summary']['patients']} held-out test patients:\n")
    print("| metric | raw (threshold 0.5, no clean-up) | shipped settings | published |")
    print("| --- | --- | --- | --- |")
    for label, key, published in ROWS:
        print(f"| {label} | {_cell(test['summary_raw'], key)} | **{_cell(test['summary'], key)}** | {published} |")
    dice = sorted((row["volume_dice"] for row in test["patients"]), reverse=True)
    print("\nPer test patient (volumetric Dice): " + ", ".join(f"{d:.3f}" for d in dice) + ".")
    stages = meta.get("training_stages") or [{"epochs": meta.get("epochs_done"), "steps": meta.get("steps_done"),
                                              "wall_seconds": meta.get("wall_seconds")}]
    total = sum(s.get("wall_seconds") or 0.0 for s in stages)
    print("\nTraining up to the shipped checkpoint: " + "; ".join(
        f"stage {i + 1}: {s.get('epochs')} epochs ({s.get('steps')} steps), {(s.get('wall_seconds') or 0) / 60:.0f} min"
        for i, s in enumerate(stages)) + f"; total {total / 60:.0f} min on {meta.get('hardware', 'unknown hardware')}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
