"""The "Train / fine-tune" dock: train the U-Net on dataset roots (and exported corrections) inside napari.

Training runs ``training.train`` in a worker thread; only its small report dicts cross to the GUI
thread (progress bar, status line, a live plot updated once per epoch). Stop ends the run within
one batch (``best.pt`` of the finished epochs is kept); Resume continues the run in the output
folder. The best model of a run is offered in the Segment dock's model list. torch is imported
only inside functions.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import threading
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import notify, register_model, registered_models
from ._qt import RefreshingComboBox

RUNS_HOME = Path("~/napari-lgg-seg-runs")
SCRATCH = "scratch"
DEFAULT = "default"
CURRENT = "current"
BROWSE = "browse"
LOSSES = ("weighted_bce_dice", "bce_dice")
PLOT_HEIGHT = 200
PLOT_PLACEHOLDER = "Loss and validation curves appear here after each epoch."


def default_output_folder() -> Path:
    """``~/napari-lgg-seg-runs/<timestamp>`` (not created)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_HOME.expanduser() / stamp


def checkpoint_training_size(path: str | None) -> int:
    """The slice size a checkpoint was trained on (``model.training_size`` of its config)."""
    from ..model import read_checkpoint, training_size

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


def _train_job(config, roots: list[str], out: str, resume: bool, epochs: int | None, stop: threading.Event,
               crops: bool | None = None):
    """Worker generator: the training reports, one by one (the start checkpoint is read here, off the GUI)."""
    from ..training import train

    if crops is not None:
        config = fit_to_start_model(config, crops)
    yield from train(config, roots, out, resume=resume, should_stop=stop.is_set, epochs=epochs)


def read_history(out: str | os.PathLike) -> list[dict]:
    """Epoch rows of a run's ``metrics.csv`` (numbers as floats); [] when there is none."""
    path = Path(out) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                parsed = {}
                for k, v in row.items():
                    try:
                        parsed[k] = float(v)
                    except (TypeError, ValueError):
                        parsed[k] = v
                rows.append(parsed)
    except OSError:
        return []
    return rows




class TrainWidget(QWidget):
    """Train from scratch or fine-tune a model on folders in the LGG layout, with a live plot."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker = None
        self._stop = threading.Event()
        self._run: dict | None = None
        self.history: list[dict] = []
        self.reports_seen = 0
        self.last_report: dict | None = None
        self.best_path: str | None = None
        self._checkpoint_files: list[str] = []
        self._auto_output = True
        self._build()
        self._refresh_start()
        kind, _ = self.start_combo.currentData() or (SCRATCH, None)
        self.lr_spin.setValue(1e-3 if kind == SCRATCH else 1e-4)  # issue 13 bug 6: the default model fine-tunes
        self._refresh_devices(probe=False)  # accelerators are looked up when the list is opened
        self.set_output_folder(default_output_folder(), auto=True)
        self.destroyed.connect(self._stop.set)  # a closed dock ends its run within one batch

    # ------------------------------------------------------------------------------------ UI

    def _build(self) -> None:
        layout = QVBoxLayout(self)

        layout.addWidget(QLabel("Training data (dataset roots, exported corrections):"))
        self.data_list = QListWidget()
        self.data_list.setMaximumHeight(90)
        self.data_list.setToolTip("Folders in the LGG layout: ROOT/<PATIENT>/<PATIENT>_<k>.tif + _mask.tif")
        layout.addWidget(self.data_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add folder…")
        self.add_button.clicked.connect(self._browse_data)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected_root)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        layout.addLayout(row)

        form = QFormLayout()
        self.start_combo = RefreshingComboBox(self._refresh_start)
        self.start_combo.setToolTip("Fine-tune a model (architecture and training size are the model's) or "
                                    "train a new U-Net from random weights")
        self.start_combo.activated.connect(self._on_start_activated)
        form.addRow("Start from", self.start_combo)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(5)
        self.epochs_spin.setToolTip("Total epochs of the run (on Resume: the new total)")
        form.addRow("Epochs", self.epochs_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 100000)
        self.steps_spin.setValue(0)
        self.steps_spin.setSpecialValueText("one pass over the data")
        self.steps_spin.setToolTip("Batches per epoch; 0 = one pass over the training slices")
        form.addRow("Steps per epoch", self.steps_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(8)
        form.addRow("Batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-3)
        self.lr_spin.setToolTip("Adam learning rate (1e-3 from scratch; 1e-4 is safer for fine-tuning)")
        form.addRow("Learning rate", self.lr_spin)
        self.loss_combo = QComboBox()
        self.loss_combo.addItems(list(LOSSES))
        self.loss_combo.setToolTip("bce_dice: the seed's baseline; weighted_bce_dice: tumour pixels weighted")
        self.loss_combo.currentTextChanged.connect(self._on_loss_changed)
        form.addRow("Loss", self.loss_combo)
        self.pos_weight_spin = QDoubleSpinBox()
        self.pos_weight_spin.setRange(1.0, 100.0)
        self.pos_weight_spin.setValue(3.0)
        form.addRow("Tumour weight", self.pos_weight_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.15)
        self.val_spin.setToolTip("Share of patients held out for validation (model selection); 0 = none")
        form.addRow("Validation share", self.val_spin)
        self.crop_check = QCheckBox("128-px crops, half around tumour (faster on CPU)")
        self.crop_check.setToolTip("Off: whole slices, as in the seed work")
        form.addRow(self.crop_check)
        self.device_combo = RefreshingComboBox(self._refresh_devices)
        form.addRow("Device", self.device_combo)
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(self._on_output_edited)
        self.out_edit.editingFinished.connect(self._inspect_output)
        out_browse = QPushButton("Browse…")
        out_browse.clicked.connect(self._browse_output)
        row = QHBoxLayout()
        row.addWidget(self.out_edit, 1)
        row.addWidget(out_browse)
        self.out_browse = out_browse
        form.addRow("Output folder", row)
        layout.addLayout(form)

        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder (from its last finished epoch)")
        self.resume_button.clicked.connect(self.resume)
        for button in (self.start_button, self.stop_button, self.resume_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.status_label = QLabel("Add a data folder, then Start.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)

        # the curves are rendered to an image in a worker thread (matplotlib Agg takes 50-300 ms per draw)
        self.plot_label = QLabel(PLOT_PLACEHOLDER)
        self.plot_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.plot_label.setMinimumHeight(PLOT_HEIGHT)
        self.plot_label.setWordWrap(True)
        layout.addWidget(self.plot_label)
        self.plot_draws = 0  # plots shown
        self._plot_worker = None
        self._plot_pending = False
        self._settings_widgets = [self.add_button, self.remove_button, self.start_combo, self.epochs_spin,
                                  self.steps_spin, self.batch_spin, self.lr_spin, self.loss_combo,
                                  self.pos_weight_spin, self.val_spin, self.crop_check, self.device_combo,
                                  self.out_edit, self.out_browse]
        self._on_loss_changed(self.loss_combo.currentText())

    # ------------------------------------------------------------------------------- data roots

    def data_roots(self) -> list[str]:
        """The folders in the data list."""
        return [self.data_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.data_list.count())]

    def add_data_root(self, path: str | os.PathLike) -> bool:
        """Add a dataset root (or a single patient folder); False with a message when it holds no patients."""
        from ..io import find_patient_folders

        folder = Path(path).expanduser()
        key = os.fspath(folder.resolve()) if folder.exists() else os.fspath(folder)
        if key in self.data_roots():
            return True
        patients = find_patient_folders(folder) if folder.is_dir() else []
        if not patients:
            self.status_label.setText(f"{folder}: no patient folders (<PATIENT>/<PATIENT>_<k>.tif) found; not added.")
            return False
        labelled = sum(1 for p in patients if any(f.name.endswith(("_mask.tif", "_mask.tiff")) for f in p.iterdir()))
        item = QListWidgetItem(f"{folder} ({len(patients)} patients, {labelled} with masks)")
        item.setData(Qt.ItemDataRole.UserRole, key)
        item.setToolTip(key)
        self.data_list.addItem(item)
        self._update_buttons()
        return True

    def remove_selected_root(self) -> None:
        for item in self.data_list.selectedItems():
            self.data_list.takeItem(self.data_list.row(item))
        self._update_buttons()

    def _browse_data(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a training data folder (dataset root)")
        if folder:
            self.add_data_root(folder)

    # ------------------------------------------------------------------------------ start model

    def _current_segment_model(self) -> str | None:
        """The checkpoint the Segment dock has loaded, if one is open."""
        try:
            from . import _common

            getter = getattr(_common, "current_model_path", None)
            if getter is not None:
                path = getter()
                if path:
                    return os.fspath(path)
        except ImportError:
            pass
        try:
            docks = self.viewer.window.dock_widgets
            widgets = list(docks.values())
        except Exception:
            return None
        for widget in widgets:
            loaded = getattr(widget, "loaded_model", None)
            path = getattr(loaded, "path", None)
            if path:
                return os.fspath(path)
        return None

    def _start_entries(self) -> list[tuple[str, str, str | None]]:
        """(label, kind, path) choices for "Start from"."""
        from ..model import default_model_path

        entries: list[tuple[str, str, str | None]] = []
        default = default_model_path()
        if default is not None:
            entries.append(("Default model", DEFAULT, os.fspath(default)))
        current = self._current_segment_model()
        if current:
            entries.append((f"Current model ({Path(current).name})", CURRENT, current))
        entries += [(label, "file", path) for label, path in registered_models()]
        entries += [(Path(p).name, "file", p) for p in self._checkpoint_files]
        seen, unique = set(), []
        for label, kind, path in entries:
            if path not in seen:
                seen.add(path)
                unique.append((label, kind, path))
        unique.append(("Scratch (random weights)", SCRATCH, None))
        unique.append(("Checkpoint file…", BROWSE, None))
        return unique

    def _refresh_start(self) -> None:
        combo = self.start_combo
        current = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for label, kind, path in self._start_entries():
            combo.addItem(label, (kind, path))
            if path:
                combo.setItemData(combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        index = combo.findData(current) if current is not None else -1
        if index < 0:
            index = 0
        combo.setCurrentIndex(index)
        combo.blockSignals(False)

    def _on_start_activated(self, index: int) -> None:
        kind, _ = self.start_combo.itemData(index) or (None, None)
        if kind == BROWSE:
            path, _ = QFileDialog.getOpenFileName(self, "Start from checkpoint", "",
                                                  "PyTorch checkpoints (*.pt *.pth);;All files (*)")
            if path:
                self.set_start(path)
            else:
                self.set_start(SCRATCH)
            return
        self.lr_spin.setValue(1e-3 if kind == SCRATCH else 1e-4)

    def set_start(self, choice: str | os.PathLike) -> None:
        """Start from ``"scratch"``, ``"default"``, ``"current"`` or a checkpoint path."""
        choice = os.fspath(choice)
        if choice not in (SCRATCH, DEFAULT, CURRENT):
            path = os.fspath(Path(choice).expanduser().resolve())
            if path not in self._checkpoint_files:
                self._checkpoint_files.append(path)
        self._refresh_start()
        for i in range(self.start_combo.count()):
            kind, path = self.start_combo.itemData(i)
            if kind == choice or (path is not None and choice not in (SCRATCH, DEFAULT, CURRENT)
                                  and path == os.fspath(Path(choice).expanduser().resolve())):
                self.start_combo.setCurrentIndex(i)
                self.lr_spin.setValue(1e-3 if kind == SCRATCH else 1e-4)
                return
        raise ValueError(f"start choice {choice!r} is not available")

    def start_weights(self) -> str | None:
        """The checkpoint to fine-tune, or None for random weights."""
        kind, path = self.start_combo.currentData() or (SCRATCH, None)
        return path if kind not in (SCRATCH, BROWSE) else None

    # --------------------------------------------------------------------------- other settings

    def _refresh_devices(self, probe: bool = True) -> None:
        """Fill the device list; ``probe`` asks torch which accelerators exist (imports torch)."""
        current = self.device_combo.currentText()
        devices = ["auto", "cpu"]
        if probe:
            try:
                from ..inference import available_devices

                devices = available_devices()
            except Exception:  # torch missing or broken: training will report it
                pass
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItems(devices)
        index = self.device_combo.findText(current)
        self.device_combo.setCurrentIndex(max(index, 0))
        self.device_combo.blockSignals(False)

    def _on_loss_changed(self, name: str) -> None:
        self.pos_weight_spin.setEnabled(name == "weighted_bce_dice")

    def output_folder(self) -> Path:
        return Path(self.out_edit.text().strip() or default_output_folder()).expanduser()

    def set_output_folder(self, path: str | os.PathLike, auto: bool = False) -> None:
        """Choose the run folder (new runs are written there; Resume continues the run found there)."""
        self.out_edit.setText(os.fspath(path))
        self._auto_output = auto
        self._inspect_output()

    def _inspect_output(self) -> None:
        """When the output folder holds a run, show how far it got and set Epochs to its total."""
        self._update_buttons()
        if self.running:
            return
        out = self.output_folder()
        if not self._run_exists(out):
            return
        done = len(read_history(out))
        try:
            planned = int(json.loads((out / "config.json").read_text()).get("epochs", done))
        except (OSError, ValueError, TypeError, AttributeError):
            planned = done
        self.epochs_spin.setValue(max(planned, 1))
        more = "Resume continues it" if done < planned else "Raise Epochs and Resume to train it further"
        self.status_label.setText(f"{out} holds a run: {done} of {planned} epochs done. {more}.")

    def _on_output_edited(self, _text: str) -> None:
        self._auto_output = False

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder (new, or a run to resume)",
                                                  os.fspath(self.output_folder().parent))
        if folder:
            self.set_output_folder(folder)

    def make_config(self, fit: bool = True):
        """The ``TrainConfig`` of a new run from the controls; ``fit`` reads the start checkpoint for its
        training size (``start`` leaves that to the worker thread)."""
        from ..config import TrainConfig

        weights = self.start_weights()
        config = TrainConfig(
            name=self.output_folder().name,
            loss=self.loss_combo.currentText(),
            pos_weight=float(self.pos_weight_spin.value()),
            lr=float(self.lr_spin.value()),
            batch_size=int(self.batch_spin.value()),
            epochs=int(self.epochs_spin.value()),
            steps_per_epoch=int(self.steps_spin.value()) or None,
            scheduler="plateau",
            val_fraction=float(self.val_spin.value()),
            test_fraction=0.0,
            device=self.device_combo.currentText() or "auto",
            init_weights=weights or "",
        )
        return fit_to_start_model(config, self.crop_check.isChecked()) if fit else config

    # ----------------------------------------------------------------------------------- running

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _run_exists(self, folder: Path) -> bool:
        return (folder / "last.pt").is_file()

    def _update_buttons(self) -> None:
        running = self.running
        for widget in getattr(self, "_settings_widgets", []):
            widget.setEnabled(not running)
        if not running:
            self.pos_weight_spin.setEnabled(self.loss_combo.currentText() == "weighted_bce_dice")
        self.start_button.setEnabled(not running and self.data_list.count() > 0)
        self.stop_button.setEnabled(running and not self._stop.is_set())
        self.resume_button.setEnabled(not running and self.data_list.count() > 0
                                      and self._run_exists(self.output_folder()))

    def start(self):
        """Start a new run in the output folder; returns the worker, or None (with a message)."""
        if self.running:
            return None
        roots = self.data_roots()
        if not roots:
            self.status_label.setText("Add at least one data folder with masks first.")
            return None
        out = self.output_folder()
        if self._run_exists(out):
            if not self._auto_output:
                self.status_label.setText(f"{out} already holds a run: Resume it, or choose another output folder.")
                return None
            out = default_output_folder()
            while self._run_exists(out):
                out = out.with_name(out.name + "-1")
            self.set_output_folder(out, auto=True)
        try:
            config = self.make_config(fit=False)
            config.validate()
        except ValueError as err:
            self.status_label.setText(f"Cannot start: {err}")
            return None
        problem = self._check_patients(roots, config.val_fraction)
        if problem:
            self.status_label.setText(problem)
            return None
        self.history = []
        return self._launch(config, roots, out, resume=False, epochs=None, crops=self.crop_check.isChecked())

    def resume(self):
        """Continue the run in the output folder (up to the epochs set here); returns the worker or None."""
        if self.running:
            return None
        out = self.output_folder()
        if not self._run_exists(out):
            self.status_label.setText(f"{out} holds no run to resume (no last.pt).")
            return None
        roots = self.data_roots()
        if not roots:
            self.status_label.setText("Add the run's data folders first.")
            return None
        from ..config import TrainConfig

        self.history = read_history(out)
        return self._launch(TrainConfig(), roots, out, resume=True, epochs=int(self.epochs_spin.value()))

    def _check_patients(self, roots: list[str], val_fraction: float) -> str | None:
        from ..io import find_patient_folders

        count = 0
        for root in roots:
            count += len(find_patient_folders(root))
        if count == 0:
            return "The data folders hold no patients."
        if val_fraction > 0 and count < 2:
            return ("Only one patient: set the validation share to 0 (no validation) or add more patients; "
                    "validation needs patients of its own.")
        return None

    def _launch(self, config, roots: list[str], out: Path, *, resume: bool, epochs: int | None,
                crops: bool | None = None):
        from napari.qt.threading import create_worker

        self._stop.clear()
        self._run = {"out": os.fspath(out), "resume": resume, "epochs_before": len(self.history)}
        self.best_path = None
        self.last_report = None
        self.reports_seen = 0
        worker = create_worker(_train_job, config, roots, os.fspath(out), resume, epochs, self._stop, crops,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_report)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.progress.setRange(0, 0)  # busy until the data is loaded
        self.status_label.setText(f"{'Resuming' if resume else 'Starting'}: loading the data…")
        self._draw_plot()
        self._update_buttons()
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop after the current batch (the finished epochs' best.pt is kept)."""
        if self._worker is not None and not self._stop.is_set():
            self._stop.set()
            self.status_label.setText("Stopping after the current batch…")
            self._update_buttons()

    def _on_report(self, report: dict) -> None:
        self.reports_seen += 1
        self.last_report = report
        kind = report.get("kind")
        if kind == "start":
            total = max(int(report["total_steps"]), 1)
            self.progress.setRange(0, total)
            self.progress.setValue(min(int(report["start_epoch"]) * int(report["steps_per_epoch"]), total))
            self.status_label.setText(
                f"Training on {report['train_slices']} slices ({len(report['split']['train'])} patients, "
                f"{len(report['split']['val'])} for validation) on {report['device']}; epoch "
                f"{report['start_epoch'] + 1} of {report['epochs']}.")
        elif kind == "step":
            self.progress.setValue(min(int(report["step"]), self.progress.maximum()))
            if not self._stop.is_set():
                self.status_label.setText(
                    f"Epoch {report['epoch']}, batch {report['batch']}/{report['steps_per_epoch']}: loss "
                    f"{report['loss']:.4f} ({report['slices_per_s']:.1f} slices/s)")
        elif kind == "epoch":
            self.history.append({k: v for k, v in report.items() if k != "kind"})
            self._draw_plot()
            dice = report.get("val_patient_dice_mean")
            text = f"Epoch {report['epoch']} done: train loss {report['train_loss']:.4f}"
            if dice is not None:
                text += f", val Dice {dice:.3f}{' (best so far)' if report.get('improved') else ''}"
            self.status_label.setText(text)
        elif kind == "done":
            self._on_done(report)

    def _on_done(self, report: dict) -> None:
        best = Path(report["best_path"])
        out = Path(report["out_dir"])
        if best.is_file():
            self.best_path = os.fspath(best)
            epoch = len(read_history(out)) or len(self.history)
            label = f"Trained: {out.name} (best of {epoch} epoch{'s' if epoch != 1 else ''})"
            register_model(self.best_path, label)
            verb = "Stopped" if report["stopped"] else "Finished"
            self.status_label.setText(f"{verb}. Best model: {best}. It is offered in the Segment dock's model list.")
        elif report["stopped"]:
            self.status_label.setText("Stopped during the first epoch: no model was saved (an unfinished epoch is "
                                      "discarded).")
        else:
            self.status_label.setText(f"Finished, but no best.pt was written in {out}.")
        self._set_progress_done()

    def _set_progress_done(self) -> None:
        """A finished run fills the bar; a stopped or failed one empties it (never left at 66 %)."""
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        report = self.last_report or {}
        if report.get("kind") == "done" and not report.get("stopped"):
            self.progress.setValue(self.progress.maximum())
        else:
            self.progress.reset()

    def _on_error(self, err) -> None:
        self._set_progress_done()
        self.status_label.setText(f"Training failed: {err}")
        notify(f"Training failed: {err}", "error")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_progress_done()
        self._update_buttons()

    # ------------------------------------------------------------------------------------- plot

    def _draw_plot(self) -> None:
        """Render the loss and validation curves of ``self.history`` in a worker thread, then show them."""
        if not self.history:
            self.plot_label.clear()
            self.plot_label.setText(PLOT_PLACEHOLDER)
            return
        if self._plot_worker is not None:  # one render at a time; the newest history follows it
            self._plot_pending = True
            return
        from napari.qt.threading import create_worker

        from ..plots import render_curves

        ratio = self.devicePixelRatioF()
        width = max(self.plot_label.width(), 360)
        worker = create_worker(render_curves, [dict(h) for h in self.history], int(width * ratio),
                               int(PLOT_HEIGHT * ratio), 100.0 * ratio, _start_thread=False)
        worker.returned.connect(self._show_plot)
        worker.finished.connect(self._on_plot_finished)
        self._plot_worker = worker
        worker.start()

    def _show_plot(self, rgba) -> None:
        from qtpy.QtGui import QImage, QPixmap

        h, w = rgba.shape[:2]
        image = QImage(rgba.data, w, h, rgba.strides[0], QImage.Format.Format_RGBA8888).copy()
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(self.devicePixelRatioF())
        self.plot_label.setPixmap(pixmap)
        self.plot_draws += 1

    def _on_plot_finished(self) -> None:
        self._plot_worker = None
        if self._plot_pending:
            self._plot_pending = False
            self._draw_plot()
