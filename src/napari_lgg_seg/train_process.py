"""Training in a child process, for the Train dock: the GUI process only reads small report dicts.

``python -m napari_lgg_seg.train_process`` reads one job (JSON) from its first stdin line, runs
``training.train`` (the engine the CLI runs) and writes each report as a JSON line to stdout. A ``stop`` line on
stdin, stdin closing (the parent has gone) or SIGINT stops it after the current batch, as ``should_stop`` does, so
``resume`` continues exactly. An error is written as a ``{"kind": "error"}`` report (traceback on stderr) and the
exit status is 1. :class:`TrainProcess` starts such a child and yields its reports. No Qt here; torch is imported
only in the child (and by :func:`fit_to_start_model`).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

NICENESS = 10  # the child's scheduling priority below the napari process's (CPU time goes to the GUI first)


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


def run_progress(out: str | os.PathLike) -> tuple[int, int] | None:
    """``(epochs done, epochs planned)`` of the run in ``out``, or None when it holds no run (no ``last.pt``)."""
    out = Path(out)
    if not (out / "last.pt").is_file():
        return None
    done = len(read_history(out))
    try:
        planned = int(json.loads((out / "config.json").read_text()).get("epochs", done))
    except (OSError, ValueError, TypeError, AttributeError):
        planned = done
    return done, planned


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
