"""Turn a training run of the default recipe into the shipped default model (fp16 + model card).

The recipe has a fixed schedule, so nothing is chosen here on any patient: the run's ``last.pt`` is the model,
and the inference settings are given (chosen beforehand by cross-validation on the non-test patients,
``training/crossval.py``; training/README.md has the table).

1. the expected accuracy: ``--test-run`` (the same recipe trained WITHOUT its test patients; by default the run
   itself) is evaluated once on its test patients, intact and with missing sequences simulated;
2. the model of ``--run`` (e.g. the same recipe on all patients) is written in fp16 with its card into the package.
   The card names data roots and start weights by name only (no path of the machine that trained it) and says
   which figures are whose.

    python training/make_default_model.py --run ~/runs/default --data ../shared/lgg/kaggle_3m
    python training/make_default_model.py --run ~/runs/default_all --test-run ~/runs/default \\
        --data ../shared/lgg/kaggle_3m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_lgg_seg.evaluation import CONDITIONS, evaluate_folders
from napari_lgg_seg.io import atomic_write_text
from napari_lgg_seg.model import DEFAULT_MODEL_PATH, load_model, save_checkpoint

# chosen by 3-fold cross-validation on the 53 non-test patients (training/README.md): keeping the largest 3D
# component and filling holes won for every recipe tried; thresholds 0.4 / 0.5 / 0.6 were within 0.001
SETTINGS = {"tta": False, "threshold": 0.5, "min_lesion_voxels": 0, "keep_largest": True, "fill_holes": True}
PATH_KEYS = ("init_weights", "cache_dir")


def portable(config: dict, meta: dict) -> tuple[dict, dict]:
    """Config and meta with the training machine's paths reduced to names (data roots, start weights)."""
    config = {k: (Path(v).name if k in PATH_KEYS and v else v) for k, v in config.items()}
    meta = dict(meta)
    meta["data_roots"] = [Path(r).name for r in meta.get("data_roots", [])]
    if meta.get("init_weights"):
        meta["init_weights"] = Path(meta["init_weights"]).name
    return config, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run folder of the model to ship (its last.pt)")
    parser.add_argument("--test-run", default=None,
                        help="run of the same recipe trained without its test patients (default: --run)")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--checkpoint", default="last.pt", help="checkpoint name in the run folders")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--force", action="store_true", help="replace an existing model at --out")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    run = Path(args.run).expanduser()
    test_run = Path(args.test_run).expanduser() if args.test_run else run
    out = Path(args.out)
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {text}", file=sys.stderr, flush=True)

    if out.exists() and not args.force:
        parser.error(f"{out} exists; pass --force to replace it")
    shipped, tested = load_model(run / args.checkpoint), load_model(test_run / args.checkpoint)
    if shipped.config.get("image_size") != tested.config.get("image_size"):
        parser.error("the two runs were trained at different image sizes: not the same recipe")
    test_patients = tested.meta["split"]["test"]
    if not test_patients:
        parser.error(f"{test_run} kept no test patients: pass --test-run, a run of the recipe without them")
    post = {k: SETTINGS[k] for k in ("threshold", "min_lesion_voxels", "keep_largest", "fill_holes")}
    test = evaluate_folders(args.data, test_run / args.checkpoint, patients=test_patients, device=args.device,
                            tta=SETTINGS["tta"], postprocessing=post, conditions=CONDITIONS)
    test_raw = evaluate_folders(args.data, test_run / args.checkpoint, patients=test_patients, device=args.device,
                                tta=False, postprocessing={"threshold": 0.5, "min_lesion_voxels": 0,
                                                           "keep_largest": False, "fill_holes": False},
                                conditions=("intact",))
    log(f"test ({test_run.name}): {json.dumps(test['summary'])}")
    config, meta = portable(shipped.config, shipped.meta)
    _, tested_meta = portable(tested.config, tested.meta)
    same = test_run.resolve() == run.resolve()
    meta.update({
        "name": "lgg_unet_default",
        "inference": dict(SETTINGS),
        "inference_chosen_by": "3-fold cross-validation on the 53 non-test patients (training/crossval.py)",
        "test": {"summary": test["summary"], "summary_raw": test_raw["summary"], "conditions": test["conditions"],
                 "patients": test["patients"], "patient_ids": test_patients},
        "expected_accuracy": (
            "'test' is this model's own score on its held-out test patients (never used for training or any choice)"
            if same else
            f"'test' is NOT this model's score: this model was trained on all patients; 'test' is the score of "
            f"the same recipe and number of steps trained without the test patients ({test_run.name}, "
            f"{tested_meta.get('epochs_done')} epochs, {tested_meta.get('steps_done')} steps), the accuracy to "
            f"expect on unseen patients"),
        "test_run": {"run": test_run.name, "split": tested_meta["split"], "hardware": tested_meta.get("hardware"),
                     "wall_seconds": tested_meta.get("wall_seconds"), "steps_done": tested_meta.get("steps_done")},
        "source_checkpoint": f"{run.name}/{args.checkpoint}",
        "published": {"buda2019_patient_dice_mean_cv": 0.82, "expert_readers_dice": "0.84 +- 0.02",
                      "seed_slice_dice_iou": {"bce_dice": [0.7752, 0.7358], "weighted_bce_dice": [0.7296, 0.6945]}},
    })
    save_checkpoint(out, shipped.model, config=config, meta=meta, half=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"config": config, "meta": meta}, indent=2, default=str))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")
    print(json.dumps({"inference": SETTINGS, "test": test["summary"], "conditions": test["conditions"],
                      "test_raw": test_raw["summary"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
