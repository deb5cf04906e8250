"""The "Export corrected masks" dock (a magicgui form), and ``export_patient`` that the workflow calls without it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton, create_widget
from qtpy.QtCore import Qt

from .. import recovery
from ..io import LGGFormatError, check_patient_target, sanitize_name
from ._common import (
    ROLE_PREDICTION,
    find_patients,
    keep_gc_pauses_short,
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


@dataclass
class ExportJob:
    """One export, prepared on the GUI thread by :func:`prepare_export`: :meth:`write` may then run in any thread
    (it only reads copies taken here), :meth:`finish` runs back on the GUI thread."""

    layer: object
    patient_id: str
    out_root: str
    data: np.ndarray  # a copy of the layer's data as exported (painting meanwhile does not change it)
    metadata: dict
    images: np.ndarray | None
    voxels_edited: int | None
    overwrite: bool = False

    def write(self) -> Path:
        """Write ``OUT/<PATIENT>/`` (atomically); raises as :func:`export_patient`."""
        from ..export import export_corrected_patient

        masks = self.data[None] if self.data.ndim == 2 else self.data
        return export_corrected_patient(self.out_root, masks, self.metadata, images=self.images,
                                        patient_id=self.patient_id, model=_model_description(self.metadata),
                                        voxels_edited=self.voxels_edited, overwrite=self.overwrite)

    def finish(self) -> None:
        """After a successful write: the layer is marked exported (with what was written) and its autosave cleared."""
        mark_exported(self.layer, self.data)
        recovery.clear_recovery(self.patient_id)


def prepare_export(viewer, out_root: str | os.PathLike, *, patient_id: str | None = None, layer=None,
                   overwrite: bool = False) -> ExportJob:
    """Gather what :func:`export_patient` writes (GUI thread, a few ms) and refuse early what it would refuse
    before writing anything: ``ValueError`` (nothing to export), ``FileExistsError`` (already exported, or the
    patient's source folder)."""
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
    data = np.array(layer.data, copy=True)
    masks = data[None] if data.ndim == 2 else data
    images = None
    if patient is not None:
        try:
            images = patient.volume()
        except ValueError:
            images = None
        images = images if images is not None and images.shape[:3] == masks.shape else None
    out_root = os.path.expanduser(out_root)
    check_patient_target(out_root, pid, overwrite=overwrite, source_folder=meta.get("lgg_folder"))
    return ExportJob(layer, pid, out_root, data, meta, images, voxels_changed(layer), overwrite)


def export_patient(viewer, out_root: str | os.PathLike, *, patient_id: str | None = None, layer=None,
                   overwrite: bool = False) -> Path:
    """Export ``layer`` (default: the tumour layer of ``patient_id``) to ``OUT/<PATIENT>/`` with the patient's source
    images and a sidecar; marks it exported and clears its autosave. Returns the patient folder written.

    Raises ``ValueError`` (nothing to export), ``FileExistsError`` (already exported; nothing written unless
    ``overwrite``), ``LGGFormatError`` or ``OSError``. :func:`prepare_export` + ``ExportJob.write`` (in a worker) +
    ``ExportJob.finish`` do the same without writing on the GUI thread.
    """
    job = prepare_export(viewer, out_root, patient_id=patient_id, layer=layer, overwrite=overwrite)
    target = job.write()
    job.finish()
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
        keep_gc_pauses_short(napari_viewer, self.native)

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
