"""The npe2 reader: patient folders, single slices, dataset roots and broken input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import REAL_DATA, requires_real_data
from napari_lgg_seg._reader import napari_get_reader
from napari_lgg_seg.io import LGGFormatError

PLUGIN = "napari-lgg-seg"
META_KEYS = {"lgg_patient_id", "lgg_folder", "lgg_slice_numbers", "lgg_image_files", "lgg_mask_files"}


def read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


def by_name(layers):
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layers}


def test_slices_are_in_numeric_order(phantom_patient):
    pid = phantom_patient.name
    layers = by_name(read(phantom_patient))
    flair = layers[f"{pid} FLAIR"][0]
    truth = layers[f"{pid} ground truth"][0]
    assert flair.shape == (12, 64, 64)
    for k in (1, 2, 9, 10, 12):  # "_10" sorts before "_2" as text; the reader must not do that
        np.testing.assert_array_equal(flair[k - 1], tifffile.imread(phantom_patient / f"{pid}_{k}.tif")[..., 1])
        np.testing.assert_array_equal(truth[k - 1], tifffile.imread(phantom_patient / f"{pid}_{k}_mask.tif") > 0)
    assert not np.array_equal(flair[1], flair[9])
    assert layers[f"{pid} FLAIR"][1]["metadata"]["lgg_slice_numbers"] == list(range(1, 13))


def test_layer_names_metadata_and_visibility(phantom_patient):
    pid = phantom_patient.name
    layers = read(phantom_patient)
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == [f"{pid} pre-contrast", f"{pid} post-contrast", f"{pid} FLAIR", f"{pid} ground truth"]
    assert [kind for _, _, kind in layers] == ["image", "image", "image", "labels"]
    visible = {kwargs["name"]: kwargs["visible"] for _, kwargs, _ in layers}
    assert visible == {names[0]: False, names[1]: False, names[2]: True, names[3]: False}
    for data, kwargs, _ in layers:
        assert data.dtype == np.uint8
        meta = kwargs["metadata"]
        assert META_KEYS <= set(meta) and meta["lgg_patient_id"] == pid
        assert meta["lgg_image_files"][0].endswith(f"{pid}_1.tif")
    channels = [kwargs["metadata"].get("lgg_channel") for _, kwargs, _ in layers]
    assert channels == ["pre-contrast", "post-contrast", "FLAIR", None]
    assert layers[3][1]["metadata"]["lgg_role"] == "ground_truth"
    assert set(np.unique(layers[3][0])) <= {0, 1}


def test_flair_is_on_top_in_the_viewer(make_napari_viewer, phantom_patient):
    pid = phantom_patient.name
    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    names = [layer.name for layer in viewer.layers]
    assert names[-2:] == [f"{pid} FLAIR", f"{pid} ground truth"]
    top_visible = [layer for layer in viewer.layers if layer.visible][-1]
    assert top_visible.name == f"{pid} FLAIR"
    assert viewer.dims.nsteps[0] == 12


def test_non_lgg_paths_are_declined(tmp_path, phantom_root, phantom_patient):
    (tmp_path / "notes.txt").write_text("hello")
    other = tmp_path / "photos"
    other.mkdir()
    tifffile.imwrite(other / "holiday.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(other / "scan_final.tif", np.zeros((8, 8), np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "notes.txt", other, other / "holiday.tif", empty, tmp_path / "missing"):
        assert napari_get_reader(str(path)) is None, path
    two = [str(phantom_root / p.name) for p in sorted(phantom_root.iterdir())[:2]]
    assert napari_get_reader(two) is None  # two different patients at once


def test_a_single_slice_opens_the_whole_patient(phantom_patient):
    pid = phantom_patient.name
    for name in (f"{pid}_5.tif", f"{pid}_11_mask.tif"):
        layers = by_name(read(phantom_patient / name))
        assert layers[f"{pid} FLAIR"][0].shape == (12, 64, 64)


def test_dataset_root_gives_the_first_patient(phantom_root):
    first = sorted(p.name for p in phantom_root.iterdir())[0]
    layers = read(phantom_root)
    assert [kwargs["name"] for _, kwargs, _ in layers][2] == f"{first} FLAIR"
    assert all(kwargs["metadata"]["lgg_patient_id"] == first for _, kwargs, _ in layers)


def test_dataset_root_in_a_viewer_opens_the_browser(make_napari_viewer, phantom_root):
    patients = sorted(p.name for p in phantom_root.iterdir())
    viewer = make_napari_viewer()
    viewer.open(str(phantom_root), plugin=PLUGIN)
    assert {layer.metadata["lgg_patient_id"] for layer in viewer.layers} == {patients[0]}
    browser = viewer.window.dock_widgets["LGG patient browser"]
    assert browser.list.count() == 3 and browser.current_patient_id == patients[0]
    assert browser.next()
    assert {layer.metadata["lgg_patient_id"] for layer in viewer.layers} == {patients[1]}
    assert len(viewer.layers) == 4


def test_corrupt_tiff_names_the_file(phantom_patient):
    pid = phantom_patient.name
    broken = phantom_patient / f"{pid}_3.tif"
    broken.write_bytes(b"II*\x00" + b"\x13" * 50)
    reader = napari_get_reader(str(phantom_patient))
    assert reader is not None  # it looks like LGG data...
    with pytest.raises(LGGFormatError, match=f"{pid}_3.tif"):
        reader(str(phantom_patient))  # ...so a clear error, not a silent None


@requires_real_data
def test_real_patient_opens_with_all_slices():
    folder = sorted(p for p in REAL_DATA.iterdir() if p.is_dir())[0]
    n_masks = len(list(folder.glob("*_mask.tif")))
    layers = by_name(read(folder))
    pid = folder.name
    flair, truth = layers[f"{pid} FLAIR"][0], layers[f"{pid} ground truth"][0]
    assert flair.shape[0] == n_masks == truth.shape[0]
    assert flair.shape[1:] == (256, 256)
    assert flair.dtype == np.uint8 and truth.dtype == np.uint8
    numbers = layers[f"{pid} FLAIR"][1]["metadata"]["lgg_slice_numbers"]
    assert numbers == sorted(numbers) and len(numbers) == n_masks
