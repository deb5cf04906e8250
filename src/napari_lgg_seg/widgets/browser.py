"""The "Patient browser" dock: step through the patients of a dataset root, one patient open at a time."""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .._reader import load_folder
from ..io import LGGFormatError, Patient, find_patient_folders, is_patient_folder, load_patient
from ._common import (
    ROLE_GROUND_TRUTH,
    ROLE_PREDICTION,
    ROLE_PROBABILITY,
    has_unexported_edits,
    notify,
    patient_of_layer,
    prediction_layers,
    qt_ask,
)
from ._qt import status_html


def _is_reader_layer(layer) -> bool:
    meta = layer.metadata or {}
    return bool(meta.get("lgg_channel")) or meta.get("lgg_role") == ROLE_GROUND_TRUTH


class PatientBrowser(QWidget):
    """List the patients under a dataset root; Previous / Next / a click swaps the open patient.

    ``ask(title, text) -> bool`` asks before leaving unexported corrections; replace it in tests.
    """

    def __init__(self, napari_viewer, root: str = "", load_first: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.ask = qt_ask(self)
        self.root: Path | None = None
        self.folders: list[Path] = []
        self.current_index = -1
        self.current_patient_id: str | None = None

        self.root_edit = QLineEdit()
        self.root_edit.setPlaceholderText("dataset root: a folder of patient folders")
        self.root_edit.returnPressed.connect(lambda: self.set_root(self.root_edit.text()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        top = QHBoxLayout()
        top.addWidget(self.root_edit, 1)
        top.addWidget(browse)
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._on_row_changed)
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.clicked.connect(self.previous)
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(self.next)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(nav)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.status_label)
        self._update_nav()
        from .._viewer_hooks import install_viewer_hooks

        install_viewer_hooks(napari_viewer)  # the patients' layers look as the reader's (outline, one channel)
        if root:
            self.set_root(root, load=load_first)

    # ---------------------------------------------------------------------------------- root

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose an LGG dataset folder", self.root_edit.text())
        if folder:
            self.set_root(folder)

    def set_root(self, root: str | os.PathLike, load: bool = True) -> int:
        """List the patients under ``root`` (and open the first one when ``load``); returns how many."""
        from .._reader import patient_folders

        root = Path(os.path.expanduser(str(root)))
        folders = find_patient_folders(root) if is_patient_folder(root) else patient_folders(root)
        self.root_edit.setText(str(root))
        if not folders:
            self._say(f"No patient folders (with <PATIENT>_<k>.tif slices) found in {root}.", error=True)
            return 0
        self.root = root
        self.folders = folders
        self.current_index = -1
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([f.name for f in folders])
        self.list.blockSignals(False)
        self._say(f"{len(folders)} patients in {root}.")
        if load:
            self.show_patient(0)
        self._update_nav()
        return len(folders)

    def adopt_root(self, root: str | os.PathLike, patient_id: str) -> None:
        """List ``root``'s patients and mark ``patient_id`` as the open one; its layers are already in the viewer
        (the reader added them), so nothing is loaded."""
        self.set_root(root, load=False)
        for index, folder in enumerate(self.folders):
            if folder.name == patient_id:
                self.current_index = index
                self.current_patient_id = patient_id
                self.list.blockSignals(True)
                self.list.setCurrentRow(index)
                self.list.blockSignals(False)
                self._say(f"Patient {index + 1} of {len(self.folders)}: {patient_id}")
                break
        self._update_nav()

    def first_patient_layers(self) -> list[tuple]:
        """Layer-data tuples of the first patient, marked as the open one (the dataset-root reader returns them)."""
        from .._reader import patient_layer_data

        if not self.folders:
            return []
        patient = load_patient(self.folders[0])
        self._set_current(0, patient)
        return patient_layer_data(patient)

    # ------------------------------------------------------------------------------ switching

    def next(self) -> bool:
        """Open the next patient."""
        return self.current_index + 1 < len(self.folders) and self.show_patient(self.current_index + 1)

    def previous(self) -> bool:
        """Open the previous patient."""
        return self.current_index > 0 and self.show_patient(self.current_index - 1)

    def _on_row_changed(self, row: int) -> None:
        if 0 <= row < len(self.folders) and row != self.current_index:
            self.show_patient(row)

    def show_patient(self, index: int) -> bool:
        """Swap the open patient for patient ``index``; False when the user cancels or it cannot be read."""
        if not 0 <= index < len(self.folders):
            return False
        folder = self.folders[index]
        previous = self.current_patient_id
        if previous is not None:
            unsaved = [la for la in prediction_layers(self.viewer, previous) if has_unexported_edits(la)]
            if unsaved:
                names = ", ".join(f"'{la.name}'" for la in unsaved)
                if not self.ask("Unexported corrections",
                                f"{names} has corrections that were not exported. Open {folder.name} anyway?\n\n"
                                "The corrected layer stays open (and is autosaved), so you can still export it."):
                    self._restore_row()
                    return False
        QApplication.setOverrideCursor(_wait_cursor())
        try:
            patient, extra_layers = load_folder(folder)  # a patient folder, or a segment output over its source
        except LGGFormatError as err:
            self._say(f"Cannot open {folder.name}: {err}", error=True)
            notify(f"Cannot open {folder.name}: {err}", "warning")
            self._restore_row()
            return False
        finally:
            QApplication.restoreOverrideCursor()
        old_shape = self._remove_patient_layers(previous) if previous is not None else None
        self._add_patient(patient, extra_layers)
        self._set_current(index, patient)
        if old_shape != patient.images.shape[:3]:
            self.viewer.reset_view()
        if patient.images.shape[0] > 1:
            self.viewer.dims.set_current_step(0, patient.images.shape[0] // 2)
        return True

    def _remove_patient_layers(self, patient_id: str):
        """Remove the patient's reader layers and unedited results; keep corrections not yet exported."""
        shape = None
        for layer in list(self.viewer.layers):
            if patient_of_layer(layer) != patient_id:
                continue
            meta = layer.metadata or {}
            role = meta.get("lgg_role")
            if _is_reader_layer(layer):
                if meta.get("lgg_channel"):
                    shape = tuple(layer.data.shape[:3])
                self.viewer.layers.remove(layer)
            elif role == ROLE_PROBABILITY:
                self.viewer.layers.remove(layer)
            elif role == ROLE_PREDICTION and not has_unexported_edits(layer):
                self.viewer.layers.remove(layer)
        return shape

    def _add_patient(self, patient: Patient, extra_layers: list[tuple] = ()) -> None:
        from napari.layers import Layer

        from .._reader import patient_layer_data

        for data, kwargs, layer_type in [*patient_layer_data(patient), *extra_layers]:
            self.viewer.add_layer(Layer.create(data, kwargs, layer_type))

    def _set_current(self, index: int, patient: Patient) -> None:
        self.current_index = index
        self.current_patient_id = patient.patient_id
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
        note = f" ({len(patient.warnings)} warnings: {patient.warnings[0]}…)" if patient.warnings else ""
        self._say(f"Patient {index + 1} of {len(self.folders)}: {patient.patient_id}, "
                  f"{patient.num_slices} slices{note}")
        self._update_nav()

    def _restore_row(self) -> None:
        self.list.blockSignals(True)
        self.list.setCurrentRow(self.current_index)
        self.list.blockSignals(False)

    def _update_nav(self) -> None:
        self.prev_button.setEnabled(self.current_index > 0)
        self.next_button.setEnabled(0 <= self.current_index + 1 < len(self.folders))

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.setText(status_html(text, error))


def _wait_cursor():
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QCursor

    return QCursor(Qt.CursorShape.WaitCursor)
