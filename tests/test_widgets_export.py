"""Export of corrected masks (dock widget) and the npe2 mask-folder writer: lossless round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_lgg_seg import recovery
from napari_lgg_seg._reader import napari_get_reader
from napari_lgg_seg.io import load_patient

PLUGIN = "napari-lgg-seg"


@pytest.fixture(autouse=True)
def _recovery_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))


def corrected_layer(viewer, pid: str):
    """A tumour layer as the segment widget makes it, then corrected by the user (known edit)."""
    flair = viewer.layers[f"{pid} FLAIR"]
    ai = np.zeros(flair.data.shape, np.uint8)
    ai[2:5, 20:30, 20:30] = 1
    meta = {k: v for k, v in flair.metadata.items() if k not in ("lgg_channel", "lgg_rgb_source")}
    meta.update({"lgg_role": "prediction", "lgg_model": "/models/tiny.pt", "lgg_model_label": "tiny.pt",
                 "lgg_ai_mask": ai.copy()})
    layer = viewer.add_labels(ai.copy(), name=f"{pid} tumour", metadata=meta)
    layer.data_setitem((np.full(5, 3), np.full(5, 40), np.arange(40, 45)), 1)  # 5 voxels added
    layer.data_setitem((np.full(4, 2), np.full(4, 20), np.arange(20, 24)), 0)  # 4 voxels erased
    return layer


def make_export_widget(viewer, out):
    from napari_lgg_seg.widgets.export import ExportWidget

    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    widget.output_folder.value = out or None
    return widget


def test_export_roundtrip_keeps_source_images(make_napari_viewer, phantom_patient, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    pid = phantom_patient.name
    layer = corrected_layer(viewer, pid)
    recovery.save_recovery(pid, layer.data)
    widget = make_export_widget(viewer, tmp_path / "out")
    assert widget.selected_layer() is layer  # the tumour layer is preferred over the ground truth
    assert not widget.overwrite.value
    target = widget.export()
    assert target == tmp_path / "out" / pid
    assert "Exported 12 slices" in widget.status_label.value
    assert not recovery.has_recovery(pid)  # export clears the autosave

    original = load_patient(phantom_patient)
    back = load_patient(target)
    np.testing.assert_array_equal(back.masks, np.asarray(layer.data))
    np.testing.assert_array_equal(back.images, original.images)
    assert back.slice_numbers == original.slice_numbers
    for src, dst in zip(original.image_files, back.image_files):
        assert open(src, "rb").read() == open(dst, "rb").read()  # copied byte for byte
    assert set(np.unique(tifffile.imread(back.mask_files[3]))) <= {0, 255}
    sidecar = json.loads((target / "lgg_seg_export.json").read_text())
    assert sidecar["voxels_edited"] == 9
    assert sidecar["model"] == "/models/tiny.pt"
    assert sidecar["tumour_voxels"] == int(np.count_nonzero(layer.data))

    # a second export refuses to overwrite and says so; nothing changes on disk
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    layer.data_setitem((np.full(3, 0), np.full(3, 1), np.arange(3)), 1)
    assert widget.export() is None
    text = widget.status_label.value
    assert "already exists" in text and "Overwrite" in text
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    widget.overwrite.value = True
    assert widget.export() == target
    np.testing.assert_array_equal(load_patient(target).masks, np.asarray(layer.data))


def test_export_sample_phantom_writes_its_pixels(make_napari_viewer, tmp_path):
    from napari_lgg_seg._sample_data import SAMPLE_PATIENT_ID

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    pid = SAMPLE_PATIENT_ID
    layer = corrected_layer(viewer, pid)
    widget = make_export_widget(viewer, tmp_path / "out")
    widget.select_layer(layer)
    target = widget.export()
    assert target is not None, widget.status_label.value
    back = load_patient(target)
    images = np.stack([viewer.layers[f"{pid} {c}"].data for c in ("pre-contrast", "FLAIR", "post-contrast")], -1)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.masks, np.asarray(layer.data))
    # and the reader opens the export as a patient again
    layers = napari_get_reader(str(target))(str(target))
    assert [kw["name"] for _, kw, _ in layers][-1] == f"{pid} ground truth"


def test_export_needs_a_folder_and_a_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = make_export_widget(viewer, "")
    assert widget.export() is None
    assert "Choose a Labels layer" in widget.status_label.value
    widget.select_layer(viewer.add_labels(np.zeros((2, 8, 8), np.uint8), name="scratch"))  # chosen by the user
    assert widget.export() is None
    assert "output folder" in widget.status_label.value


def test_writer_contribution_roundtrip(make_napari_viewer, phantom_patient, tmp_path):
    from napari_lgg_seg._writer import write_mask_folder

    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    pid = phantom_patient.name
    truth = viewer.layers[f"{pid} ground truth"]
    edited = np.array(truth.data)
    edited[0, :3, :3] = 1
    truth.data = edited
    out = tmp_path / "masks"
    written = write_mask_folder(str(out), truth.data, {"name": truth.name, "metadata": truth.metadata})
    assert written == [str(out / pid)]
    files = sorted((out / pid).glob("*_mask.tif"))
    assert len(files) == 12
    k = load_patient(phantom_patient).slice_numbers
    back = np.stack([tifffile.imread(out / pid / f"{pid}_{i}_mask.tif") for i in k])
    assert set(np.unique(back)) <= {0, 255}
    np.testing.assert_array_equal(back > 0, edited > 0)
    with pytest.raises(FileExistsError):
        write_mask_folder(str(out), truth.data, {"name": truth.name, "metadata": truth.metadata})


def test_writer_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((3, 16, 16), np.uint8)
    data[1, 4:8, 4:8] = 1
    layer = viewer.add_labels(data, name="my edit", metadata={"lgg_patient_id": "P_1", "lgg_slice_numbers": [4, 5, 6]})
    viewer.layers.selection = {layer}
    saved = viewer.layers.save(str(tmp_path / "export"), selected=True, plugin=PLUGIN)
    assert saved == [str(tmp_path / "export" / "P_1")]
    back = tifffile.imread(tmp_path / "export" / "P_1" / "P_1_5_mask.tif")
    np.testing.assert_array_equal(back, data[1] * 255)


def test_export_dock_never_offers_the_ground_truth_by_default(make_napari_viewer, phantom_patient, tmp_path):
    """issue 13, bug 6 (through the manifest): with no tumour layer, nothing is chosen (the ground truth would be
    exported as "corrected"); a tumour layer added later is offered; a layer the user picks himself is kept."""
    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    pid = phantom_patient.name
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export corrected masks")
    widget.output_folder.value = tmp_path / "out"
    truth = viewer.layers[f"{pid} ground truth"]
    assert truth in widget.labels_layer.choices and widget.selected_layer() is None
    assert widget.export() is None and "Choose a Labels layer" in widget.status_label.value
    assert not (tmp_path / "out").exists()
    viewer.add_labels(np.zeros((2, 8, 8), np.uint8), name="scratch")  # another non-tumour layer: still nothing
    assert widget.selected_layer() is None
    layer = corrected_layer(viewer, pid)
    assert widget.selected_layer() is layer
    widget.labels_layer.value = truth  # the user's own choice survives layer changes
    viewer.add_labels(np.zeros((2, 8, 8), np.uint8), name="scratch 2")
    assert widget.selected_layer() is truth


def test_export_patient_is_callable_without_the_dock(make_napari_viewer, phantom_patient, tmp_path):
    """The workflow's entry: the patient's tumour layer (never the ground truth), overwrite semantics, autosave."""
    from napari_lgg_seg.export import export_patient
    from napari_lgg_seg.layers import has_unexported_edits

    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    pid = phantom_patient.name
    with pytest.raises(ValueError, match="no tumour layer"):
        export_patient(viewer, tmp_path / "out", patient_id=pid)
    assert not (tmp_path / "out").exists()
    layer = corrected_layer(viewer, pid)
    recovery.save_recovery(pid, layer.data)
    assert has_unexported_edits(layer)
    target = export_patient(viewer, tmp_path / "out", patient_id=pid)
    assert target == tmp_path / "out" / pid and not recovery.has_recovery(pid) and not has_unexported_edits(layer)
    np.testing.assert_array_equal(load_patient(target).masks, np.asarray(layer.data))
    with pytest.raises(FileExistsError):
        export_patient(viewer, tmp_path / "out", patient_id=pid)
    layer.data_setitem((np.full(3, 0), np.full(3, 1), np.arange(3)), 1)
    assert export_patient(viewer, tmp_path / "out", patient_id=pid, overwrite=True) == target
    np.testing.assert_array_equal(load_patient(target).masks, np.asarray(layer.data))
