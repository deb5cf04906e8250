"""Dataset index, patient split and the decoded-slice cache (no model, no viewer)."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest

from napari_lgg_seg.data import index_patients, load_patient_cached, split_patients
from napari_lgg_seg.io import load_patient


def test_split_is_by_patient_seeded_and_disjoint():
    ids = [f"P{i:02d}" for i in range(30)]
    s1 = split_patients(ids, val_fraction=0.1, test_fraction=0.2, seed=0)
    s2 = split_patients(list(reversed(ids)), val_fraction=0.1, test_fraction=0.2, seed=0)
    s3 = split_patients(ids, val_fraction=0.1, test_fraction=0.2, seed=1)
    assert s1 == s2  # order of discovery does not matter, the seed does
    assert s1 != s3
    assert (len(s1["train"]), len(s1["val"]), len(s1["test"])) == (21, 3, 6)
    parts = [set(s1[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(ids)


def test_split_explicit_lists_win_and_are_checked():
    ids = ["A", "B", "C", "D", "E"]
    s = split_patients(ids, val=["B"], test=["E"], seed=3, val_fraction=0.5)
    assert s["val"] == ["B"] and s["test"] == ["E"] and s["train"] == ["A", "C", "D"]
    s = split_patients(ids, train=["A", "B"], test=["E"])
    assert s == {"train": ["A", "B"], "val": ["C", "D"], "test": ["E"]}
    with pytest.raises(ValueError, match="not in the data"):
        split_patients(ids, val=["Z"])
    with pytest.raises(ValueError, match="more than one"):
        split_patients(ids, train=["A"], val=["A"])


def test_index_patients_over_several_roots(phantom_root, tmp_path):
    other = tmp_path / "exported"
    (other / "EXTRA_PATIENT").mkdir(parents=True)
    src = next(p for p in sorted(phantom_root.iterdir()) if p.is_dir())
    for f in src.iterdir():
        (other / "EXTRA_PATIENT" / f.name.replace(src.name, "EXTRA_PATIENT")).write_bytes(f.read_bytes())
    index = index_patients([phantom_root, other])
    assert "EXTRA_PATIENT" in index and src.name in index


# --- decoded-slice cache ---------------------------------------------------------------------------------------------

def test_cache_is_reused_and_invalidated_when_files_change(phantom_patient, tmp_path):
    cache = tmp_path / "cache"
    first = load_patient_cached(phantom_patient, cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    again = load_patient_cached(phantom_patient, cache)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.masks, again.masks)
    assert again.slice_numbers == load_patient(phantom_patient).slice_numbers
    # editing a mask gives a new cache key: the stale cache is not used
    mask = sorted(phantom_patient.glob("*_mask.tif"))[0]
    mask.write_bytes(mask.read_bytes())
    os.utime(mask, ns=(1, 1))
    load_patient_cached(phantom_patient, cache)
    assert len(list(cache.glob("*.npz"))) == 2


def test_concurrent_runs_share_one_cache_without_clashing(phantom_patient, tmp_path):
    """Two training runs started together write the same cache file: neither may fail or read a torn file."""
    cache = tmp_path / "cache"
    errors, results = [], []

    def load():
        try:
            results.append(load_patient_cached(phantom_patient, cache))
        except Exception as err:  # pragma: no cover - the failure being tested for
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4 and all(np.array_equal(r.images, results[0].images) for r in results)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]  # no temporary files left behind


def test_unwritable_cache_warns_and_loads_anyway(phantom_patient, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("napari_lgg_seg.data.atomic_write", disk_full)
    with pytest.warns(UserWarning, match="No space left on device"):
        patient = load_patient_cached(phantom_patient, tmp_path / "cache")
    assert patient.images.shape[0] > 0


def test_corrupt_cache_is_ignored(phantom_patient, tmp_path):
    cache = tmp_path / "cache"
    load_patient_cached(phantom_patient, cache)
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(b"not a zip file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patient = load_patient_cached(phantom_patient, cache)
    np.testing.assert_array_equal(patient.images, load_patient(phantom_patient).images)


def test_hidden_leftovers_and_links_are_never_extra_patients(phantom_root):
    """A killed export's ``.P.partial-1234`` (slices inside) and a link to a patient inside the same root: each
    patient is indexed and split once, the hidden folder never (issue 12), and the leftover is named."""
    real = sorted(p for p in phantom_root.iterdir() if p.is_dir())
    partial = phantom_root / f".{real[0].name}.partial-1234"
    partial.mkdir()
    for f in sorted(real[0].iterdir())[:2]:
        (partial / f.name).write_bytes(f.read_bytes())
    os.symlink(real[1], phantom_root / "ZZ_link_01")
    with pytest.warns(UserWarning, match=r"\.partial-1234"):
        index = index_patients([phantom_root])
    assert sorted(index) == sorted(p.name for p in real)
    assert len({p.resolve() for p in index.values()}) == len(index)
    split = split_patients(list(index), val_fraction=0.34, seed=0)
    every = split["train"] + split["val"] + split["test"]
    assert sorted(every) == sorted(p.name for p in real)
    assert not any(p.startswith(".") for p in every)
