"""The "Train / fine-tune" dock: a magicgui form over ``train_process`` (data list, choices, jobs, reports).

Training runs in a child process, read by a thread worker; Stop ends it after the current batch, Resume continues
the run in the output folder, closing the dock kills the child. The best model is offered in the Segment dock.
"""

import os
from pathlib import Path
from typing import Annotated, Literal

from magicgui.signature import magic_signature
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, Select
from napari.qt.threading import thread_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from .. import train_process as core
from ..segmentation import current_model_path, register_model, registered_models
from ._common import background, device_choices, keep_gc_pauses_short, notify, row, status_html, wrapped_label

PLOT_HEIGHT = 200
PLOT_PLACEHOLDER = "Loss and validation curves appear here after each epoch."


def run_settings(
    *,
    epochs: Annotated[int, {"label": "Epochs", "min": 1, "max": 1000,
                            "tooltip": "Total epochs of the run (on Resume: the new total)"}] = 5,
    steps_per_epoch: Annotated[int, {"label": "Steps per epoch (0: one pass)", "min": 0, "max": 100_000,
                                     "tooltip": "Batches per epoch; 0 = one pass over the training slices"}] = 0,
    batch_size: Annotated[int, {"label": "Batch size", "min": 1, "max": 256}] = 8,
    lr: Annotated[float, {"label": "Learning rate", "min": 1e-6, "max": 1.0, "step": 1e-6,
                          "tooltip": "Adam learning rate (1e-3 from scratch; 1e-4 is safer for fine-tuning)"}] = 1e-3,
    loss: Annotated[Literal["weighted_bce_dice", "bce_dice"], {
        "label": "Loss", "tooltip": "bce_dice: the seed's baseline; weighted_bce_dice: tumour pixels weighted"}
    ] = "weighted_bce_dice",
    pos_weight: Annotated[float, {"label": "Tumour weight", "min": 1.0, "max": 100.0}] = 3.0,
    val_fraction: Annotated[float, {"label": "Validation share", "min": 0.0, "max": 0.5, "step": 0.05,
                                    "tooltip": "Share of patients held out for validation (model selection); "
                                    "0 = none"}] = 0.15,
    crops: Annotated[bool, {"text": "128-px crops, half around tumour (faster on CPU)",
                            "tooltip": "Off: whole slices, as in the seed work"}] = False,
    device: Annotated[str, {"label": "Device", "choices": device_choices}],
    out_dir: Annotated[Path, {"label": "Output folder", "mode": "d",
                              "tooltip": "The run folder: a new run is written there; Resume continues the run in it"}],
) -> None:
    """The settings form of the dock (``train_process.make_config`` turns its values into a ``TrainConfig``)."""


@background
def _render_curves(*args):
    """Worker: ``plots.render_curves`` (matplotlib is imported in the worker)."""
    from ..plots import render_curves

    return render_curves(*args)


@thread_worker(start_thread=False)
def _read_reports(process: core.TrainProcess):
    """Worker generator: the child's reports, as they come (the thread waits on a pipe, holding no lock)."""
    yield from process.reports()


def _button(text: str, callback, tooltip: str | None = None) -> PushButton:
    button = PushButton(text=text, tooltip=tooltip)
    button.clicked.connect(callback)
    return button


class TrainWidget(Container):
    """Train from scratch or fine-tune a model on folders in the LGG layout, with a live plot."""

    history = property(lambda self: self.run.history, doc="Epoch rows of the current (or last) run.")
    reports_seen = property(lambda self: self.run.reports_seen)
    last_report = property(lambda self: self.run.last_report)
    best_path = property(lambda self: self.run.best_path, doc="The best.pt of the last run, or None.")

    def __init__(self, napari_viewer) -> None:
        self.viewer = napari_viewer
        self.roots, self.starts, self.run = core.DataRoots(), core.StartModels(), core.RunMonitor()
        self._process: core.TrainProcess | None = None
        self._closed = False
        self._auto_output = True  # the output folder is the default one (a new run may pick another)
        self._plot_worker, self._plot_pending, self.plot_draws = None, False, 0

        self.data_list = Select(label="Training data", choices=lambda _w: self.roots.choices(),
                                tooltip="Folders in the LGG layout: ROOT/<PATIENT>/<PATIENT>_<k>.tif + _mask.tif")
        self.data_list.native.setMaximumHeight(90)
        self.start_combo = ComboBox(choices=self._start_choices,
                                    tooltip="Fine-tune a model (architecture and training size are the model's) or "
                                    "train a new U-Net from random weights")
        self.start_combo.changed.connect(self._on_start_changed)
        data_buttons = row(_button("Add folder…", self._browse_data),
                           _button("Remove", self.remove_selected_root, "Remove the selected folders"))
        start_row = row(self.start_combo, _button("Checkpoint…", self._browse_start, "Fine-tune a checkpoint file (.pt)"),
                        label="Start from")
        fields = magic_signature(run_settings).widgets().values()
        self.settings = form = Container(widgets=[self.data_list, data_buttons, start_row, *fields])
        form.margins = (0, 0, 0, 0)
        form.lr.step = None  # adaptive: steps of a tenth of the value's magnitude (6 decimals kept)
        form.loss.changed.connect(self._update_buttons)
        form.out_dir.changed.connect(self._on_output_edited)
        self.epochs_spin, self.steps_spin, self.batch_spin = form.epochs, form.steps_per_epoch, form.batch_size
        self.lr_spin, self.val_spin, self.crop_check, self.out_edit = form.lr, form.val_fraction, form.crops, form.out_dir
        self.start_button, self.stop_button = _button("Start", self.start), _button("Stop", self.stop)
        self.resume_button = _button("Resume", self.resume,
                                     "Continue the run in the output folder (from its last finished epoch)")
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.status_label = wrapped_label(Label(value="Add a data folder, then Start."), rich=True, selectable=True)
        self.plot_label = wrapped_label(Label(value=PLOT_PLACEHOLDER), rich=True, selectable=True)
        self.plot_label.native.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_label.native.setMinimumHeight(PLOT_HEIGHT)
        super().__init__(widgets=[form, row(self.start_button, self.stop_button, self.resume_button),
                                  self.progress, self.status_label, self.plot_label], labels=False)
        self.native.destroyed.connect(self._on_destroyed)
        keep_gc_pauses_short(napari_viewer, self.native)
        self.native_parent_changed.connect(lambda parent: parent is None and self._kill())  # the dock was closed
        self._on_start_changed(self.start_combo.value)  # issue 13 bug 6: the default model fine-tunes at 1e-4
        self.set_output_folder(core.default_output_folder(), auto=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.value = status_html(text, error)

    def data_roots(self) -> list[str]:
        """The folders in the data list."""
        return self.roots.paths()

    def add_data_root(self, path: str | os.PathLike) -> bool:
        """Add a dataset root (or a single patient folder); False with a message when it holds no patients."""
        problem = self.roots.add(path)
        if problem:
            self._say(problem, error=True)
        self.data_list.reset_choices()
        self._update_buttons()
        return problem is None

    def remove_selected_root(self) -> None:
        self.roots.remove(self.data_list.value)
        self.data_list.reset_choices()
        self._update_buttons()

    def _browse_data(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Add a training data folder (dataset root)")
        if folder:
            self.add_data_root(folder)

    def _start_choices(self, _widget=None) -> list[tuple[str, tuple[str, str | None]]]:
        from ..model import default_model_path

        return self.starts.choices(default_model_path(), current_model_path(), registered_models())

    def _on_start_changed(self, value) -> None:
        kind, path = value or (core.SCRATCH, None)
        self.lr_spin.value = core.start_lr(kind)
        self.start_combo.tooltip = path or "Train a new U-Net from random weights"

    def _browse_start(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.native, "Start from checkpoint", "",
                                              "PyTorch checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.set_start(path)

    def set_start(self, choice: str | os.PathLike) -> None:
        """Start from ``"scratch"``, ``"default"``, ``"current"`` or a checkpoint path."""
        choice = self.starts.remember(choice)
        self.start_combo.reset_choices()
        self.start_combo.value = match = self.starts.find(self.start_combo.choices, choice)
        self._on_start_changed(match)

    def start_weights(self) -> str | None:
        """The checkpoint to fine-tune, or None for random weights."""
        return (self.start_combo.value or (core.SCRATCH, None))[1]

    def output_folder(self) -> Path:
        return Path(self.out_edit.line_edit.value.strip() or core.default_output_folder()).expanduser()

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
        found = None if self.running else core.describe_run(self.output_folder())
        if found is not None:
            self.epochs_spin.value = min(max(found[0], 1), self.epochs_spin.max)
            self._say(found[1])

    def make_config(self, fit: bool = True):
        """The ``TrainConfig`` of a new run; ``fit`` reads the start checkpoint for its training size."""
        return core.make_config(self.settings.asdict(), self.output_folder().name, self.start_weights(),
                                crops=self.crop_check.value if fit else None)

    @property
    def running(self) -> bool:
        return self._process is not None

    def _update_buttons(self, *_args) -> None:
        running, has_data = self.running, bool(self.data_roots())
        self.settings.enabled = not running
        self.settings.pos_weight.enabled = self.settings.loss.value == "weighted_bce_dice"
        self.start_button.enabled = not running and has_data
        self.stop_button.enabled = running and not self.run.stopping
        self.resume_button.enabled = not running and has_data and core.has_run(self.output_folder())

    def start(self):
        """Start a new run in the output folder; returns the report worker, or None (with a message)."""
        return self._launch(lambda out: core.new_run_job(self.data_roots(), out, self.settings.asdict(),
                                                         self.start_weights(), rename=self._auto_output))

    def resume(self):
        """Continue the run in the output folder (up to the epochs set here); returns the worker or None."""
        return self._launch(lambda out: core.resume_job(self.data_roots(), out, self.epochs_spin.value))

    def _launch(self, make_job):
        if self.running:
            return None
        try:
            job = make_job(self.output_folder())
        except core.RunRefused as err:
            return self._say(str(err), error=True)
        if job["out"] != os.fspath(self.output_folder()):  # the default folder held a run: a new one beside it
            self.set_output_folder(job["out"], auto=True)
        self.run = core.RunMonitor(history=core.read_history(job["out"]) if job["resume"] else [])
        self._process = core.TrainProcess(job)
        worker = _read_reports(self._process)
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
        if self._process is not None and not self.run.stopping:
            self.run.stopping = True
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
        status = self.run.handle(report)
        self.progress.max, self.progress.value = self.run.total_steps, self.run.step
        if status is not None:
            self._say(*status)
        kind = report.get("kind")
        if kind == "epoch":
            self._draw_plot()
        elif kind == "done" and self.run.best_path:
            register_model(self.run.best_path, self.run.best_model_label())
        elif kind == "error":
            notify(status[0], "error")

    def _on_finished(self) -> None:
        self._process = None
        if not self._closed:
            self.run.finish()
            self.progress.max, self.progress.value = self.run.total_steps, self.run.step
            self._update_buttons()

    def _draw_plot(self) -> None:
        """Render the loss and validation curves of the history in a worker thread, then show them."""
        if not self.history:
            self.plot_label.value = PLOT_PLACEHOLDER
            return
        if self._plot_worker is not None:  # one render at a time; the newest history follows it
            self._plot_pending = True
            return
        ratio = self.native.devicePixelRatioF()
        width = max(self.plot_label.native.width(), 120)  # the label's width: the image never widens the dock
        self._plot_worker = _render_curves([dict(h) for h in self.history], int(width * ratio),
                                           int(PLOT_HEIGHT * ratio), 100.0 * ratio)
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
