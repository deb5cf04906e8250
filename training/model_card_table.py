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
    print(f"Inference settings ({meta.get('inference_chosen_by', 'from the card')}): threshold "
          f"{inference['threshold']}, TTA {'on' if inference['tta'] else 'off'}, keep largest 3D component "
          f"{'yes' if inference['keep_largest'] else 'no'}, minimum lesion {inference['min_lesion_voxels']} voxels, "
          f"hole filling {'yes' if inference['fill_holes'] else 'no'}.\n")
    print(f"{meta.get('expected_accuracy', 'Results on the held-out test patients')}.\n")
    conditions = test.get("conditions", {})
    print("| metric | raw (threshold 0.5, no clean-up) | shipped settings | " +
          "".join(f"{c.replace('_', '-')} (simulated) | " for c in conditions) + "published |")
    print("| --- | --- | --- | " + "--- | " * len(conditions) + "--- |")
    for label, key, published in ROWS:
        extra = "".join(f"{_cell(conditions[c], key)} | " for c in conditions)
        print(f"| {label} | {_cell(test['summary_raw'], key)} | **{_cell(test['summary'], key)}** | {extra}{published} |")
    for c, summary in conditions.items():
        print(f"\n{c.replace('_', '-')}: per-patient Dice lost against the intact images: "
              f"{summary['patient_dice_drop_mean']:.3f} on average, {summary['patient_dice_drop_max']:.3f} at worst.")
    dice = sorted((row["volume_dice"] for row in test["patients"]), reverse=True)
    print("\nPer test patient (volumetric Dice): " + ", ".join(f"{d:.3f}" for d in dice) + ".")
    run = meta.get("test_run", {})
    print(f"\nShipped model: {meta.get('epochs_done')} epochs ({meta.get('steps_done')} steps) in "
          f"{(meta.get('wall_seconds') or 0) / 60:.0f} min on {meta.get('hardware', 'unknown hardware')}"
          + (f"; test run {run.get('run')}: {run.get('steps_done')} steps in {(run.get('wall_seconds') or 0) / 60:.0f}"
             f" min on {run.get('hardware')}" if run and run.get("run") != meta.get("source_checkpoint", "/").split("/")[0]
             else "") + ".")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
