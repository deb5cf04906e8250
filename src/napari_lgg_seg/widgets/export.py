"""The "Export corrected masks" dock: a magicgui form around ``export.export_patient``."""

from pathlib import Path
from typing import Annotated

from magicgui.widgets import FunctionGui, Label
from napari.layers import Labels

from ..export import export_patient
from ..io import LGGFormatError
from ..layers import ROLE_PREDICTION, voxels_changed
from ._common import keep_gc_pauses_short, notify, status_html, wrapped_label


class ExportWidget(FunctionGui):
    """Export a corrected Labels layer to ``OUT/<PATIENT>/``. The layer offered is the newest tumour layer, or
    none (never the ground truth by default); a layer the user picks himself is kept."""

    def __init__(self, napari_viewer) -> None:
        self.viewer = napari_viewer
        self._chosen = self._choosing = None  # the user's own pick; set while this widget picks a layer
        super().__init__(self._export, call_button="Export")
        self.status_label = wrapped_label(Label(), rich=True)
        self.append(self.status_label)
        self.labels_layer.changed.connect(lambda layer: self._choosing or setattr(self, "_chosen", layer))
        keep_gc_pauses_short(napari_viewer, self.native)

    def reset_choices(self, event=None) -> None:
        """Refresh the layer list (napari calls it when layers change), keeping the user's pick."""
        self._choosing = True
        try:
            super().reset_choices()
            choices = [la for la in self.labels_layer.choices if la is not None]
            predictions = [la for la in choices if (la.metadata or {}).get("lgg_role") == ROLE_PREDICTION]
            if getattr(event, "type", "") == "inserted" and any(event.value is la for la in predictions):
                self._chosen = None  # a fresh tumour layer is what one exports next
            kept = self._chosen if any(self._chosen is la for la in choices) else None
            self.labels_layer.value = kept or (predictions[-1] if predictions else None)
        finally:
            self._choosing = False
        self.call_button.enabled = bool(choices)

    def selected_layer(self) -> Labels | None:
        return self.labels_layer.value

    def select_layer(self, layer: Labels) -> None:
        self.reset_choices()
        self.labels_layer.value = layer

    def export(self) -> Path | None:
        """Export the chosen layer (the Export button); the patient folder written, or None (the reason shown)."""
        return self()

    def _say(self, text: str, level: str = "info") -> None:
        self.status_label.value = status_html(text, error=level != "info")
        notify(text, level)

    def _export(self, labels_layer: Annotated[Labels | None, {"label": "Labels layer",
                                                              "tooltip": "The corrected tumour layer"}] = None,
                output_folder: Annotated[Path | None, {"mode": "d", "label": "Output folder",
                                                       "tooltip": "A dataset root: OUT/<PATIENT>/ is written"}] = None,
                overwrite: Annotated[bool, {"text": "Overwrite an existing export of the same patient"}] = False):
        if labels_layer is None or output_folder is None:
            self.status_label.value = status_html(
                "Choose a Labels layer to export." if labels_layer is None else "Choose an output folder first.", True)
            return None
        try:
            target = export_patient(self.viewer, output_folder, layer=labels_layer, overwrite=overwrite)
        except FileExistsError as err:
            return self._say(f"Not exported: {err} Nothing was written. Tick 'Overwrite an existing export' to "
                             "replace it, or choose another folder.", "warning")
        except (LGGFormatError, OSError, ValueError) as err:
            return self._say(f"Export failed: {err}", "error")
        edited, slices = voxels_changed(labels_layer), 1 if labels_layer.ndim == 2 else labels_layer.data.shape[0]
        edits = f" ({edited:,} voxels corrected)" if edited is not None else ""
        self._say(f"Exported {slices} slices of {target.name} to {target}{edits}.")
        return target
