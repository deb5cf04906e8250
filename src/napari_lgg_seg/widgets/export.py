"""The "Export corrected masks" dock (a magicgui form), and ``export_patient`` that the workflow calls without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton, create_widget
from qtpy.QtCore import Qt

from .. import recovery
from ..io import LGGFormatError, sanitize_name
from ._common import (
    ROLE_PREDICTION,
    find_patients,
    mark_exported,
    notify,
    status_html,
    tumour_layer,
    voxels_changed,
)


def _model_description(meta: dict) -> str | None:
    """'label (path)' of the model that made a prediction layer, or None."""
    path, label = meta.get("lgg_model"), meta.get("lgg_model_label")
    if path and label and label != Path(path).name:
        return f"{label} ({path})"
    return path or label


def export_patient(viewer, out_root: str | os.PathLike, *, patient_id: str | None = None, layer=None,
                   overwrite: bool = False) -> Path:
    """Export ``layer`` (default: the tumour layer of ``patient_id``) to ``OUT/<PATIENT>/`` with the patient's source
    images and a sidecar; marks it exported and clears its autosave. Returns the patient folder written.

    Raises ``ValueError`` (nothing to export), ``FileExistsError`` (already exported; nothing written unless
    ``overwrite``), ``LGGFormatError`` or ``OSError``.
    """
    from ..export import export_corrected_patient

    if layer is None:
        layer = tumour_layer(viewer, patient_id)
        if layer is None:
            raise ValueError(f"{patient_id or 'this patient'} has no tumour layer to export: segment it first.")
    meta = dict(layer.metadata or {})
    pid = patient_id or meta.get("lgg_patient_id")
    patients = find_patients(viewer)
    patient = patients.get(pid) if pid else None
    if patient is None and not pid:  # a hand-made layer: the one open patient of the same shape
        same = [p for p in patients.values() if np.shape(p.reference.data) == np.shape(layer.data)]
        patient = same[0] if len(same) == 1 else None
        pid = patient.patient_id if patient is not None else sanitize_name(layer.name)
        meta = {**(patient.metadata() if patient is not None else {}), **meta}
    masks = np.asarray(layer.data)
    masks = masks[None] if masks.ndim == 2 else masks
    images = None
    if patient is not None:
        try:
            images = patient.volume()
        except ValueError:
            images = None
        images = images if images is not None and images.shape[:3] == masks.shape else None
    edited = voxels_changed(layer)
    target = export_corrected_patient(os.path.expanduser(out_root), masks, meta, images=images, patient_id=pid,
                                      model=_model_description(meta), voxels_edited=edited, overwrite=overwrite)
    mark_exported(layer)
    recovery.clear_recovery(pid)
    return target


class ExportWidget(Container):
    """Choose a corrected Labels layer and an output folder; Export writes ``OUT/<PATIENT>/...``.

    The layer offered is the newest tumour layer; with none, nothing is chosen (never the ground truth by default).
    """

    def __init__(self, napari_viewer) -> None:
        import napari.layers

        self.viewer = napari_viewer
        self._choosing = False  # the layer choice is being set by this widget, not the user
        self._chosen = None  # a layer the user picked himself
        self.labels_combo = create_widget(annotation=napari.layers.Labels, label="Labels layer",
                                          options={"nullable": True, "tooltip": "The corrected tumour layer"})
        self.folder = FileEdit(mode="d", nullable=True, label="Output folder", tooltip="A dataset root: OUT/<PATIENT>/ is written")
        self.overwrite_check = CheckBox(text="Overwrite an existing export of the same patient", value=False)
        self.export_button = PushButton(text="Export")
        self.status_label = Label()
        self.status_label.native.setWordWrap(True)
        self.status_label.native.setTextFormat(Qt.TextFormat.RichText)
        super().__init__(widgets=[self.labels_combo, self.folder, self.overwrite_check, self.export_button,
                                  self.status_label])
        self.labels_combo.changed.connect(self._on_choice)
        self.export_button.clicked.connect(self.export)  # napari re-runs reset_choices when layers change

    def _on_choice(self, layer) -> None:
        if not self._choosing:
            self._chosen = layer

    def reset_choices(self, event=None) -> None:
        """Refresh the layer list; keeps the user's choice, else offers the newest tumour (prediction) layer."""
        self._choosing = True
        try:
            super().reset_choices()
            choices = self.labels_combo.choices
            new = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
            predictions = [la for la in choices if la is not None and (la.metadata or {}).get("lgg_role")
                           == ROLE_PREDICTION]
            if new is not None and any(new is la for la in predictions):
                self._chosen = None  # a fresh tumour layer is what one exports next
            keep = self._chosen if any(self._chosen is la for la in choices if la is not None) else None
            self.labels_combo.value = keep or (predictions[-1] if predictions else None)
        finally:
            self._choosing = False
        self.export_button.enabled = any(la is not None for la in choices)

    def selected_layer(self):
        """The Labels layer chosen, or None."""
        return self.labels_combo.value

    def select_layer(self, layer) -> None:
        """Choose a Labels layer to export."""
        self.reset_choices()
        self.labels_combo.value = layer

    def _say(self, text: str, error: bool = False, level: str | None = None) -> None:
        self.status_label.value = status_html(text, error)
        if level:
            notify(text, level)

    def export(self) -> Path | None:
        """Export the chosen layer; returns the patient folder written, or None (the reason is shown)."""
        layer = self.selected_layer()
        out = self.folder.value
        if layer is None:
            return self._say("Choose a Labels layer to export.", error=True)
        if out is None:
            return self._say("Choose an output folder first.", error=True)
        try:
            target = export_patient(self.viewer, out, layer=layer, overwrite=self.overwrite_check.value)
        except FileExistsError as err:
            return self._say(f"Not exported: {err} Nothing was written. Tick 'Overwrite an existing export' to "
                             "replace it, or choose another folder.", error=True, level="warning")
        except (LGGFormatError, OSError, ValueError) as err:
            return self._say(f"Export failed: {err}", error=True, level="error")
        edited = voxels_changed(layer)
        slices = 1 if layer.ndim == 2 else layer.data.shape[0]
        text = f"Exported {slices} slices of {target.name} to {target}"
        text += f" ({edited:,} voxels corrected)" if edited is not None else ""
        self._say(text + ".", level="info")
        return target
