"""The plugin through its npe2 manifest: validation, sample data, the segment dock end to end."""

from __future__ import annotations

import ast
import os
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


def _imported_by(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has imported after importing ``modules``."""
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())


def test_widget_modules_do_not_import_torch():
    modules = [f"napari_lgg_seg.{name}" for name in ("_reader", "_writer", "_sample_data", "widgets.segment",
                                                     "widgets.export", "widgets.browser", "widgets.train")]
    assert _imported_by(modules, ("torch",)) == []


def test_the_core_modules_import_neither_qt_nor_torch():
    modules = [f"napari_lgg_seg.{name}" for name in ("layers", "export", "workflow", "_reader", "display",
                                                     "segmentation", "train_process")]
    watched = ("qtpy", "PyQt6", "PyQt5", "PySide6", "torch", "napari_lgg_seg.widgets")
    assert _imported_by(modules, watched) == []


def test_sample_then_segment_dock_through_the_manifest(make_napari_viewer, qtbot, tiny_checkpoint):
    from napari.layers import Labels

    from napari_lgg_seg._sample_data import SAMPLE_PATIENT_ID

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    assert f"{SAMPLE_PATIENT_ID} FLAIR" in viewer.layers
    assert viewer.layers[f"{SAMPLE_PATIENT_ID} ground truth"].contour == 2  # drawn as an outline, as from the reader
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment tumour")
    widget.ask = lambda title, text: pytest.fail(f"unexpected question: {title}")
    assert widget.current_patient().patient_id == SAMPLE_PATIENT_ID
    assert not widget.segment_button.enabled  # no model yet: refused
    assert widget.add_checkpoint(tiny_checkpoint)
    _, exporter = viewer.window.add_plugin_dock_widget(PLUGIN, "Export corrected masks")
    assert exporter.selected_layer() is None  # never the ground truth (issue 13, bug 6)
    widget.batch_size = 24
    widget.segment_button.native.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    labels = viewer.layers[f"{SAMPLE_PATIENT_ID} tumour"]
    assert isinstance(labels, Labels)
    assert labels.data.shape == viewer.layers[f"{SAMPLE_PATIENT_ID} FLAIR"].data.shape
    assert labels.mode == "paint" and labels.selected_label == 1
    assert np.array_equal(labels.metadata["lgg_ai_mask"], labels.data)
    assert exporter.selected_layer() is labels  # the new tumour layer is offered for export
    truth = viewer.layers[f"{SAMPLE_PATIENT_ID} ground truth"]
    ai_colour, truth_colour = labels.colormap.map(np.array([1]))[0], truth.colormap.map(np.array([1]))[0]
    assert np.abs(ai_colour[:3] - truth_colour[:3]).max() > 0.5  # AI result and ground truth: different colours
    assert labels.contour == 0 and truth.contour == 2  # a filled result over an outlined truth


def test_reader_claims_only_lgg_slices_and_folders():
    from napari.plugins import _initialize_plugins, _npe2

    _initialize_plugins()
    claims = {name: PLUGIN in _npe2.get_readers(f"/data/{name}") for name in (
        "holiday.png", "notes.txt", "scan.npy", "holiday.tif", "scan_final.tiff",
        "TCGA_CS_4942_19970222_5.tif", "TCGA_CS_4942_19970222_12_mask.TIF", "P_3.tiff")}
    assert claims == {"holiday.png": False, "notes.txt": False, "scan.npy": False, "holiday.tif": False,
                      "scan_final.tiff": False, "TCGA_CS_4942_19970222_5.tif": True,
                      "TCGA_CS_4942_19970222_12_mask.TIF": True, "P_3.tiff": True}


def test_opening_a_png_does_not_offer_this_plugin(make_napari_viewer, monkeypatch, tmp_path, quiet_settings):
    """Drag and drop / File > Open (`QtViewer._qt_open`, no plugin given): a PNG has napari's reader only."""
    import imageio.v3 as iio
    from napari._qt import qt_viewer

    png = tmp_path / "photo.png"
    iio.imwrite(png, np.zeros((8, 8), np.uint8))
    monkeypatch.setattr(qt_viewer, "handle_gui_reading",
                        lambda *args, **kwargs: pytest.fail("'Choose reader' shown for a PNG"))
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._qt_open([str(png)], stack=False)  # the plugin claimed "*": a MultipleReaderError
    assert [layer.name for layer in viewer.layers] == ["photo"]


def test_a_dataset_opened_once_opens_its_patients_without_choosing_a_reader(
        make_napari_viewer, monkeypatch, tmp_path, phantom_root, quiet_settings):
    """Drag and drop / File > Open (`QtViewer._qt_open`): "Choose reader" the first time only, for the dataset."""
    import imageio.v3 as iio
    from napari._qt import qt_viewer
    from napari._qt.dialogs.qt_reader_dialog import open_with_dialog_choices, prepare_remaining_readers
    from napari.errors import MultipleReaderError

    asked: list[str] = []

    def choose_this_plugin(filenames, viewer, stack, *args, **kwargs):
        """The "Choose reader" dialog, answered as a user would: this plugin, "remember" left unticked."""
        asked.append(os.path.basename(filenames[0]))
        readers = prepare_remaining_readers(filenames)
        open_with_dialog_choices(readers[PLUGIN], False, filenames[0], readers, filenames, stack, viewer)

    monkeypatch.setattr(qt_viewer, "handle_gui_reading", choose_this_plugin)
    patients = sorted(phantom_root.iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    iio.imwrite(tmp_path / "photo.png", np.zeros((8, 8), np.uint8))
    viewer = make_napari_viewer()
    drop = viewer.window._qt_viewer._qt_open

    drop([str(phantom_root)], stack=False)  # napari's own reader takes folders too: the first time, a choice
    assert asked == ["phantoms"]
    assert {layer.metadata["lgg_patient_id"] for layer in viewer.layers} == {patients[0].name}
    for path in (patients[1], patients[2] / f"{patients[2].name}_3.tif", phantom_root):
        viewer.layers.clear()
        drop([str(path)], stack=False)  # no dialog for the dataset's patients, slices, or the root again
        assert len(viewer.layers) == 4
    assert asked == ["phantoms"]
    viewer.layers.clear()
    drop([str(tmp_path / "photo.png")], stack=False)  # not claimed at all: napari's reader, no question
    assert [layer.name for layer in viewer.layers] == ["photo"] and asked == ["phantoms"]
    with pytest.raises(MultipleReaderError):  # other folders still ask: the preference is for this dataset only
        viewer._open_or_raise_error([str(elsewhere)])


def test_a_users_reader_preference_is_kept(make_napari_viewer, phantom_root, quiet_settings):
    patient = sorted(phantom_root.iterdir())[0]
    key = f"{os.path.realpath(phantom_root)}{os.sep}*{os.sep}"
    quiet_settings.plugins.extension2reader = {**quiet_settings.plugins.extension2reader, key: "napari"}
    viewer = make_napari_viewer()
    quiet_settings.plugins.extension2reader = {**quiet_settings.plugins.extension2reader, key: "napari"}
    viewer.open(str(patient), plugin=PLUGIN)
    assert quiet_settings.plugins.extension2reader[key] == "napari"


def test_readme_names_the_real_sample_menu_item():
    from napari.plugins import menu_item_template
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    (sample,) = manifest.contributions.sample_data
    item = menu_item_template.format(manifest.display_name, sample.display_name)  # napari's title for a lone sample
    readme = " ".join((MANIFEST.parent / "README.md").read_text().split())
    assert f"`File > Open Sample > {item}`" in readme
