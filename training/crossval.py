"""Cross-validation of a training recipe on the non-test patients: how recipes were compared and chosen.

Seven validation patients cannot rank recipes this close (see training/README.md), so each recipe is trained
once per fold of the non-test patients (the test patients of ``--split-config`` are never loaded) and scored on
the held-out fold, intact and with missing sequences simulated (pre/post replaced by FLAIR as the dataset does).
``summarize`` pools the out-of-fold patients of all folds and also grid-searches post-processing on them.

    python training/crossval.py run --data ../shared/lgg/kaggle_3m --config training/configs/default.toml \\
        --folds 3 --fold 0 --out ~/runs/cv/default [--set missing_both=0 ...]
    python training/crossval.py summarize ~/runs/cv/default [--out ~/runs/cv/default/summary.json]
    python training/crossval.py table training/results/crossval/*.json     # the README's table
    python training/crossval.py pack --data ../shared/lgg/kaggle_3m --size 128 --out /tmp/lgg128
        # a resized copy of the non-test patients in the dataset layout (for a machine without the data);
        # training at image_size 128 reads it exactly as it reads the 256-px originals

Scores are computed at the training size (``image_size``) against masks resized the same way; the final
figures of a shipped model come from ``napari-lgg-seg evaluate`` at the slices' own size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from napari_lgg_seg.config import TrainConfig
from napari_lgg_seg.data import SliceStore, index_patients, split_patients
from napari_lgg_seg.evaluation import choose_postprocessing
from napari_lgg_seg.inference import resolve_device
from napari_lgg_seg.io import atomic_write_text
from napari_lgg_seg.model import load_model
from napari_lgg_seg.training import evaluate_store, train

CONDITIONS = ("intact", "flair_only", "no_post")


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def recipe(config_path: str, overrides: list[str]) -> TrainConfig:
    """The config file with ``key=value`` overrides (TOML values)."""
    config = TrainConfig.from_file(config_path)
    changes = {}
    for item in overrides:
        key, _, value = item.partition("=")
        changes[key.strip()] = _parse_value(value.strip())
    config = TrainConfig.from_dict({**config.to_dict(), **changes})
    config.validate()
    return config


def non_test_patients(patient_ids: list[str], split_config: TrainConfig) -> tuple[list[str], list[str]]:
    """(non-test, test) patients: the test patients are those of ``split_config``'s seeded split."""
    split = split_patients(patient_ids, val_fraction=split_config.val_fraction,
                           test_fraction=split_config.test_fraction, seed=split_config.seed,
                           test=split_config.test_patients)
    test = split["test"]
    return sorted(p for p in patient_ids if p not in test), test


def folds_of(patients: list[str], folds: int, seed: int = 0) -> list[list[str]]:
    """A seeded partition of ``patients`` into ``folds`` near-equal folds."""
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    return [sorted(order[k::folds]) for k in range(folds)]


def run_fold(args: argparse.Namespace) -> int:
    config = recipe(args.config, args.set)
    split_config = TrainConfig.from_file(args.split_config)
    folders = index_patients(args.data)
    # a packed copy holds the non-test patients only: the split is computed on the names it was packed from
    all_ids = json.loads(Path(args.data[0], "patients.json").read_text())["all"] if Path(
        args.data[0], "patients.json").is_file() else list(folders)
    pool, test = non_test_patients(all_ids, split_config)
    folds = folds_of(pool, args.folds, args.fold_seed)
    val = folds[args.fold]
    train_ids = [p for p in pool if p not in val]
    config = dataclasses.replace(config, name=f"{config.name}-fold{args.fold}", train_patients=train_ids,
                                 val_patients=val, test_patients=[], val_fraction=0.0, test_fraction=0.0,
                                 val_conditions=[])
    out = Path(args.out).expanduser() / f"fold_{args.fold}"
    t0 = time.perf_counter()
    for report in train(config, args.data, out, resume=args.resume and (out / "last.pt").is_file()):
        if report["kind"] == "epoch":
            print(f"fold {args.fold} epoch {report['epoch']}: loss {report['train_loss']:.4f} "
                  f"val Dice {report.get('val_patient_dice_mean', float('nan')):.4f} "
                  f"({report['epoch_seconds']:.0f} s)", flush=True)
    loaded = load_model(out / "last.pt")
    device = resolve_device(config.device)
    store = SliceStore.load(folders, val, config.cache_dir or None, image_size=config.image_size)
    result = evaluate_store(loaded.model.to(device), store, device, precision=config.precision,
                            batch_size=config.val_batch_size, threshold=0.5, keep_probabilities=True,
                            conditions=CONDITIONS)
    rows = {c: {s.patient_id: s.volume_dice for s in (result["patients"] if c == "intact" else
                                                       result["conditions"][c]["patients"]) if s.truth_voxels}
            for c in CONDITIONS}
    np.savez_compressed(out / "val_probabilities.npz",
                        **{pid: p.astype(np.float16) for pid, p in result["probabilities"].items()})
    payload = {"fold": args.fold, "val": val, "train": train_ids, "test_excluded": test, "config": config.to_dict(),
               "summary": {c: (result["summary"] if c == "intact" else result["conditions"][c]["summary"])
                           for c in CONDITIONS},
               "patient_dice": rows, "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "fold.json", json.dumps(payload, indent=2))
    print(json.dumps({c: round(payload["summary"][c]["patient_dice_mean"], 4) for c in CONDITIONS}), flush=True)
    return 0


def summarize_run(args: argparse.Namespace) -> int:
    root = Path(args.run).expanduser()
    folds = [json.loads(p.read_text()) for p in sorted(root.glob("fold_*/fold.json"))]
    if not folds:
        print(f"no fold_*/fold.json in {root}", file=sys.stderr)
        return 1
    result: dict = {"folds": len(folds), "patients": sum(len(f["val"]) for f in folds)}
    for c in CONDITIONS:
        dice = np.array([d for f in folds for d in f["patient_dice"][c].values()])
        result[c] = {"patient_dice_mean": float(dice.mean()), "patient_dice_median": float(np.median(dice)),
                     "below_0.5": int((dice < 0.5).sum()), "scored": int(dice.size)}
    drops = np.array([f["patient_dice"]["intact"][p] - f["patient_dice"]["flair_only"][p]
                      for f in folds for p in f["patient_dice"]["intact"]])
    result["flair_only_drop"] = {"mean": float(drops.mean()), "max": float(drops.max())}
    result["empty_slice_fp_rate"] = float(np.mean([f["summary"]["intact"]["empty_slice_fp_rate"] for f in folds]))
    if args.postprocessing:
        folders = index_patients(args.data) if args.data else {}
        probabilities, truths = {}, {}
        for f in folds:
            config = TrainConfig.from_dict(f["config"])
            store = SliceStore.load(folders, f["val"], image_size=config.image_size)
            with np.load(root / f"fold_{f['fold']}" / "val_probabilities.npz") as z:
                for i, pid in enumerate(store.patient_ids):
                    probabilities[pid] = z[pid].astype(np.float32)
                    truths[pid] = store.masks[store.patient_slices(i)]
        settings, table = choose_postprocessing(probabilities, truths, thresholds=(0.4, 0.5, 0.6),
                                                min_sizes=(0, 100, 500))
        result["postprocessing"] = {"chosen": table[0], "raw": next(
            r for r in table if r["threshold"] == 0.5 and not r["min_lesion_voxels"] and not r["keep_largest"]
            and not r["fill_holes"]), "top": table[:5]}
    result["fold_seconds"] = [round(f["seconds"]) for f in folds]
    text = json.dumps(result, indent=2)
    print(text)
    atomic_write_text(Path(args.out) if args.out else root / "summary.json", text)
    return 0


def table(args: argparse.Namespace) -> int:
    """The README's comparison table from ``summarize`` outputs (``name=path.json`` or paths)."""
    print("| recipe (3-fold CV, 53 non-test patients) | intact: mean / median / < 0.5 | FLAIR-only: mean / median "
          "/ < 0.5 | no post-contrast: mean | FLAIR-only loss: mean / worst | empty-slice FP | best post-processing "
          "(mean) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for item in args.summaries:
        name, _, path = item.rpartition("=")
        s = json.loads(Path(path).read_text())
        i, f, n = s["intact"], s["flair_only"], s["no_post"]
        best = s.get("postprocessing", {}).get("chosen")
        post = (f"t {best['threshold']}, min {best['min_lesion_voxels']}, largest {'yes' if best['keep_largest'] else 'no'}, "
                f"holes {'yes' if best['fill_holes'] else 'no'} ({best['patient_dice_mean']:.3f})" if best else "")
        print(f"| {name or Path(path).stem} | {i['patient_dice_mean']:.3f} / {i['patient_dice_median']:.3f} / "
              f"{i['below_0.5']} | {f['patient_dice_mean']:.3f} / {f['patient_dice_median']:.3f} / {f['below_0.5']} | "
              f"{n['patient_dice_mean']:.3f} | {s['flair_only_drop']['mean']:.3f} / {s['flair_only_drop']['max']:.3f} "
              f"| {s['empty_slice_fp_rate']:.3f} | {post} |")
    return 0


def pack(args: argparse.Namespace) -> int:
    import tifffile

    from napari_lgg_seg.data import load_patient_cached, resize_pair

    split_config = TrainConfig.from_file(args.split_config)
    folders = index_patients(args.data)
    pool, test = non_test_patients(list(folders), split_config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for pid in pool:
        patient = load_patient_cached(folders[pid])
        images, masks = resize_pair(patient.images, patient.masks, args.size)
        (out / pid).mkdir(exist_ok=True)
        for k, image, mask in zip(patient.slice_numbers, images, masks):
            tifffile.imwrite(out / pid / f"{pid}_{k}.tif", image, compression="zlib", predictor=True)
            tifffile.imwrite(out / pid / f"{pid}_{k}_mask.tif", mask * np.uint8(255), compression="zlib")
    atomic_write_text(out / "patients.json", json.dumps({"all": sorted(folders), "packed": pool, "size": args.size}))
    print(f"packed {len(pool)} patients at {args.size} px into {out} (left out {len(test)} test patients)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score one fold")
    r.add_argument("--data", nargs="+", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (TOML values)")
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--fold", type=int, required=True)
    r.add_argument("--fold-seed", type=int, default=0)
    r.add_argument("--out", required=True)
    r.add_argument("--resume", action="store_true")
    s = sub.add_parser("summarize", help="pool the folds of a run folder")
    s.add_argument("run")
    s.add_argument("--data", nargs="*", default=[], help="with --postprocessing: the data the folds were scored on")
    s.add_argument("--postprocessing", action="store_true", help="grid-search post-processing on the pooled folds")
    s.add_argument("--out", default=None)
    t = sub.add_parser("table", help="Markdown table of summarize outputs")
    t.add_argument("summaries", nargs="+", metavar="[NAME=]SUMMARY.json")
    p = sub.add_parser("pack", help="resized copy of the non-test patients")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", required=True)
    for a in (r, p):
        a.add_argument("--split-config", default=str(Path(__file__).with_name("configs") / "default.toml"),
                       help="the config whose seeded split defines the test patients (never loaded here)")
    args = parser.parse_args(argv)
    return {"run": run_fold, "summarize": summarize_run, "pack": pack, "table": table}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
