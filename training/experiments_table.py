"""Print the seed-comparison tables of the two experiments: validation (best epoch, from each run's
metrics.csv) and, where ``napari-lgg-seg evaluate ... --out RUN/test`` was run, the held-out test patients
(RUN/test/summary.json).

    python training/experiments_table.py --baseline runs/baseline --weighted runs/weighted
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

SEED = {"baseline": (0.7752, 0.7358), "weighted": (0.7296, 0.6945)}
LOSSES = {"baseline": "BCE + Dice", "weighted": "weighted BCE (pos_weight 3) + Dice"}


def best_epoch(run: Path) -> dict:
    """The epoch with the best validation per-patient Dice (the one best.pt holds)."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run}: metrics.csv has no epochs yet")
    return max(rows, key=lambda r: float(r.get("val_patient_dice_mean") or "nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--weighted", type=Path, required=True)
    args = parser.parse_args(argv)
    print("| experiment | loss | epochs x steps run | val slice Dice / IoU | val tumour-slice Dice "
          "| val per-patient Dice (mean / median) | val empty-slice FP rate | seed slice Dice / IoU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("baseline", "weighted"):
        run = getattr(args, name)
        row = best_epoch(run)
        with open(run / "metrics.csv") as f:
            epochs = len(list(csv.DictReader(f)))
        steps = int(row["step"]) // int(row["epoch"])
        print(f"| {name} | {LOSSES[name]} | {epochs} x {steps} (best: epoch {row['epoch']}) "
              f"| {float(row['val_slice_dice']):.4f} / {float(row['val_slice_iou']):.4f} "
              f"| {float(row['val_tumour_slice_dice']):.4f} "
              f"| {float(row['val_patient_dice_mean']):.4f} / {float(row['val_patient_dice_median']):.4f} "
              f"| {float(row['val_empty_slice_fp_rate']):.3f} | {SEED[name][0]} / {SEED[name][1]} |")
    tests = {name: getattr(args, name) / "test" / "summary.json" for name in ("baseline", "weighted")}
    if any(path.is_file() for path in tests.values()):
        print()
        print("| experiment | test patients | slice Dice / IoU | tumour-slice Dice | per-patient Dice (mean / median) "
              "| empty-slice FP rate | settings | seed slice Dice / IoU |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, path in tests.items():
            if not path.is_file():
                print(f"| {name} | not evaluated ({path} missing) | | | | | | |")
                continue
            report = json.loads(path.read_text())
            t, settings = report["summary"], report["settings"]
            post = settings.get("postprocessing", {})
            how = (f"threshold {post.get('threshold', 0.5)}, TTA {'on' if settings.get('tta') else 'off'}, "
                   f"{'largest component' if post.get('keep_largest') else 'no clean-up'}")
            print(f"| {name} | {t['patients']} | {t['slice_dice']:.4f} / {t['slice_iou']:.4f} "
                  f"| {t['tumour_slice_dice']:.4f} | {t['patient_dice_mean']:.4f} / {t['patient_dice_median']:.4f} "
                  f"| {t['empty_slice_fp_rate']:.3f} | {how} | {SEED[name][0]} / {SEED[name][1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
