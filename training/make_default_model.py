"""Turn a training run into the shipped default model.

1. for each candidate checkpoint of the run (default: best.pt; ``--average`` adds the weight average of some
   checkpoints, e.g. the last epochs' snapshots), choose threshold / TTA / 3D post-processing on the run's VALIDATION patients only, and keep the
   candidate with the best validation per-patient Dice;
2. refuse to replace a shipped model that did better on the same validation patients (``--force`` overrides),
   before anything is computed on the test patients;
3. evaluate once on the run's TEST patients (never used for training or any choice);
4. write the fp16 model with its model card into the package (``models/lgg_unet_default.pt`` + ``.json``).

    python training/make_default_model.py --run ~/runs/default_v3 --data ../shared/lgg/kaggle_3m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_lgg_seg.evaluation import (
    choose_inference_settings,
    evaluate_folders,
    load_labelled_patients,
    predict_patients,
)
from napari_lgg_seg.io import atomic_write_text
from napari_lgg_seg.model import (
    DEFAULT_MODEL_PATH,
    average_checkpoints,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

MAX_FP_RATE = 0.05


def training_stages(checkpoint: Path, meta: dict) -> list[dict]:
    """The runs that made this checkpoint, oldest first: follows ``init_weights`` (fine-tuning) back through
    the start checkpoints' cards, as far as those files exist."""
    stages, seen = [], set()
    while True:
        stages.append({"checkpoint": str(checkpoint), "epochs": meta.get("epochs_done"),
                       "steps": meta.get("steps_done"), "wall_seconds": meta.get("wall_seconds"),
                       "commit": meta.get("commit"), "init_weights": meta.get("init_weights")})
        start = meta.get("init_weights")
        if not start or start in seen or not Path(start).is_file():
            break
        seen.add(start)
        checkpoint = Path(start)
        meta = read_checkpoint(checkpoint).get("meta", {})
    return stages[::-1]


def validation_choice(loaded, data: list[str], val_patients: list[str], device: str, log) -> dict:
    """Inference settings chosen on the validation patients: ``{"settings", "chosen", "raw", "grid_rows"}``."""
    images, truths = load_labelled_patients(data, val_patients)
    probabilities = predict_patients(loaded, images, device=device, progress=log)
    _, table = choose_inference_settings(probabilities, truths)
    # among settings that keep empty-slice false positives <= 5% on validation, the best mean per-patient Dice
    allowed = [row for row in table if row["empty_slice_fp_rate"] <= MAX_FP_RATE] or table
    best = allowed[0]
    raw = next(r for r in table if not r["tta"] and r["threshold"] == 0.5 and r["min_lesion_voxels"] == 0
               and not r["keep_largest"] and not r["fill_holes"])
    return {"settings": {k: best[k] for k in ("tta", "threshold", "min_lesion_voxels", "keep_largest", "fill_holes")},
            "chosen": best, "raw": raw, "grid_rows": len(table)}


def shipped_validation_dice(out: Path, val_patients: list[str]) -> float | None:
    """The validation per-patient Dice recorded in the card at ``out``, if it was measured on the same patients."""
    card_path = out.with_suffix(".json")
    if not out.is_file() or not card_path.is_file():
        return None
    meta = json.loads(card_path.read_text()).get("meta", {})
    if sorted(meta.get("split", {}).get("val", [])) != sorted(val_patients):
        return None
    return meta.get("validation", {}).get("chosen", {}).get("patient_dice_mean")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run folder (best.pt, split.json)")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--checkpoint", nargs="+", default=["best.pt"],
                        help="candidate checkpoints in the run folder (the best on validation is shipped)")
    parser.add_argument("--average", nargs="+", default=[], metavar="CHECKPOINT",
                        help="one more candidate: the weight average of these checkpoints in the run folder "
                             "(written to the run as averaged.pt)")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--force", action="store_true",
                        help="replace the model at --out even if it did better on the same validation patients")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    run = Path(args.run).expanduser()
    out = Path(args.out)
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {text}", file=sys.stderr, flush=True)

    candidates = [run / name for name in args.checkpoint]
    if args.average:
        if len(args.average) < 2:
            parser.error("--average needs at least two checkpoints")
        average_checkpoints([run / name for name in args.average], run / "averaged.pt")
        candidates.append(run / "averaged.pt")
    models = {path: load_model(path) for path in candidates}
    if len({json.dumps(m.meta.get("split"), sort_keys=True) for m in models.values()}) > 1:
        parser.error("the candidate checkpoints were trained on different patient splits")
    choices = {}
    for path, candidate in models.items():
        choice = validation_choice(candidate, args.data, candidate.meta["split"]["val"], args.device, log)
        log(f"{path.name}: validation raw (0.5, no clean-up) Dice {choice['raw']['patient_dice_mean']:.4f}, chosen "
            f"{choice['settings']} -> {choice['chosen']['patient_dice_mean']:.4f} "
            f"(FP rate {choice['chosen']['empty_slice_fp_rate']:.3f})")
        choices[path] = choice
    checkpoint = max(choices, key=lambda path: choices[path]["chosen"]["patient_dice_mean"])
    loaded, choice = models[checkpoint], choices[checkpoint]
    split = loaded.meta["split"]
    settings, best, raw = choice["settings"], choice["chosen"], choice["raw"]

    shipped = shipped_validation_dice(out, split["val"])
    if shipped is not None and shipped >= best["patient_dice_mean"] and not args.force:
        log(f"not replacing {out}: it scored {shipped:.4f} on the same validation patients, {checkpoint.name} "
            f"{best['patient_dice_mean']:.4f} (--force replaces it anyway); the test patients were not looked at.")
        return 1

    post = {k: settings[k] for k in ("threshold", "min_lesion_voxels", "keep_largest", "fill_holes")}
    test = evaluate_folders(args.data, checkpoint, patients=split["test"], device=args.device,
                            tta=settings["tta"], postprocessing=post)
    test_raw = evaluate_folders(args.data, checkpoint, patients=split["test"], device=args.device,
                                tta=False, postprocessing={"threshold": 0.5, "min_lesion_voxels": 0,
                                                           "keep_largest": False, "fill_holes": False})
    log(f"test: {json.dumps(test['summary'])}")

    meta = dict(loaded.meta)
    stages = training_stages(checkpoint.resolve(), loaded.meta)
    meta.update({
        "training_stages": stages,
        "total_wall_seconds": sum(st["wall_seconds"] or 0.0 for st in stages),
        "total_steps": sum(st["steps"] or 0 for st in stages),
        "name": "lgg_unet_default",
        "inference": settings,
        "validation": {"chosen": best, "raw": raw, "grid_rows": choice["grid_rows"],
                       "candidates": {path.name: round(c["chosen"]["patient_dice_mean"], 4)
                                      for path, c in choices.items()}},
        "test": {"summary": test["summary"], "summary_raw": test_raw["summary"], "patients": test["patients"]},
        "source_checkpoint": str(checkpoint.resolve()),
        "published": {"buda2019_patient_dice_mean_cv": 0.82, "expert_readers_dice": "0.84 +- 0.02",
                      "seed_slice_dice_iou": {"bce_dice": [0.7752, 0.7358], "weighted_bce_dice": [0.7296, 0.6945]}},
    })
    save_checkpoint(out, loaded.model, config=loaded.config, meta=meta, half=True)
    card = {"config": loaded.config, "meta": meta}
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2, default=str))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")
    print(json.dumps({"inference": settings, "validation": best, "test": test["summary"],
                      "test_raw": test_raw["summary"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
