"""Export of corrected masks as training data, and the npe2 mask-folder writer."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lgg_seg._sample_data import sample_patient
from napari_lgg_seg._writer import write_mask_folder
from napari_lgg_seg.export import export_corrected_patient
from napari_lgg_seg.io import LGGFormatError, load_patient


def quiet_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_patient(path)


def edited(masks: np.ndarray) -> np.ndarray:
    out = masks.copy()
    out[2, 10:20, 10:20] = 1  # a brush stroke
    out[5] = 0  # an erased slice
    return out


def test_export_round_trip_copies_source_files(phantom_patient, tmp_path):
    patient = quiet_load(phantom_patient)
    masks = edited(patient.masks)
    target = export_corrected_patient(tmp_path / "export", masks, patient.metadata(), images=patient.images,
                                      model="tiny.pt", voxels_edited=123)
    assert target == tmp_path / "export" / patient.patient_id
    back = quiet_load(target)
    assert back.patient_id == patient.patient_id
    assert back.slice_numbers == patient.slice_numbers
    np.testing.assert_array_equal(back.images, patient.images)
    np.testing.assert_array_equal(back.masks, masks)
    for source, copy in zip(patient.image_files, back.image_files):
        assert Path(source).name == Path(copy).name
        assert Path(source).read_bytes() == Path(copy).read_bytes()  # byte for byte
    for k in patient.slice_numbers:
        assert set(np.unique(tifffile.imread(target / f"{patient.patient_id}_{k}_mask.tif"))) <= {0, 255}
    sidecar = json.loads((target / "lgg_seg_export.json").read_text())
    assert sidecar["patient_id"] == patient.patient_id
    assert sidecar["source_folder"] == str(phantom_patient)
    assert sidecar["source_files_copied"] is True
    assert sidecar["model"] == "tiny.pt"
    assert sidecar["voxels_edited"] == 123
    assert sidecar["tumour_voxels"] == int(masks.sum())
    assert sidecar["slices"] == patient.num_slices
    assert sidecar["tool"] == "napari-lgg-seg"
    assert sidecar["exported"]
    # the source folder itself is untouched
    assert quiet_load(phantom_patient).masks.sum() == patient.masks.sum()


def test_export_without_source_files_writes_pixels(tmp_path):
    patient = sample_patient(n_slices=6)
    masks = np.zeros_like(patient.masks)
    masks[3, 100:120, 100:130] = 1
    target = export_corrected_patient(tmp_path, masks, patient.metadata(), images=patient.images)
    back = quiet_load(target)
    np.testing.assert_array_equal(back.images, patient.images)
    np.testing.assert_array_equal(back.masks, masks)
    sidecar = json.loads((target / "lgg_seg_export.json").read_text())
    assert sidecar["source_files_copied"] is False
    assert sidecar["tumour_voxels"] == 600


def test_export_with_moved_source_files_writes_pixels(phantom_patient, tmp_path):
    patient = quiet_load(phantom_patient)
    meta = patient.metadata()
    Path(patient.image_files[0]).unlink()  # the source is gone in the meantime
    target = export_corrected_patient(tmp_path / "out", patient.masks, meta, images=patient.images)
    np.testing.assert_array_equal(quiet_load(target).images, patient.images)
    assert json.loads((target / "lgg_seg_export.json").read_text())["source_files_copied"] is False


def test_export_renamed_patient(phantom_patient, tmp_path):
    patient = quiet_load(phantom_patient)
    target = export_corrected_patient(tmp_path, patient.masks, patient.metadata(), images=patient.images,
                                      patient_id="NEW/../ID")
    assert target.parent == tmp_path and "/" not in target.name and ".." not in target.name
    back = quiet_load(target)
    assert back.patient_id == target.name
    np.testing.assert_array_equal(back.images, patient.images)


def test_export_refuses_overwrite(phantom_patient, tmp_path):
    patient = quiet_load(phantom_patient)
    first = export_corrected_patient(tmp_path, patient.masks, patient.metadata(), images=patient.images)
    mask_file = first / f"{patient.patient_id}_6_mask.tif"
    before = mask_file.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        export_corrected_patient(tmp_path, np.zeros_like(patient.masks), patient.metadata(), images=patient.images)
    assert mask_file.read_bytes() == before
    export_corrected_patient(tmp_path, np.zeros_like(patient.masks), patient.metadata(), images=patient.images,
                             overwrite=True)
    assert not tifffile.imread(mask_file).any()


def test_export_rejects_partial_volumes(phantom_patient, tmp_path):
    patient = quiet_load(phantom_patient)
    with pytest.raises(LGGFormatError, match="export needs the full volume"):
        export_corrected_patient(tmp_path / "out", patient.masks[:5], patient.metadata(), images=patient.images)
    with pytest.raises(LGGFormatError, match=r"3D \(Z, H, W\)"):
        export_corrected_patient(tmp_path / "out", patient.masks[0], patient.metadata(), images=patient.images)
    assert not (tmp_path / "out").exists()


def test_writer_mask_folder(tmp_path):
    data = np.zeros((3, 16, 16), np.uint8)
    data[1, 2:6, 2:6] = 1
    data[2, 8, 8] = 2  # any label counts as tumour
    meta = {"name": "PAT ground truth", "metadata": {"lgg_patient_id": "PAT_1", "lgg_slice_numbers": [5, 6, 7]}}
    written = write_mask_folder(str(tmp_path / "masks"), data, meta)
    folder = Path(written[0])
    assert folder == tmp_path / "masks" / "PAT_1"
    assert sorted(p.name for p in folder.glob("*.tif")) == [f"PAT_1_{k}_mask.tif" for k in (5, 6, 7)]
    np.testing.assert_array_equal(tifffile.imread(folder / "PAT_1_6_mask.tif"), (data[1] > 0) * 255)
    assert tifffile.imread(folder / "PAT_1_7_mask.tif")[8, 8] == 255
    with pytest.raises(FileExistsError):
        write_mask_folder(str(tmp_path / "masks"), data, meta)


def test_writer_without_metadata_numbers_slices_from_one(tmp_path):
    written = write_mask_folder(str(tmp_path), np.ones((8, 8), np.uint8), {"name": "my labels"})
    folder = Path(written[0])
    assert folder.name == "my_labels"
    assert [p.name for p in folder.glob("*.tif")] == ["my_labels_1_mask.tif"]


def _write_original(folder: Path, pid: str = "ORIG_01_20000101", n: int = 3) -> Path:
    """A patient as the user has it: slices and ground truth, no sidecar of the plugin."""
    from napari_lgg_seg.sample import make_phantom

    images, masks = make_phantom(n_slices=n, size=32, seed=3)
    folder.mkdir(parents=True)
    for i in range(n):
        tifffile.imwrite(folder / f"{pid}_{i + 1}.tif", images[i], photometric="rgb")
        tifffile.imwrite(folder / f"{pid}_{i + 1}_mask.tif", masks[i] * 255)
    return folder


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_overwrite_never_replaces_the_source_folder(tmp_path):
    """Issue 12: export with overwrite into the root the patient was read from replaced the original ground
    truth and deleted notes.txt. The source folder is never replaced, with or without a plugin sidecar."""
    source = _write_original(tmp_path / "data" / "ORIG_01_20000101")
    (source / "notes.txt").write_text("mine")
    patient = quiet_load(source)
    before = _snapshot(tmp_path / "data")
    with pytest.raises(FileExistsError, match=r"ORIG_01_20000101.*read from"):
        export_corrected_patient(tmp_path / "data", np.ones_like(patient.masks), patient.metadata(),
                                 images=patient.images, overwrite=True)
    (source / "lgg_seg_export.json").write_text("{}")  # even a folder the plugin wrote once
    (source / "notes.txt").unlink()
    before = _snapshot(tmp_path / "data")
    with pytest.raises(FileExistsError, match="read from"):
        export_corrected_patient(tmp_path / "data", np.ones_like(patient.masks), patient.metadata(),
                                 images=patient.images, overwrite=True)
    assert _snapshot(tmp_path / "data") == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ORIG_01_20000101"]


def test_export_overwrite_only_replaces_what_the_plugin_wrote(phantom_patient, tmp_path):
    """Overwrite replaces a previous export (sidecar, its own slices), never a folder without a sidecar or one
    holding a file the plugin did not write; the message names the folder."""
    patient = quiet_load(phantom_patient)
    pid = patient.patient_id
    out = tmp_path / "out"
    _write_original(out / pid, pid=pid)  # the user's own copy of the patient: no sidecar
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=rf"{pid} has no lgg_seg_export.json"):
        export_corrected_patient(out, patient.masks, patient.metadata(), images=patient.images, overwrite=True)
    assert _snapshot(out) == before
    (out / pid / "lgg_seg_export.json").write_text("{}")
    (out / pid / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=rf"{pid} holds files napari-lgg-seg did not write \(notes.txt\)"):
        export_corrected_patient(out, patient.masks, patient.metadata(), images=patient.images, overwrite=True)
    assert _snapshot(out) == before
    (out / pid / "notes.txt").unlink()
    target = export_corrected_patient(out, edited(patient.masks), patient.metadata(), images=patient.images,
                                      overwrite=True)  # a previous export: replaced
    np.testing.assert_array_equal(quiet_load(target).masks, edited(patient.masks))
    assert sorted(p.name for p in out.iterdir()) == [pid]
