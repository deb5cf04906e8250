"""The "Export corrected masks" dock: write a corrected tumour layer as training data in the LGG layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import recovery
from ..io import LGGFormatError, sanitize_name
from ._common import ROLE_PREDICTION, PatientLayers, disconnector, find_patients, mark_exported, notify, voxels_changed
from ._qt import RefreshingComboBox, status_html


def _model_description(meta: dict) -> str | None:
    """'label (path)' of the model that made a prediction layer, or None."""
    path, label = meta.get("lgg_model"), meta.get("lgg_model_label")
    if path and label and label != Path(path).name:
        return f"{label} ({path})"
    return path or label




class ExportWidget(QWidget):
    """Choose a corrected Labels layer and an output folder; Export writes ``OUT/<PATIENT>/...``."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        form = QFormLayout()
        self.labels_combo = RefreshingComboBox(self.refresh_layers)
        self.labels_combo.setToolTip("The corrected tumour layer to export")
        form.addRow("Labels layer", self.labels_combo)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("output folder (a dataset root)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form.addRow("Output folder", row)
        self.overwrite_check = QCheckBox("Overwrite an existing export of the same patient")
        self.overwrite_check.setChecked(False)
        form.addRow(self.overwrite_check)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        connections = [(self.viewer.layers.events.inserted, self.refresh_layers),
                       (self.viewer.layers.events.removed, self.refresh_layers)]
        for emitter, callback in connections:
            emitter.connect(callback)
        self.destroyed.connect(disconnector(connections))
        self.refresh_layers()

    def _labels_layers(self) -> list:
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers if isinstance(layer, Labels)]

    def refresh_layers(self, event=None) -> None:
        """Rebuild the layer list; keeps the choice, else picks the newest tumour (prediction) layer."""
        layers = self._labels_layers()
        current = self.selected_layer()
        new = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if new is not None and (new.metadata or {}).get("lgg_role") == ROLE_PREDICTION:
            current = new  # a fresh tumour layer is what one exports next
        combo = self.labels_combo
        combo.blockSignals(True)
        combo.clear()
        for layer in layers:
            combo.addItem(layer.name, id(layer))
        chosen = current if any(layer is current for layer in layers) else None
        if chosen is None:
            predictions = [la for la in layers if (la.metadata or {}).get("lgg_role") == ROLE_PREDICTION]
            chosen = (predictions or layers or [None])[-1]
        if chosen is not None:
            combo.setCurrentIndex(combo.findData(id(chosen)))
        combo.blockSignals(False)
        self.export_button.setEnabled(bool(layers))

    def selected_layer(self):
        """The Labels layer chosen in the combo, or None."""
        key = self.labels_combo.currentData() if hasattr(self, "labels_combo") else None
        for layer in self._labels_layers():
            if id(layer) == key:
                return layer
        return None

    def select_layer(self, layer) -> None:
        """Choose a Labels layer to export."""
        self.refresh_layers()
        self.labels_combo.setCurrentIndex(self.labels_combo.findData(id(layer)))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export corrected masks to", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def _patient_for(self, layer, pid: str | None) -> PatientLayers | None:
        patients = find_patients(self.viewer)
        if pid and pid in patients:
            return patients[pid]
        same_shape = [p for p in patients.values() if tuple(np.shape(p.reference.data)) == tuple(np.shape(layer.data))]
        return same_shape[0] if len(same_shape) == 1 else None

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.setText(status_html(text, error))

    def export(self) -> Path | None:
        """Export the chosen layer; returns the patient folder written, or None (the reason is shown)."""
        from ..export import export_corrected_patient

        layer = self.selected_layer()
        if layer is None:
            self._say("Choose a Labels layer to export.", error=True)
            return None
        out = self.folder_edit.text().strip()
        if not out:
            self._say("Choose an output folder first.", error=True)
            return None
        meta = dict(layer.metadata or {})
        pid = meta.get("lgg_patient_id")
        patient = self._patient_for(layer, pid)
        if not pid:
            pid = patient.patient_id if patient is not None else sanitize_name(layer.name)
            if patient is not None:
                meta = {**patient.metadata(), **meta}
        masks = np.asarray(layer.data)
        if masks.ndim == 2:
            masks = masks[None]
        images = None
        if patient is not None:
            try:
                volume = patient.volume()
            except ValueError:
                volume = None
            if volume is not None and volume.shape[:3] == masks.shape:
                images = volume
        try:
            target = export_corrected_patient(
                os.path.expanduser(out), masks, meta, images=images, patient_id=pid,
                model=_model_description(meta),
                voxels_edited=voxels_changed(layer), overwrite=self.overwrite_check.isChecked(),
            )
        except FileExistsError as err:
            text = (f"Not exported: {err} Nothing was written. Tick 'Overwrite an existing export' to replace it, "
                    "or choose another folder.")
            self._say(text, error=True)
            notify(text, "warning")
            return None
        except (LGGFormatError, OSError) as err:
            text = f"Export failed: {err}"
            self._say(text, error=True)
            notify(text, "error")
            return None
        mark_exported(layer)
        recovery.clear_recovery(pid)
        edited = voxels_changed(layer)
        text = f"Exported {masks.shape[0]} slices of {pid} to {target}"
        if edited is not None:
            text += f" ({edited:,} voxels corrected)"
        self._say(text + ".")
        notify(text, "info")
        return target
