"""Synthetic phantoms (napari_lgg_seg.sample) and the npe2 sample data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_lgg_seg._sample_data import SAMPLE_PATIENT_ID, make_sample_data, sample_patient
from napari_lgg_seg.io import CHANNEL_NAMES, FLAIR_CHANNEL, find_patient_folders, load_patient
from napari_lgg_seg.sample import make_phantom, write_phantom_dataset


def test_phantom_shapes_and_types():
    images, masks = make_phantom(n_slices=10, size=64, seed=0)
    assert images.shape == (10, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (10, 64, 64) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert masks.any()


def test_phantom_is_deterministic_per_seed():
    a = make_phantom(n_slices=6, size=32, seed=5)
    b = make_phantom(n_slices=6, size=32, seed=5)
    c = make_phantom(n_slices=6, size=32, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_phantom_lesion_is_flair_bright_inside_the_head():
    images, masks = make_phantom(n_slices=24, size=128, seed=1)
    lesion = masks.astype(bool)
    head = images.max(axis=-1) > 10
    assert not (lesion & ~head).any()
    flair = images[..., FLAIR_CHANNEL].astype(float)
    brain = head & ~lesion & (flair > 40)
    assert flair[lesion].mean() > 1.5 * flair[brain].mean()  # about 1.8x brain, as in the real data
    # the lesion sits in the middle slices, not at the ends of the volume
    per_slice = lesion.reshape(24, -1).any(axis=1)
    assert not per_slice[0] and not per_slice[-1] and per_slice[12]


def test_phantom_without_lesion():
    images, masks = make_phantom(n_slices=4, size=32, lesion=False)
    assert not masks.any() and images.any()


def test_write_phantom_dataset_is_readable(tmp_path):
    folders = write_phantom_dataset(tmp_path, n_patients=2, n_slices=5, size=32, seed=3, prefix="SYN")
    assert [f.name for f in folders] == ["SYN_00_20000101", "SYN_01_20000101"]
    assert find_patient_folders(tmp_path) == folders
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset: no reader warnings
        patient = load_patient(folders[1])
    images, masks = make_phantom(5, 32, seed=4)
    np.testing.assert_array_equal(patient.images, images)
    np.testing.assert_array_equal(patient.masks, masks)


def test_sample_patient():
    patient = sample_patient()
    assert patient.patient_id == SAMPLE_PATIENT_ID
    assert patient.images.shape == (24, 256, 256, 3)
    assert patient.masks is not None and patient.masks.any()
    assert patient.slice_numbers == list(range(1, 25))
    assert patient.image_files == [] and patient.folder == ""
    assert sample_patient(n_slices=5).num_slices == 5


def test_make_sample_data_layers():
    layers = make_sample_data()
    names = [meta["name"] for _, meta, _ in layers]
    assert names == [f"{SAMPLE_PATIENT_ID} {CHANNEL_NAMES[0]}", f"{SAMPLE_PATIENT_ID} {CHANNEL_NAMES[2]}",
                     f"{SAMPLE_PATIENT_ID} {CHANNEL_NAMES[1]}", f"{SAMPLE_PATIENT_ID} ground truth"]
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "image", "image", "labels"]
    visible = {meta["name"]: meta["visible"] for _, meta, _ in layers}
    assert visible[f"{SAMPLE_PATIENT_ID} FLAIR"] is True
    assert visible[f"{SAMPLE_PATIENT_ID} pre-contrast"] is False
    flair_data = layers[2][0]
    assert flair_data.shape == (24, 256, 256)
    for _, meta, _ in layers:
        assert meta["metadata"]["lgg_patient_id"] == SAMPLE_PATIENT_ID
        assert meta["metadata"]["lgg_slice_numbers"] == list(range(1, 25))


@pytest.mark.parametrize("size", [16, 48, 100])
def test_phantom_sizes(size):
    images, masks = make_phantom(n_slices=3, size=size, seed=0)
    assert images.shape == (3, size, size, 3) and masks.shape == (3, size, size)
