"""The "Train / fine-tune" dock (a magicgui form): train the U-Net on dataset roots (and exported corrections).

Training runs in a child process (``train_process``: the engine ``training.train``, as the CLI runs it), so it never
competes with the GUI for the GIL; a worker thread reads the child's small report dicts and hands them to the GUI
(progress bar, status line, a live plot once per epoch). Stop ends the run after the current batch (``best.pt`` of
the finished epochs is kept); Resume continues the run in the output folder; closing the dock kills the child. The
best model of a run is offered in the Segment dock's model list.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.qt.threading import create_worker, thread_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from ..train_process import (
    TrainProcess,
    check_patients,
    describe_data_root,
    fit_to_start_model,
    read_history,
    report_text,
    run_progress,
)
from ._common import (
    current_model_path,
    keep_gc_pauses_short,
    notify,
    register_model,
    registered_models,
    run_below_the_window,
    status_html,
    wrapped_label,
)

RUNS_HOME = Path("~/napari-lgg-seg-runs")
SCRATCH, DEFAULT, CURRENT, FILE = "scratch", "default", "current", "file"
LOSSES = ("weighted_bce_dice", "bce_dice")
PLOT_HEIGHT = 200
PLOT_PLACEHOLDER = "Loss and validation curves appear here after each epoch."


def default_output_folder() -> Path:
    """``~/napari-lgg-seg-runs/<timestamp>`` (not created)."""
    return RUNS_HOME.expanduser() / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _render_curves(*args):
    """Worker: ``plots.render_curves`` below the window's CPU priority."""
    from ..plots import render_curves

    run_below_the_window()
    return render_curves(*args)


@thread_worker(start_thread=False)
def _read_reports(process: TrainProcess):
    """Worker generator: the child's reports, as they come (the thread waits on a pipe, holding no lock)."""
    yield from process.reports()


def _row(label: str, *widgets) -> Container:
    row = Container(widgets=widgets, layout="horizontal", labels=False, label=label)
    row.margins = (0, 0, 0, 0)
    return row


class TrainWidget(Container):
    """Train from scratch or fine-tune a model on folders in the LGG layout, with a live plot."""

    def __init__(self, napari_viewer) -> None:
        from ..inference import available_devices

        self.viewer = napari_viewer
        self._roots: dict[str, str] = {}  # resolved folder -> label
        self._checkpoint_files: list[str] = []
        self._process: TrainProcess | None = None
        self._stopping = self._closed = False
        self._auto_output = True  # the output folder is the default one (a new run may pick another)
        self._plot_worker, self._plot_pending = None, False
        self.history: list[dict] = []
        self.reports_seen = self.plot_draws = 0
        self.last_report: dict | None = None
        self.best_path: str | None = None

        self.data_list = Select(label="Training data", choices=self._root_choices,
                                tooltip="Folders in the LGG layout: ROOT/<PATIENT>/<PATIENT>_<k>.tif + _mask.tif")
        self.data_list.native.setMaximumHeight(90)
        self.add_button = PushButton(text="Add folder…")
        self.remove_button = PushButton(text="Remove", tooltip="Remove the selected folders")
        self.start_combo = ComboBox(choices=self._start_choices,
                                    tooltip="Fine-tune a model (architecture and training size are the model's) or "
                                    "train a new U-Net from random weights")
        self.browse_button = PushButton(text="Checkpoint…", tooltip="Fine-tune a checkpoint file (.pt)")
        self.epochs_spin = SpinBox(label="Epochs", min=1, max=1000, value=5,
                                   tooltip="Total epochs of the run (on Resume: the new total)")
        self.steps_spin = SpinBox(label="Steps per epoch (0: one pass)", min=0, max=100_000, value=0,
                                  tooltip="Batches per epoch; 0 = one pass over the training slices")
        self.batch_spin = SpinBox(label="Batch size", min=1, max=256, value=8)
        self.lr_spin = FloatSpinBox(label="Learning rate", min=1e-6, max=1.0, step=1e-6, value=1e-3,
                                    tooltip="Adam learning rate (1e-3 from scratch; 1e-4 is safer for fine-tuning)")
        self.lr_spin.step = None  # adaptive: steps of a tenth of the value's magnitude (6 decimals kept)
        self.loss_combo = ComboBox(label="Loss", choices=LOSSES,
                                   tooltip="bce_dice: the seed's baseline; weighted_bce_dice: tumour pixels weighted")
        self.pos_weight_spin = FloatSpinBox(label="Tumour weight", min=1.0, max=100.0, value=3.0)
        self.val_spin = FloatSpinBox(label="Validation share", min=0.0, max=0.5, step=0.05, value=0.15,
                                     tooltip="Share of patients held out for validation (model selection); 0 = none")
        self.crop_check = CheckBox(text="128-px crops, half around tumour (faster on CPU)",
                                   tooltip="Off: whole slices, as in the seed work")
        self.device_combo = ComboBox(label="Device", choices=lambda _w: available_devices())
        self.out_edit = FileEdit(label="Output folder", mode="d",
                                 tooltip="The run folder: a new run is written there; Resume continues the run in it")
        self.settings = Container(widgets=[
            self.data_list, _row("", self.add_button, self.remove_button),
            _row("Start from", self.start_combo, self.browse_button), self.epochs_spin, self.steps_spin,
            self.batch_spin, self.lr_spin, self.loss_combo, self.pos_weight_spin, self.val_spin, self.crop_check,
            self.device_combo, self.out_edit])
        self.settings.margins = (0, 0, 0, 0)
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop")
        self.resume_button = PushButton(
            text="Resume", tooltip="Continue the run in the output folder (from its last finished epoch)")
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.status_label = wrapped_label(Label(value="Add a data folder, then Start."), rich=True, selectable=True)
        # the curves are rendered to an image in a worker thread (matplotlib Agg takes 50-300 ms per draw)
        self.plot_label = wrapped_label(Label(value=PLOT_PLACEHOLDER), rich=True, selectable=True)
        self.plot_label.native.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_label.native.setMinimumHeight(PLOT_HEIGHT)
        super().__init__(widgets=[self.settings, _row("", self.start_button, self.stop_button, self.resume_button),
                                  self.progress, self.status_label, self.plot_label], labels=False)

        self.add_button.clicked.connect(self._browse_data)
        self.remove_button.clicked.connect(self.remove_selected_root)
        self.start_combo.changed.connect(self._on_start_changed)
        self.browse_button.clicked.connect(self._browse_start)
        self.loss_combo.changed.connect(self._update_buttons)
        self.out_edit.changed.connect(self._on_output_edited)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.native.destroyed.connect(self._on_destroyed)
        keep_gc_pauses_short(napari_viewer, self.native)
        self.native_parent_changed.connect(lambda parent: parent is None and self._kill())  # the dock was closed
        self._on_start_changed(self.start_combo.value)  # issue 13 bug 6: the default model fine-tunes at 1e-4
        self.set_output_folder(default_output_folder(), auto=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.value = status_html(text, error)

    # ------------------------------------------------------------------------------- data roots

    def _root_choices(self, _widget=None) -> list[tuple[str, str]]:
        return [(label, key) for key, label in self._roots.items()]

    def data_roots(self) -> list[str]:
        """The folders in the data list."""
        return list(self._roots)

    def add_data_root(self, path: str | os.PathLike) -> bool:
        """Add a dataset root (or a single patient folder); False with a message when it holds no patients."""
        folder = Path(path).expanduser()
        key = os.fspath(folder.resolve()) if folder.exists() else os.fspath(folder)
        if key in self._roots:
            return True
        label = describe_data_root(folder)
        if label is None:
            self._say(f"{folder}: no patient folders (<PATIENT>/<PATIENT>_<k>.tif) found; not added.", error=True)
            return False
        self._roots[key] = label
        self.data_list.reset_choices()
        self._update_buttons()
        return True

    def remove_selected_root(self) -> None:
        for key in self.data_list.value:
            self._roots.pop(key, None)
        self.data_list.reset_choices()
        self._update_buttons()

    def _browse_data(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Add a training data folder (dataset root)")
        if folder:
            self.add_data_root(folder)

    # ------------------------------------------------------------------------------ start model

    def _start_choices(self, _widget=None) -> list[tuple[str, tuple[str, str | None]]]:
        """"Start from": the default model, the Segment dock's current one, trained and chosen files, scratch."""
        from ..model import default_model_path

        default, current = default_model_path(), current_model_path()
        entries = [("Default model", DEFAULT, default)] if default is not None else []
        entries += [(f"Current model ({Path(current).name})", CURRENT, current)] if current else []
        entries += [(label, FILE, path) for label, path in registered_models()]
        entries += [(Path(path).name, FILE, path) for path in self._checkpoint_files]
        unique: dict[str, tuple] = {}
        for label, kind, path in entries:
            unique.setdefault(os.fspath(path), (label, (kind, os.fspath(path))))
        return [*unique.values(), ("Scratch (random weights)", (SCRATCH, None))]

    def _on_start_changed(self, value) -> None:
        kind, path = value or (SCRATCH, None)
        self.lr_spin.value = 1e-3 if kind == SCRATCH else 1e-4
        self.start_combo.tooltip = path or "Train a new U-Net from random weights"

    def _browse_start(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.native, "Start from checkpoint", "",
                                              "PyTorch checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.set_start(path)

    def set_start(self, choice: str | os.PathLike) -> None:
        """Start from ``"scratch"``, ``"default"``, ``"current"`` or a checkpoint path."""
        choice = os.fspath(choice)
        if choice not in (SCRATCH, DEFAULT, CURRENT):
            choice = os.fspath(Path(choice).expanduser().resolve())
            if choice not in self._checkpoint_files:
                self._checkpoint_files.append(choice)
        self.start_combo.reset_choices()
        match = next((data for data in self.start_combo.choices if choice in data), None)
        if match is None:
            raise ValueError(f"start choice {choice!r} is not available")
        self.start_combo.value = match
        self._on_start_changed(match)

    def start_weights(self) -> str | None:
        """The checkpoint to fine-tune, or None for random weights."""
        return (self.start_combo.value or (SCRATCH, None))[1]

    # --------------------------------------------------------------------------- output folder

    def output_folder(self) -> Path:
        return Path(self.out_edit.line_edit.value.strip() or default_output_folder()).expanduser()

    def set_output_folder(self, path: str | os.PathLike, auto: bool = False) -> None:
        """Choose the run folder (new runs are written there; Resume continues the run found there)."""
        self.out_edit.value = os.fspath(path)
        self._auto_output = auto
        self._inspect_output()

    def _on_output_edited(self, _value=None) -> None:
        self._auto_output = False
        self._inspect_output()

    def _inspect_output(self) -> None:
        """When the output folder holds a run, show how far it got and set Epochs to its total."""
        self._update_buttons()
        out = self.output_folder()
        progress = run_progress(out)
        if self.running or progress is None:
            return
        done, planned = progress
        self.epochs_spin.value = min(max(planned, 1), self.epochs_spin.max)
        more = "Resume continues it" if done < planned else "Raise Epochs and Resume to train it further"
        self._say(f"{out} holds a run: {done} of {planned} epochs done. {more}.")

    def make_config(self, fit: bool = True):
        """The ``TrainConfig`` of a new run from the controls; ``fit`` reads the start checkpoint for its
        training size (``start`` leaves that to the training process)."""
        from ..config import TrainConfig

        config = TrainConfig(
            name=self.output_folder().name, loss=self.loss_combo.value, pos_weight=float(self.pos_weight_spin.value),
            lr=float(self.lr_spin.value), batch_size=int(self.batch_spin.value), epochs=int(self.epochs_spin.value),
            steps_per_epoch=int(self.steps_spin.value) or None, scheduler="plateau",
            val_fraction=float(self.val_spin.value), test_fraction=0.0, device=self.device_combo.value or "auto",
            init_weights=self.start_weights() or "")
        return fit_to_start_model(config, self.crop_check.value) if fit else config

    # ----------------------------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        return self._process is not None

    def _update_buttons(self, *_args) -> None:
        running, has_data = self.running, bool(self._roots)
        self.settings.enabled = not running
        self.pos_weight_spin.enabled = self.loss_combo.value == "weighted_bce_dice"
        self.start_button.enabled = not running and has_data
        self.stop_button.enabled = running and not self._stopping
        self.resume_button.enabled = not running and has_data and (self.output_folder() / "last.pt").is_file()

    def start(self):
        """Start a new run in the output folder; returns the report worker, or None (with a message)."""
        if self.running:
            return None
        roots, out = self.data_roots(), self.output_folder()
        if not roots:
            return self._say("Add at least one data folder with masks first.", error=True)
        if (out / "last.pt").is_file():
            if not self._auto_output:
                return self._say(f"{out} already holds a run: Resume it, or choose another output folder.", True)
            while (out / "last.pt").is_file():
                out = out.with_name(out.name + "-1")
            self.set_output_folder(out, auto=True)
        try:
            config = self.make_config(fit=False)
            config.validate()
        except ValueError as err:
            return self._say(f"Cannot start: {err}", error=True)
        problem = check_patients(roots, config.val_fraction)
        if problem:
            return self._say(problem, error=True)
        self.history = []
        return self._launch({"config": config.to_dict(), "roots": roots, "out": os.fspath(out), "resume": False,
                             "crops": self.crop_check.value})

    def resume(self):
        """Continue the run in the output folder (up to the epochs set here); returns the worker or None."""
        if self.running:
            return None
        out = self.output_folder()
        if not (out / "last.pt").is_file():
            return self._say(f"{out} holds no run to resume (no last.pt).", error=True)
        if not self._roots:
            return self._say("Add the run's data folders first.", error=True)
        self.history = read_history(out)
        return self._launch({"roots": self.data_roots(), "out": os.fspath(out), "resume": True,
                             "epochs": int(self.epochs_spin.value)})

    def _launch(self, job: dict):
        self._stopping, self.best_path, self.last_report, self.reports_seen = False, None, None, 0
        self._process = process = TrainProcess(job)
        self.native.destroyed.connect(process.kill)
        worker = _read_reports(process)
        worker.yielded.connect(self._on_report)
        worker.finished.connect(self._on_finished)
        self.progress.max = 0  # busy until the data is loaded
        self._say(f"{'Resuming' if job['resume'] else 'Starting'}: loading the data…")
        self._draw_plot()
        self._update_buttons()
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop after the current batch (the finished epochs' best.pt is kept)."""
        if self._process is not None and not self._stopping:
            self._stopping = True
            self._process.stop()
            self._say("Stopping after the current batch…")
            self._update_buttons()

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def _on_destroyed(self, *_args) -> None:
        self._closed = True
        self._kill()

    def _on_report(self, report: dict) -> None:
        if self._closed:
            return
        self.reports_seen += 1
        self.last_report = report
        kind = report.get("kind")
        if kind == "start":
            self.progress.max = total = max(int(report["total_steps"]), 1)
            self.progress.value = min(int(report["start_epoch"]) * int(report["steps_per_epoch"]), total)
        elif kind == "step":
            self.progress.value = min(int(report["step"]), self.progress.max)
        elif kind == "epoch":
            self.history.append({k: v for k, v in report.items() if k != "kind"})
            self._draw_plot()
        text = report_text(report)
        if text is not None and not (kind == "step" and self._stopping):
            self._say(text)
        if kind == "done":
            self._on_done(report)
        elif kind == "error":
            self._say(f"Training failed: {report['error']}", error=True)
            notify(f"Training failed: {report['error']}", "error")

    def _on_done(self, report: dict) -> None:
        best, out = Path(report["best_path"]), Path(report["out_dir"])
        if best.is_file():
            self.best_path = os.fspath(best)
            epoch = len(read_history(out)) or len(self.history)
            register_model(self.best_path, f"Trained: {out.name} (best of {epoch} epoch{'s' if epoch != 1 else ''})")
            self._say(f"{'Stopped' if report['stopped'] else 'Finished'}. Best model: {best}. It is offered in the "
                      "Segment dock's model list.")
        elif report["stopped"]:
            self._say("Stopped during the first epoch: no model was saved (an unfinished epoch is discarded).")
        else:
            self._say(f"Finished, but no best.pt was written in {out}.", error=True)

    def _on_finished(self) -> None:
        """A finished run fills the bar; a stopped or failed one empties it (never left at 66 %)."""
        self._process = None
        if self._closed:
            return
        report = self.last_report or {}
        self.progress.max = max(self.progress.max, 1)
        finished = report.get("kind") == "done" and not report.get("stopped")
        self.progress.value = self.progress.max if finished else self.progress.min
        self._update_buttons()

    # ------------------------------------------------------------------------------------- plot

    def _draw_plot(self) -> None:
        """Render the loss and validation curves of ``self.history`` in a worker thread, then show them."""
        if not self.history:
            self.plot_label.value = PLOT_PLACEHOLDER
            return
        if self._plot_worker is not None:  # one render at a time; the newest history follows it
            self._plot_pending = True
            return
        ratio = self.native.devicePixelRatioF()
        width = max(self.plot_label.native.width(), 120)  # the label's width: the image never widens the dock
        self._plot_worker = create_worker(_render_curves, [dict(h) for h in self.history], int(width * ratio),
                                          int(PLOT_HEIGHT * ratio), 100.0 * ratio, _start_thread=False)
        self._plot_worker.returned.connect(self._show_plot)
        self._plot_worker.finished.connect(self._on_plot_finished)
        self._plot_worker.start()

    def _show_plot(self, rgba) -> None:
        from qtpy.QtGui import QImage, QPixmap

        if self._closed:
            return
        h, w = rgba.shape[:2]
        pixmap = QPixmap.fromImage(QImage(rgba.data, w, h, rgba.strides[0], QImage.Format.Format_RGBA8888).copy())
        pixmap.setDevicePixelRatio(self.native.devicePixelRatioF())
        self.plot_label.native.setPixmap(pixmap)
        self.plot_draws += 1

    def _on_plot_finished(self) -> None:
        self._plot_worker = None
        if self._plot_pending and not self._closed:
            self._plot_pending = False
            self._draw_plot()
