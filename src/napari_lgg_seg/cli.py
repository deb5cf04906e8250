"""Command line: ``napari-lgg-seg segment | train | evaluate | eda | demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from .console import CLIError, inference_settings, load_inference_model  # noqa: F401 (re-exported)
from .console import line_break as _line_break
from .console import progress_line as _progress_line


def config_option(name: str):
    """An argparse ``type`` for an option that sets the ``TrainConfig`` field ``name``: parsed and range-checked
    by ``config.parse_field`` (the check config files and the dock use), refused at parse time (exit 2)."""

    def parse(text: str):
        from .config import ConfigError, parse_field

        try:
            return parse_field(name, text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    parse.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return parse


# options that --resume does not apply: the resumed run's saved config defines the experiment
RESUME_IGNORED = ("batch_size", "lr", "steps_per_epoch", "init_weights", "config")


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
    if args.resume:
        ignored = [f"--{k.replace('_', '-')}" for k in RESUME_IGNORED if getattr(args, k, None) is not None]
        if ignored:
            print(f"warning: {', '.join(ignored)} ignored: --resume continues the run in {out} with its saved "
                  "config (only --epochs, --device, --precision, --num-threads and --cache-dir apply); start a new "
                  "run (another --out, or --init-weights) to change the others.", file=sys.stderr, flush=True)
    last_print = 0.0
    # on --resume the saved run's config is used; --epochs may extend or shorten it
    epochs = args.epochs if args.resume else None
    for report in train(config, args.data, out, resume=args.resume, epochs=epochs, overwrite=args.overwrite,
                        resume_overrides=_resume_overrides(args) if args.resume else None):
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
            print(f"{'stopped' if report['stopped'] else 'finished'}; {report['summary']}", flush=True)
    return 0


def _resume_overrides(args: argparse.Namespace) -> dict:
    """The options a resumed run does apply (hardware and caching; they do not change the experiment)."""
    return {k: getattr(args, k) for k in ("device", "precision", "num_threads", "cache_dir")
            if getattr(args, k, None) is not None}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import check_results_out, evaluate_folders, write_results

    if args.out is not None:
        check_results_out(args.out, args.overwrite)  # before any work
    result = evaluate_folders(args.data, args.weights, patients=args.patients, device=args.device,
                              batch_size=args.batch_size, tta=args.tta,
                              progress=lambda text: _progress_line(text), conditions=args.conditions)
    if args.out is not None:
        write_results(args.out, result, overwrite=args.overwrite)
    print()
    print(json.dumps(result["summary"], indent=2))
    for condition, summary in result["conditions"].items():
        print(f"{condition}: per-patient Dice mean {summary['patient_dice_mean']:.4f} "
              f"(intact {result['summary']['patient_dice_mean']:.4f}; lost {summary['patient_dice_drop_mean']:.4f} "
              f"on average, {summary['patient_dice_drop_max']:.4f} at worst)")
    return 0


def _input_folders(path: Path) -> list[Path]:
    from .io import TIFF_SUFFIXES, find_patient_folders, is_patient_folder, load_patient, parse_slice_name

    if not path.exists():
        raise CLIError(f"{path}: no such file or folder.")
    if path.is_file():
        if parse_slice_name(path.name) is None:
            raise CLIError(f"{path}: not a patient folder, a dataset root or a <PATIENT>_<k>.tif slice.")
        path = path.parent
    if is_patient_folder(path):
        return [path]
    folders = find_patient_folders(path)
    if not folders and any(q.suffix.lower() in TIFF_SUFFIXES for q in path.iterdir()):
        load_patient(path)  # TIFFs but no image slices: raises the reader's precise message
    if not folders:
        raise CLIError(
            f"{path}: no LGG patient folders found; expected <PATIENT>_<k>.tif slices in it, or a folder "
            "of such patient folders."
        )
    return folders


def _same_or_nested(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _segmented_from(target: Path, folder: Path) -> bool:
    """True when ``target`` is a finished ``segment`` output made from patient ``folder``: its sidecar names that
    folder and it holds one mask per image slice of it."""
    from ._reader import mask_folder_source
    from .io import parse_slice_name

    source = mask_folder_source(target)
    if source is None or source.resolve() != folder.resolve():
        return False

    def numbers(path: Path, masks: bool) -> set[int]:
        parsed = (parse_slice_name(q.name) for q in path.iterdir())
        return {s.index for s in parsed if s is not None and s.is_mask == masks}

    return numbers(target, True) == numbers(folder, False)


def cmd_segment(args: argparse.Namespace) -> int:
    from .inference import postprocess, predict_any_size
    from .io import (
        LGGFormatError,
        folder_patient_id,
        is_patient_folder,
        load_patient,
        output_name_problem,
        sanitize_name,
        write_patient_folder,
    )
    from .metrics import dice

    folders = _input_folders(Path(args.input))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder.")
    targets: dict[Path, Path] = {}
    skipped: set[Path] = set()
    for folder in folders:
        pid = folder_patient_id(folder) or folder.name
        problem = output_name_problem(pid)
        if problem:
            raise CLIError(f"{folder}: {problem}. Nothing was written.")
        target = out / sanitize_name(pid)
        if target in targets:
            raise CLIError(f"{targets[target]} and {folder} both hold patient {pid}; segment them separately.")
        if _same_or_nested(target, folder):
            raise CLIError(f"--out {out} would write into the input patient folder {folder}; choose another --out.")
        if is_patient_folder(target):
            raise CLIError(f"{target} holds image slices; segment never replaces images. Choose another --out.")
        if target.exists() and args.skip_existing:
            if not _segmented_from(target, folder):
                raise CLIError(f"{target} exists but is not segment's output for {folder}; it is left as it is. "
                               "Choose another --out.")
            skipped.add(folder)
        elif target.exists() and not args.overwrite:
            raise CLIError(f"{target} already exists; pass --skip-existing (keep it, do the others), --overwrite "
                           "(replace it) or choose another --out.")
        targets[target] = folder
    if len(skipped) == len(folders):
        print(f"all {len(folders)} patients are already in {out}; nothing to do", file=sys.stderr, flush=True)
        return 0
    loaded, device, weights = load_inference_model(args.weights, args.device)
    settings, tta = inference_settings(loaded, args.threshold, args.tta)
    print(f"model {weights} on {device}; threshold {settings.threshold:g}, tta {'on' if tta else 'off'}, "
          f"min lesion {settings.min_lesion_voxels} voxels, keep largest {settings.keep_largest}, "
          f"fill holes {settings.fill_holes}", file=sys.stderr, flush=True)
    failures: list[str] = []
    n = len(folders)
    for i, folder in enumerate(folders, 1):
        if folder in skipped:
            print(f"[{i}/{n}] {folder.name}: already segmented in {out}, skipped", file=sys.stderr, flush=True)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patient = load_patient(folder)
        except LGGFormatError as err:
            if n == 1:
                raise
            print(f"napari-lgg-seg segment: skipped {folder.name}: {err}", file=sys.stderr, flush=True)
            failures.append(folder.name)
            continue
        for note in patient.warnings:
            print(f"warning: {patient.patient_id}: {note}", file=sys.stderr)
        pid = patient.patient_id

        shown: list[int] = []

        def progress(done: int, total: int, pid: str = pid, i: int = i, shown: list[int] = shown) -> None:
            if shown[-1:] != [done]:
                shown.append(done)
                _progress_line(f"[{i}/{n}] {pid}: {done}/{total} slices")

        probs = predict_any_size(loaded.model, patient.images, size=loaded.training_size, device=device,
                                 batch_size=args.batch_size, tta=tta, progress=progress)
        mask = postprocess(probs, settings)
        sidecar = {
            "patient_id": pid,
            "source_folder": str(folder.resolve()),
            "model": str(Path(weights).resolve()),
            "threshold": settings.threshold,
            "tta": tta,
            "min_lesion_voxels": settings.min_lesion_voxels,
            "keep_largest": settings.keep_largest,
            "fill_holes": settings.fill_holes,
            "tumour_voxels": int(mask.sum()),
            "tool": "napari-lgg-seg segment",
        }
        target = write_patient_folder(out, pid, mask, slice_numbers=patient.slice_numbers, masks_only=True,
                                      overwrite=args.overwrite, sidecar=sidecar, source_folder=folder)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        line = (f"{pid}: {patient.num_slices} slices, {int(mask.sum())} tumour voxels in "
                f"{int(mask.reshape(len(mask), -1).any(axis=1).sum())} slices")
        if patient.masks is not None:
            line += f", Dice vs ground truth {dice(mask, patient.masks):.3f}"
        print(f"{line} -> {target}", flush=True)
    if failures:
        raise CLIError(f"{len(failures)} of {n} patients could not be read ({', '.join(failures[:5])}"
                       f"{', ...' if len(failures) > 5 else ''}); the others were written to {out}.")
    written = n - len(skipped)
    print(f"masks of {written} patient{'s' if written != 1 else ''} written to {out}"
          f"{f' ({len(skipped)} already there, skipped)' if skipped else ''}", file=sys.stderr, flush=True)
    return 0


def cmd_eda(args: argparse.Namespace) -> int:
    from .eda import run_eda

    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"{root}: no such folder.")
    result = run_eda(root, Path(args.out))
    print(f"EDA written to {result if isinstance(result, (str, Path)) else args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, headless=args.headless, device=args.device, overwrite=args.overwrite)


def _split_test_patients(path: Path) -> list[str]:
    """The 'test' patient ids of a run's split.json."""
    try:
        patients = json.loads(path.read_text())["test"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CLIError(f"{path}: not a split.json with a 'test' list of patient ids.") from err
    if not isinstance(patients, list):
        raise CLIError(f"{path}: 'test' is not a list of patient ids.")
    return [str(p) for p in patients]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-lgg-seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train or fine-tune the U-Net")
    p.add_argument("--data", nargs="+", required=True, help="dataset roots in the LGG layout")
    p.add_argument("--config", help="TOML config (training/configs/*.toml)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that holds checkpoints (*.pt), replacing them")
    p.add_argument("--epochs", type=config_option("epochs"))
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=config_option("steps_per_epoch"))
    p.add_argument("--batch-size", dest="batch_size", type=config_option("batch_size"))
    p.add_argument("--lr", type=config_option("lr"))
    p.add_argument("--device", type=config_option("device"))
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--num-threads", dest="num_threads", type=config_option("num_threads"))
    p.add_argument("--init-weights", dest="init_weights", help="start from these weights (fine-tuning)")
    p.add_argument("--cache-dir", dest="cache_dir", help="folder for decoded-slice caches reused across runs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="per-patient and summary metrics of a model")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--patients", nargs="*", help="only these patient ids (e.g. a run's test split)")
    p.add_argument("--split", help="split.json of a run; evaluates its 'test' patients")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", dest="batch_size", type=config_option("val_batch_size"), default=16)
    p.add_argument("--tta", action="store_true", default=None)
    p.add_argument("--out", help="folder for per_patient.csv and summary.json")
    p.add_argument("--overwrite", action="store_true", help="replace per_patient.csv and summary.json in --out")
    p.add_argument("--conditions", nargs="+", default=["intact", "flair_only", "no_post"],
                   choices=["intact", "flair_only", "no_post", "no_pre"],
                   help="also score with missing sequences simulated (FLAIR copied into pre+post / post / pre)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("segment", help="segment patient folders and write masks in the dataset layout")
    p.add_argument("input", help="a patient folder or a dataset root (a folder of patient folders)")
    p.add_argument("--out", required=True, help="output root: masks go to OUT/<PATIENT>/<PATIENT>_<k>_mask.tif")
    p.add_argument("--weights", help="checkpoint (default: the installed model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--batch-size", dest="batch_size", type=config_option("val_batch_size"), default=16)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation (default: the model card's choice)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model card's choice)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing patient folders in --out")
    existing.add_argument("--skip-existing", dest="skip_existing", action="store_true",
                          help="keep the patients already segmented into --out (resume a run) and do the others")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("eda", help="exploratory data analysis of a dataset root (plots and tables)")
    p.add_argument("root", help="dataset root in the LGG layout")
    p.add_argument("--out", required=True, help="folder for the report")
    p.set_defaults(func=cmd_eda)

    p = sub.add_parser("demo", help="open the phantom sample in napari and segment it (headless without display)")
    p.add_argument("--out", default="demo_output", help="folder for the headless demo's masks and overview.png")
    p.add_argument("--headless", action="store_true", help="do not open napari even if a display is available")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's output in --out")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-lgg-seg`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .io import LGGFormatError
    from .model import CheckpointError

    try:
        if getattr(args, "split", None):
            args.patients = _split_test_patients(Path(args.split))
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return args.func(args)
    except (CLIError, LGGFormatError, CheckpointError, OSError, ValueError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{_line_break()}napari-lgg-seg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_line_break()}interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
