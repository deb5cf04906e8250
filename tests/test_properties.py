"""Property-based tests (hypothesis): slice names and the export -> read round trip."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_lgg_seg.export import export_corrected_patient
from napari_lgg_seg.io import load_patient, parse_slice_name, sanitize_name, sort_slice_files

# patient ids as they appear in dataset folders: letters, digits, '_' and '-'
patient_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}", fullmatch=True)
suffixes = st.sampled_from([".tif", ".tiff", ".TIF", ".Tiff"])


def slice_name(patient: str, k: int, mask: bool, suffix: str = ".tif", width: int = 0) -> str:
    return f"{patient}_{k:0{width}d}{'_mask' if mask else ''}{suffix}"


@settings(max_examples=200, deadline=None)
@given(patient_ids, st.integers(0, 10**6), st.booleans(), suffixes, st.integers(0, 4))
def test_slice_name_round_trip(patient, k, mask, suffix, width):
    parsed = parse_slice_name(slice_name(patient, k, mask, suffix, width))
    assert parsed is not None
    assert (parsed.patient, parsed.index, parsed.is_mask) == (patient, k, mask)


@settings(max_examples=100, deadline=None)
@given(patient_ids, st.integers(0, 1000), st.sampled_from([".png", ".tif.bak", ".jpg", "", ".tifx"]))
def test_other_extensions_are_not_slices(patient, k, suffix):
    assert parse_slice_name(f"{patient}_{k}{suffix}") is None
    assert parse_slice_name(f"{patient}_{k}_mask{suffix}") is None


@settings(max_examples=100, deadline=None)
@given(patient_ids, st.lists(st.integers(0, 5000), min_size=1, max_size=40, unique=True), st.randoms())
def test_numeric_order_is_kept_under_shuffles(patient, numbers, rnd):
    names = [slice_name(patient, k, m) for k in numbers for m in (False, True)]
    rnd.shuffle(names)
    parsed = [parse_slice_name(n) for n in sort_slice_files(names)]
    assert [(p.index, p.is_mask) for p in parsed] == [(k, m) for k in sorted(numbers) for m in (False, True)]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_sanitize_name_is_one_safe_component(name):
    cleaned = sanitize_name(name)
    assert cleaned and "/" not in cleaned and "\\" not in cleaned and ".." not in cleaned
    assert not cleaned.startswith(".")
    assert sanitize_name(cleaned) == cleaned  # idempotent


@st.composite
def small_patients(draw):
    z = draw(st.integers(1, 4))
    h = draw(st.integers(4, 20))
    w = draw(st.integers(4, 20))
    images = draw(arrays(np.uint8, (z, h, w, 3)))
    masks = draw(arrays(np.uint8, (z, h, w), elements=st.integers(0, 1)))
    numbers = sorted(draw(st.lists(st.integers(0, 300), min_size=z, max_size=z, unique=True)))
    patient = draw(patient_ids)
    return patient, images, masks, numbers


@settings(max_examples=25, deadline=None)
@given(small_patients())
def test_export_then_read_round_trip(case):
    patient, images, masks, numbers = case
    metadata = {"lgg_patient_id": patient, "lgg_slice_numbers": numbers, "lgg_image_files": [], "lgg_folder": ""}
    with tempfile.TemporaryDirectory() as tmp:
        target = export_corrected_patient(Path(tmp), masks, metadata, images=images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gaps in the slice numbers are expected here
            back = load_patient(target)
        assert back.patient_id == sanitize_name(patient)
        assert back.slice_numbers == numbers
        np.testing.assert_array_equal(back.images, images)
        np.testing.assert_array_equal(back.masks, masks)
