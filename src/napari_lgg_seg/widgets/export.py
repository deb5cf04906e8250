"""The "Export corrected masks" dock (a magicgui form): ``export.export_patient`` of the chosen layer."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton, create_widget
from qtpy.QtCore import Qt

from ..export import export_patient
from ..io import LGGFormatError
from ..layers import ROLE_PREDICTION, voxels_changed
from ._common import keep_gc_pauses_short, notify, status_html


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
