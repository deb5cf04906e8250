"""Training in a child process, for the Train dock: the GUI process only reads small report dicts.

``python -m napari_lgg_seg.train_process`` reads one job (JSON) from its first stdin line, runs
``training.train`` (the engine the CLI runs) and writes each report as a JSON line to stdout. A ``stop`` line on
stdin, stdin closing (the parent has gone) or SIGINT stops it after the current batch, as ``should_stop`` does, so
``resume`` continues exactly. An error is written as a ``{"kind": "error"}`` report (traceback on stderr) and the
exit status is 1. :class:`TrainProcess` starts such a child and yields its reports.

The Train dock's decisions live here too: its data list (:class:`DataRoots`), the "Start from" choices, the jobs of
a new or resumed run (:func:`new_run_job`, :func:`resume_job`) and what a run's reports mean for the dock
(:class:`RunMonitor`). No Qt here; torch is imported only in the child (and by :func:`fit_to_start_model`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

NICENESS = 10  # the child's scheduling priority below the napari process's (CPU time goes to the GUI first)
RUNS_HOME = Path("~/napari-lgg-seg-runs")
SCRATCH, DEFAULT, CURRENT, FILE = "scratch", "default", "current", "file"  # kinds of "Start from" choices
# the dock's settings that are ``TrainConfig`` fields of the same name
CONFIG_SETTINGS = ("epochs", "steps_per_epoch", "batch_size", "lr", "loss", "pos_weight", "val_fraction", "device")


class RunRefused(ValueError):
    """A run cannot start or resume; the message says why (shown as it is)."""


def checkpoint_training_size(path: str | None) -> int:
    """The slice size a checkpoint was trained on (``model.training_size`` of its config)."""
    from .model import read_checkpoint, training_size

    if not path:
        return training_size(None)
    try:
        return training_size(read_checkpoint(path).get("config"))
    except Exception:  # unreadable here: training reports the real problem when it loads the weights
        return training_size(None)


def fit_to_start_model(config, crops: bool):
    """Fine-tuning keeps the start model's training size; 128-px crops only where slices are large enough."""
    import dataclasses

    size = checkpoint_training_size(config.init_weights or None)
    crop = 128 if crops and size >= 160 else None
    return dataclasses.replace(config, image_size=size, crop_size=crop, tumour_fraction=0.5 if crop else None)


def read_history(out: str | os.PathLike) -> list[dict]:
    """Epoch rows of a run's ``metrics.csv`` (numbers as floats); [] when there is none."""

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return text

    try:
        with open(Path(out) / "metrics.csv", newline="") as f:
            return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def default_output_folder() -> Path:
    """``~/napari-lgg-seg-runs/<timestamp>`` (not created)."""
    return RUNS_HOME.expanduser() / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def has_run(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a run that can resume (a ``last.pt``)."""
    return (Path(out) / "last.pt").is_file()


def run_progress(out: str | os.PathLike) -> tuple[int, int] | None:
    """``(epochs done, epochs planned)`` of the run in ``out``, or None when it holds no run (no ``last.pt``)."""
    if not has_run(out):
        return None
    out = Path(out)
    done = len(read_history(out))
    try:
        planned = int(json.loads((out / "config.json").read_text()).get("epochs", done))
    except (OSError, ValueError, TypeError, AttributeError):
        planned = done
    return done, planned


def describe_run(out: str | os.PathLike) -> tuple[int, str] | None:
    """``(epochs planned, status line)`` of the run in ``out``, or None when it holds no run."""
    progress = run_progress(out)
    if progress is None:
        return None
    done, planned = progress
    more = "Resume continues it" if done < planned else "Raise Epochs and Resume to train it further"
    return planned, f"{out} holds a run: {done} of {planned} epochs done. {more}."


def describe_data_root(folder: str | os.PathLike) -> str | None:
    """'FOLDER (N patients, M with masks)' of a dataset root (or a patient folder); None when it holds no patient."""
    from .io import find_patient_folders

    folder = Path(folder).expanduser()
    patients = find_patient_folders(folder) if folder.is_dir() else []
    if not patients:
        return None
    labelled = sum(1 for p in patients if any(f.name.endswith(("_mask.tif", "_mask.tiff")) for f in p.iterdir()))
    return f"{folder} ({len(patients)} patients, {labelled} with masks)"


def check_patients(roots: list[str], val_fraction: float) -> str | None:
    """Why the data roots cannot train with this validation share (None when they can)."""
    from .io import find_patient_folders

    count = sum(len(find_patient_folders(root)) for root in roots)
    if count == 0:
        return "The data folders hold no patients."
    if val_fraction > 0 and count < 2:
        return ("Only one patient: set the validation share to 0 (no validation) or add more patients; "
                "validation needs patients of its own.")
    return None


class DataRoots:
    """The dock's training data: dataset roots (or patient folders), resolved path -> description."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def paths(self) -> list[str]:
        return list(self.labels)

    def choices(self) -> list[tuple[str, str]]:
        """``(description, path)`` of each folder, for a list widget."""
        return [(label, path) for path, label in self.labels.items()]

    def add(self, path: str | os.PathLike) -> str | None:
        """Add a folder; why it was not added (it holds no patients), or None."""
        folder = Path(path).expanduser()
        key = os.fspath(folder.resolve()) if folder.exists() else os.fspath(folder)
        if key not in self.labels:
            label = describe_data_root(folder)
            if label is None:
                return f"{folder}: no patient folders (<PATIENT>/<PATIENT>_<k>.tif) found; not added."
            self.labels[key] = label
        return None

    def remove(self, paths) -> None:
        for path in paths:
            self.labels.pop(path, None)


class StartModels:
    """The "Start from" list: entries ``(label, (kind, path))`` of the default model, the Segment dock's current
    one, other models, checkpoint files chosen in the dock (each path once), then scratch (random weights)."""

    def __init__(self) -> None:
        self.files: list[str] = []

    def choices(self, default: str | os.PathLike | None, current: str | os.PathLike | None,
                models: list[tuple[str, str]]) -> list[tuple[str, tuple[str, str | None]]]:
        """The entries, given the default and current model paths (or None) and other ``(label, path)``."""
        entries = [("Default model", DEFAULT, default)] if default else []
        entries += [(f"Current model ({Path(current).name})", CURRENT, current)] if current else []
        entries += [(label, FILE, path) for label, path in [*models, *((Path(f).name, f) for f in self.files)]]
        unique: dict[str, tuple] = {}
        for label, kind, path in entries:
            unique.setdefault(os.fspath(path), (label, (kind, os.fspath(path))))
        return [*unique.values(), ("Scratch (random weights)", (SCRATCH, None))]

    def remember(self, choice: str | os.PathLike) -> str:
        """``choice`` as entries name it: a kind (scratch, default, current) or a resolved checkpoint path, which
        is added to the files."""
        choice = os.fspath(choice)
        if choice not in (SCRATCH, DEFAULT, CURRENT):
            choice = os.fspath(Path(choice).expanduser().resolve())
            if choice not in self.files:
                self.files.append(choice)
        return choice

    @staticmethod
    def find(values, choice: str) -> tuple[str, str | None]:
        """Among entry values ``(kind, path)``, the one of a remembered ``choice``; ValueError when there is none."""
        match = next((value for value in values if choice in value), None)
        if match is None:
            raise ValueError(f"start choice {choice!r} is not available")
        return match


def start_lr(kind: str) -> float:
    """The learning rate offered for a start kind: 1e-3 from scratch, 1e-4 to fine-tune (issue 13 bug 6)."""
    return 1e-3 if kind == SCRATCH else 1e-4


def make_config(settings: dict, name: str, init_weights: str | None, crops: bool | None = None):
    """The ``TrainConfig`` of a new run from the dock's settings (:data:`CONFIG_SETTINGS`; 0 steps per epoch: one
    pass). With ``crops`` it is fitted to the start model (:func:`fit_to_start_model`, reads the checkpoint)."""
    from .config import TrainConfig

    values = {key: settings[key] for key in CONFIG_SETTINGS}
    values.update(steps_per_epoch=values["steps_per_epoch"] or None, device=values["device"] or "auto")
    config = TrainConfig(name=name, init_weights=init_weights or "", scheduler="plateau", test_fraction=0.0, **values)
    return config if crops is None else fit_to_start_model(config, crops)


def new_run_job(roots: list[str], out: str | os.PathLike, settings: dict, init_weights: str | None,
                rename: bool = False) -> dict:
    """The job of a new run in ``out`` (:func:`run_job`); ``rename``: a folder that holds a run becomes
    ``out-1`` (``-1-1``...) instead of refusing. Raises :class:`RunRefused`."""
    out = Path(out)
    if not roots:
        raise RunRefused("Add at least one data folder with masks first.")
    if has_run(out) and not rename:
        raise RunRefused(f"{out} already holds a run: Resume it, or choose another output folder.")
    while has_run(out):
        out = out.with_name(out.name + "-1")
    try:
        config = make_config(settings, out.name, init_weights)
        config.validate()
    except ValueError as err:
        raise RunRefused(f"Cannot start: {err}") from err
    problem = check_patients(roots, config.val_fraction)
    if problem:
        raise RunRefused(problem)
    return {"config": config.to_dict(), "roots": roots, "out": os.fspath(out), "resume": False,
            "crops": bool(settings["crops"])}


def resume_job(roots: list[str], out: str | os.PathLike, epochs: int) -> dict:
    """The job continuing the run in ``out`` up to ``epochs`` in all. Raises :class:`RunRefused`."""
    if not has_run(out):
        raise RunRefused(f"{out} holds no run to resume (no last.pt).")
    if not roots:
        raise RunRefused("Add the run's data folders first.")
    return {"roots": roots, "out": os.fspath(out), "resume": True, "epochs": int(epochs)}


@dataclass
class RunMonitor:
    """What the dock shows of one run, from the child's reports: progress steps, epoch history, status lines."""

    history: list[dict] = field(default_factory=list)
    reports_seen: int = 0
    last_report: dict | None = None
    best_path: str | None = None
    step: int = 0
    total_steps: int = 0  # 0 until the start report (a busy bar while the data loads)
    stopping: bool = False

    def handle(self, report: dict) -> tuple[str, bool] | None:
        """Take a report; the status line it brings ``(text, is_error)``, or None (keep the current one)."""
        self.reports_seen += 1
        self.last_report = report
        kind = report.get("kind")
        if kind == "start":
            self.total_steps = max(int(report["total_steps"]), 1)
            self.step = min(int(report["start_epoch"]) * int(report["steps_per_epoch"]), self.total_steps)
        elif kind == "step":
            self.step = min(int(report["step"]), self.total_steps)
        elif kind == "epoch":
            self.history.append({k: v for k, v in report.items() if k != "kind"})
        elif kind == "done":
            return self._done(report)
        elif kind == "error":
            return f"Training failed: {report['error']}", True
        text = report_text(report)
        return None if text is None or (kind == "step" and self.stopping) else (text, False)

    def _done(self, report: dict) -> tuple[str, bool]:
        best = Path(report["best_path"])
        if best.is_file():
            self.best_path = os.fspath(best)
            return (f"{'Stopped' if report['stopped'] else 'Finished'}. Best model: {best}. It is offered in the "
                    "Segment dock's model list."), False
        if report["stopped"]:
            return "Stopped during the first epoch: no model was saved (an unfinished epoch is discarded).", False
        return f"Finished, but no best.pt was written in {report['out_dir']}.", True

    def best_model_label(self) -> str:
        """The best model's name in the Segment dock's list (after the ``done`` report): the run, its epochs."""
        out = Path(self.last_report["out_dir"])
        epochs = len(read_history(out)) or len(self.history)
        return f"Trained: {out.name} (best of {epochs} epoch{'s' if epochs != 1 else ''})"

    def finish(self) -> None:
        """The child has ended: a finished run fills the bar, a stopped or failed one empties it (never 66 %)."""
        report = self.last_report or {}
        self.total_steps = max(self.total_steps, 1)
        self.step = self.total_steps if report.get("kind") == "done" and not report.get("stopped") else 0


def report_text(report: dict) -> str | None:
    """The status line of a ``start``, ``step`` or ``epoch`` report (None for other kinds)."""
    kind = report.get("kind")
    if kind == "start":
        return (f"Training on {report['train_slices']} slices ({len(report['split']['train'])} patients, "
                f"{len(report['split']['val'])} for validation) on {report['device']}; epoch "
                f"{report['start_epoch'] + 1} of {report['epochs']}.")
    if kind == "step":
        return (f"Epoch {report['epoch']}, batch {report['batch']}/{report['steps_per_epoch']}: loss "
                f"{report['loss']:.4f} ({report['slices_per_s']:.1f} slices/s)")
    if kind == "epoch":
        dice = report.get("val_patient_dice_mean")
        text = f"Epoch {report['epoch']} done: train loss {report['train_loss']:.4f}"
        if dice is not None:
            text += f", val Dice {dice:.3f}{' (best so far)' if report.get('improved') else ''}"
        return text
    return None


def run_job(job: dict, should_stop: Callable[[], bool] | None = None) -> Iterator[dict]:
    """The reports of ``training.train`` for a job: ``config`` (a ``TrainConfig`` dict), ``roots``, ``out``,
    ``resume``, ``epochs`` and ``crops`` (None: the config as given; else fitted with :func:`fit_to_start_model`)."""
    from .config import TrainConfig
    from .training import train

    config = TrainConfig.from_dict(job.get("config") or {})
    if job.get("crops") is not None:
        config = fit_to_start_model(config, bool(job["crops"]))
    yield from train(config, job["roots"], job["out"], resume=bool(job.get("resume")), epochs=job.get("epochs"),
                     should_stop=should_stop)


def main() -> int:
    """The child: reports on the original stdout; anything else printed there goes to stderr."""
    reports = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    job = json.loads(sys.stdin.readline() or "{}")
    if hasattr(os, "nice"):  # the window first: on 2 cores the training threads otherwise delay its event loop
        try:
            os.nice(NICENESS)
        except OSError:
            pass
    if hasattr(os, "SCHED_IDLE"):  # Linux: run only on CPU time the window leaves idle (threads made later inherit it)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        for report in run_job(job, stop.is_set):
            reports.write(json.dumps(report, default=str) + "\n")
    except Exception as err:  # noqa: BLE001 - reported to the parent, never lost
        traceback.print_exc()
        reports.write(json.dumps({"kind": "error", "error": f"{type(err).__name__}: {err}"}) + "\n")
        return 1
    return 0


class TrainProcess:
    """A training child process running ``job`` (see :func:`run_job`); :meth:`reports` yields its reports."""

    def __init__(self, job: dict) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.process = subprocess.Popen([sys.executable, "-P", "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        self._send(json.dumps(job))

    def _send(self, line: str) -> None:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # the child has ended
            pass

    def reports(self) -> Iterator[dict]:
        """The child's reports until it ends; an ``error`` report when it failed (also when it died)."""
        failed = False
        for line in self.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            failed = failed or report.get("kind") == "error"
            yield report
        code = self.process.wait()
        if code != 0 and not failed:
            yield {"kind": "error", "error": f"the training process ended with exit status {code}"
                   + (f": {self.stderr_tail()}" if self.stderr_tail() else "")}
        self._stderr.close()

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines the child wrote to stderr."""
        try:
            self._stderr.seek(0)
            return " | ".join(line.rstrip() for line in self._stderr.read().splitlines()[-lines:] if line.strip())
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Stop after the current batch (a stopped epoch is discarded; ``last.pt`` resumes it)."""
        self._send("stop")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


if __name__ == "__main__":
    sys.exit(main())
