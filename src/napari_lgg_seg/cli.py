"""Command line: ``napari-lgg-seg segment | train | evaluate | eda | demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path


class CLIError(Exception):
    """An error with a message for the user (printed without traceback, exit code 2)."""


def _progress_line(text: str) -> None:
    stream = sys.stderr
    if stream.isatty():
        stream.write("\r" + text[:120].ljust(120))
    else:
        stream.write(text + "\n")
    stream.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .training import train

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for key in ("epochs", "batch_size", "lr", "device", "steps_per_epoch", "num_threads", "init_weights",
                "cache_dir", "precision"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, value)
    out = Path(args.out)
    if out.exists() and (out / "last.pt").exists() and not args.resume:
        raise CLIError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
    last_print = 0.0
    for report in train(config, args.data, out, resume=args.resume):
        kind = report["kind"]
        if kind == "start":
            print(f"training on {report['train_slices']} slices, {report['epochs']} epochs x "
                  f"{report['steps_per_epoch']} steps, device {report['device']}, data loaded in "
                  f"{report['load_seconds']:.1f} s (starting at epoch {report['start_epoch'] + 1})", flush=True)
        elif kind == "step" and time.perf_counter() - last_print > 5:
            last_print = time.perf_counter()
            _progress_line(f"epoch {report['epoch']} step {report['batch']}/{report['steps_per_epoch']} "
                           f"loss {report['loss']:.4f} lr {report['lr']:.2e} {report['slices_per_s']:.1f} slices/s "
                           f"data {100 * report['data_share']:.1f}%")
        elif kind == "epoch":
            keys = ("train_loss", "val_loss", "val_slice_dice", "val_slice_iou", "val_tumour_slice_dice",
                    "val_patient_dice_mean", "val_empty_slice_fp_rate")
            text = " ".join(f"{k}={report[k]:.4f}" for k in keys if k in report)
            print(f"\nepoch {report['epoch']}: {text} ({report['epoch_seconds']:.0f} s)"
                  f"{' *best*' if report['improved'] else ''}", flush=True)
        elif kind == "done":
            print(f"{'stopped' if report['stopped'] else 'finished'}; best val per-patient Dice "
                  f"{report['best']:.4f}; checkpoints in {report['out_dir']}", flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_folders

    result = evaluate_folders(args.data, args.weights, patients=args.patients, device=args.device,
                              batch_size=args.batch_size, tta=args.tta, out=args.out,
                              progress=lambda text: _progress_line(text))
    print()
    print(json.dumps(result["summary"], indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-lgg-seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train or fine-tune the U-Net")
    p.add_argument("--data", nargs="+", required=True, help="dataset roots in the LGG layout")
    p.add_argument("--config", help="TOML config (training/configs/*.toml)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--num-threads", dest="num_threads", type=int)
    p.add_argument("--init-weights", dest="init_weights", help="start from these weights (fine-tuning)")
    p.add_argument("--cache-dir", dest="cache_dir", help="folder for decoded-slice caches reused across runs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="per-patient and summary metrics of a model")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--patients", nargs="*", help="only these patient ids (e.g. a run's test split)")
    p.add_argument("--split", help="split.json of a run; evaluates its 'test' patients")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--tta", action="store_true", default=None)
    p.add_argument("--out", help="folder for per_patient.csv and summary.json")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-lgg-seg`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "split", None):
        args.patients = json.loads(Path(args.split).read_text())["test"]
    from .io import LGGFormatError
    from .model import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (CLIError, LGGFormatError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"\nnapari-lgg-seg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
