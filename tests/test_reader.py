"""The npe2 reader: patient folders, single slices, dataset roots and broken input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from matplotlib.colors import to_rgba

from conftest import REAL_DATA, requires_real_data
from napari_lgg_seg._reader import napari_get_reader
from napari_lgg_seg.display import TRUTH_COLOR, TUMOUR_COLOR, head_mask
from napari_lgg_seg.io import LGGFormatError, write_patient_folder

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
    assert tuple(viewer.dims.axis_labels) == ("slice", "y", "x")  # the slider says "slice", not "0" (issue 13)


def test_the_layer_list_is_widened_so_patient_names_are_not_cut(make_napari_viewer, qtbot, phantom_patient):
    """napari cuts long layer names in the middle ("TCGA_HT_A61...00127 FLAIR"): with the plugin's docks open,
    opening a patient widens the layer-list dock to fit "<PATIENT> tumour probability" (never narrows it; at most a
    third of the window)."""
    from qtpy.QtGui import QFontMetrics

    from napari_lgg_seg.widgets._common import LAYER_ROW_EXTRA_PX, LONGEST_SUFFIX
    from napari_lgg_seg.widgets.segment import segment_dock

    viewer = make_napari_viewer(show=True)
    segment_dock(viewer)
    window = viewer.window._qt_window
    window.resize(1400, 900)
    dock = viewer.window._qt_viewer.dockLayerList
    qtbot.waitUntil(lambda: dock.isVisible(), timeout=5_000)
    font = dock.widget().font()
    font.setBold(True)
    wanted = min(QFontMetrics(font).horizontalAdvance(phantom_patient.name + LONGEST_SUFFIX) + LAYER_ROW_EXTRA_PX,
                 window.width() // 3)
    assert dock.width() < wanted  # napari's own width cuts the names
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    qtbot.waitUntil(lambda: dock.width() >= wanted - 2, timeout=5_000)


def test_flair_contrast_comes_from_the_patients_own_head_voxels(phantom_patient):
    pid = phantom_patient.name
    layers = by_name(read(phantom_patient))
    flair, kwargs, _ = layers[f"{pid} FLAIR"]
    lo, hi = kwargs["contrast_limits"]
    head = head_mask(flair)
    np.testing.assert_allclose((lo, hi), np.percentile(flair[head], (0.5, 99.5)), atol=3)  # estimated on 1/4
    truth = layers[f"{pid} ground truth"][0].astype(bool)
    brain = float(np.median(flair[head & ~truth]))
    lesion = float(np.median(flair[truth]))
    # brain mid-grey and the lesion brighter, not both squeezed into the bottom quarter of a 0-255 window
    assert 0.35 < (brain - lo) / (hi - lo) < (lesion - lo) / (hi - lo) <= 1
    for name in (f"{pid} pre-contrast", f"{pid} post-contrast"):
        data, kw, _ = layers[name]
        np.testing.assert_allclose(kw["contrast_limits"], np.percentile(data[head], (0.5, 99.5)), atol=3)


def test_channels_show_one_at_a_time_and_truth_is_an_outline(make_napari_viewer, phantom_patient, quiet_settings):
    pid = phantom_patient.name
    viewer = make_napari_viewer()
    viewer.open(str(phantom_patient), plugin=PLUGIN)
    flair, pre, post = (viewer.layers[f"{pid} {c}"] for c in ("FLAIR", "pre-contrast", "post-contrast"))
    assert {layer.blending for layer in (flair, pre, post)} == {"translucent"}  # nothing adds on top
    assert [layer.visible for layer in (flair, pre, post)] == [True, False, False]
    pre.visible = True  # showing a channel hides the one that was shown
    assert [layer.visible for layer in (flair, pre, post)] == [False, True, False]
    flair.visible = True
    assert [layer.visible for layer in (flair, pre, post)] == [True, False, False]
    viewer.layers.remove(pre)
    viewer.layers.insert(0, pre)  # re-inserted (as the browser may do): still one hook, same behaviour
    pre.visible = True
    assert [layer.visible for layer in (flair, pre, post)] == [False, True, False]
    flair.visible = True
    viewer.canvas.grid.enabled = True  # side by side in a grid: all may show
    pre.visible = post.visible = True
    assert [layer.visible for layer in (flair, pre, post)] == [True, True, True]
    truth = viewer.layers[f"{pid} ground truth"]
    assert truth.contour == 2
    np.testing.assert_allclose(truth.colormap.map(np.array([1]))[0], to_rgba(TRUTH_COLOR))
    assert to_rgba(TRUTH_COLOR) != to_rgba(TUMOUR_COLOR)
    assert truth.colormap.map(np.array([0]))[0][3] == 0  # background transparent


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


def test_dataset_root_in_a_viewer_opens_the_browser(make_napari_viewer, phantom_root, quiet_settings):
    patients = sorted(p.name for p in phantom_root.iterdir())
    viewer = make_napari_viewer()
    viewer.open(str(phantom_root), plugin=PLUGIN)
    assert {layer.metadata["lgg_patient_id"] for layer in viewer.layers} == {patients[0]}
    assert {layer.metadata["lgg_dataset_root"] for layer in viewer.layers} == {str(phantom_root.resolve())}
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "Patient browser")  # the one the reader's hook opened
    assert len(viewer.window.dock_widgets) == 1
    assert browser.current_patient_id == patients[0]
    assert browser.next()
    assert {layer.metadata["lgg_patient_id"] for layer in viewer.layers} == {patients[1]}
    assert len(viewer.layers) == 4


def test_the_reader_imports_no_widget_and_no_qt(phantom_root):
    """The reader (and what it imports) never imports a widget: a dataset root read in a script stays Qt-free."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(napari_get_reader.__code__.co_filename).parent
    for module in ("_reader.py", "display.py", "_viewer_hooks.py", "io.py"):
        tree = ast.parse((package / module).read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        assert not [m for m in imported if "widgets" in m or "qtpy" in m or "Qt" in m], (module, imported)
    code = ("import sys; import napari; from napari_lgg_seg._reader import napari_get_reader; "
            f"layers = napari_get_reader({str(phantom_root)!r})({str(phantom_root)!r}); "
            "print(len(layers), sorted(m for m in sys.modules if m.startswith(('qtpy', 'PyQt', 'napari_lgg_seg.widgets',"
            " 'napari._qt'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4 []"


def write_segment_output(out_root, patient_folder, masks, **sidecar):
    """A masks-only folder as `napari-lgg-seg segment` writes it (sidecar naming the source folder)."""
    pid = patient_folder.name
    return write_patient_folder(out_root, pid, masks, masks_only=True,
                                sidecar={"patient_id": pid, "source_folder": str(patient_folder.resolve()),
                                         "tool": "napari-lgg-seg segment", **sidecar})


def test_segment_output_opens_over_its_source_images(tmp_path, phantom_root, phantom_patient):
    pid = phantom_patient.name
    masks = np.zeros((12, 64, 64), np.uint8)
    masks[4:7, 10:30, 12:20] = 1
    folder = write_segment_output(tmp_path / "out", phantom_patient, masks, model="/models/m.pt")
    for path in (folder, folder / f"{pid}_5_mask.tif"):
        layers = by_name(read(path))
        assert list(layers) == [f"{pid} pre-contrast", f"{pid} post-contrast", f"{pid} FLAIR", f"{pid} ground truth",
                                f"{pid} tumour"]
        data, kwargs, kind = layers[f"{pid} tumour"]
        assert kind == "labels"
        np.testing.assert_array_equal(data, masks)
        meta = kwargs["metadata"]
        assert meta["lgg_role"] == "prediction" and meta["lgg_folder"] == str(phantom_patient)
        assert meta["lgg_masks_folder"] == str(folder) and meta["lgg_model"] == "/models/m.pt"
        np.testing.assert_array_equal(meta["lgg_ai_mask"], masks)
        np.testing.assert_array_equal(layers[f"{pid} FLAIR"][0][0],
                                      tifffile.imread(phantom_patient / f"{pid}_1.tif")[..., 1])
    # the whole output root opens like a dataset root: first patient, over its images
    for other in sorted(phantom_root.iterdir())[1:]:
        write_segment_output(tmp_path / "out", other, masks)
    layers = read(tmp_path / "out")
    assert [kwargs["name"] for _, kwargs, _ in layers][-1] == f"{pid} tumour"
    assert {kwargs["metadata"]["lgg_dataset_root"] for _, kwargs, _ in layers} == {str((tmp_path / "out").resolve())}


def test_segment_output_root_in_a_viewer_is_browsed_over_its_sources(make_napari_viewer, tmp_path, phantom_root,
                                                                       quiet_settings):
    patients = sorted(phantom_root.iterdir())
    for i, patient in enumerate(patients):
        masks = np.zeros((12, 64, 64), np.uint8)
        masks[5, 10:20, 10 + i:20 + i] = 1
        write_segment_output(tmp_path / "out", patient, masks)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "out"), plugin=PLUGIN)
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "Patient browser")
    assert browser.current_patient_id == patients[0].name and len(browser.folders) == 3
    assert browser.next()
    names = [layer.name for layer in viewer.layers]
    assert names == [f"{patients[1].name} {n}" for n in ("pre-contrast", "post-contrast", "FLAIR", "ground truth",
                                                          "tumour")]
    tumour = viewer.layers[f"{patients[1].name} tumour"]
    assert tumour.data[5, 10:20, 11:21].all() and tumour.data.sum() == 100
    assert tumour.metadata["lgg_folder"] == str(patients[1])  # exports copy the source images


def test_segment_output_with_its_source_gone_says_what_to_do(tmp_path, phantom_patient):
    import shutil

    masks = np.zeros((12, 64, 64), np.uint8)
    folder = write_segment_output(tmp_path / "out", phantom_patient, masks)
    shutil.rmtree(phantom_patient)
    reader = napari_get_reader(str(folder))
    assert reader is not None
    with pytest.raises(LGGFormatError, match="no image slices are there now"):
        reader(str(folder))
    # masks without a sidecar naming their source are not claimed
    bare = write_patient_folder(tmp_path / "bare", "P_01", masks, masks_only=True)
    assert napari_get_reader(str(bare)) is None


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
