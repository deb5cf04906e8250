"""The plugin through its npe2 manifest: validation, sample data, the segment dock end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-lgg-seg"
MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    import napari_lgg_seg.model as model_mod

    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(model_mod, "default_model_path", lambda: None)


def test_manifest_is_valid_and_importable():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN
    manifest.validate_imports()  # every python_name resolves
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment tumour", "Export corrected masks", "Patient browser"} <= widgets
    assert [s.key for s in manifest.contributions.sample_data] == ["phantom"]
    installed = PluginManifest.from_distribution(PLUGIN)
    assert installed.model_dump(exclude={"package_metadata"}) == manifest.model_dump(exclude={"package_metadata"})


def test_widget_modules_do_not_import_torch():
    code = ("import sys, napari_lgg_seg._reader, napari_lgg_seg._writer, napari_lgg_seg._sample_data, "
            "napari_lgg_seg.widgets.segment, napari_lgg_seg.widgets.export, napari_lgg_seg.widgets.browser, "
            "napari_lgg_seg.widgets.train; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sample_then_segment_dock_through_the_manifest(make_napari_viewer, qtbot, tiny_checkpoint):
    from napari.layers import Labels

    from napari_lgg_seg._sample_data import SAMPLE_PATIENT_ID

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    assert f"{SAMPLE_PATIENT_ID} FLAIR" in viewer.layers
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment tumour")
    widget.ask = lambda title, text: pytest.fail(f"unexpected question: {title}")
    assert widget.current_patient().patient_id == SAMPLE_PATIENT_ID
    assert not widget.segment_button.isEnabled()  # no model yet: refused
    assert widget.add_checkpoint(tiny_checkpoint)
    _, exporter = viewer.window.add_plugin_dock_widget(PLUGIN, "Export corrected masks")
    assert exporter.selected_layer().name == f"{SAMPLE_PATIENT_ID} ground truth"
    widget.batch_size = 24
    widget.segment_button.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    labels = viewer.layers[f"{SAMPLE_PATIENT_ID} tumour"]
    assert isinstance(labels, Labels)
    assert labels.data.shape == viewer.layers[f"{SAMPLE_PATIENT_ID} FLAIR"].data.shape
    assert labels.mode == "paint" and labels.selected_label == 1
    assert np.array_equal(labels.metadata["lgg_ai_mask"], labels.data)
    assert exporter.selected_layer() is labels  # the new tumour layer is offered for export
