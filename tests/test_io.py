"""Reading and writing the LGG dataset layout (napari_lgg_seg.io)."""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lgg_seg import io
from napari_lgg_seg.io import (
    LGGFormatError,
    find_patient_folders,
    is_dataset_root,
    is_patient_folder,
    load_patient,
    parse_slice_name,
    sanitize_name,
    sort_slice_files,
    write_patient_folder,
)
from napari_lgg_seg.sample import make_phantom

PID = "TCGA_CS_4941_19960909"


def write_slices(folder: Path, pid: str, images: np.ndarray, masks: np.ndarray | None = None,
                 numbers: list[int] | None = None) -> Path:
    """Write slices by hand (not through write_patient_folder) so the reader is tested on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = numbers or list(range(1, len(images) + 1))
    for i, k in enumerate(numbers):
        tifffile.imwrite(folder / f"{pid}_{k}.tif", images[i], photometric="rgb")
        if masks is not None:
            tifffile.imwrite(folder / f"{pid}_{k}_mask.tif", masks[i].astype(np.uint8) * 255)
    return folder


# --- names and ordering -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"{PID}_12.tif", (PID, 12, False)),
        (f"{PID}_12_mask.tif", (PID, 12, True)),
        (f"{PID}_3.TIFF", (PID, 3, False)),
        (f"{PID}_3_MASK.TIF", (PID, 3, True)),
        ("A_B_007.tif", ("A_B", 7, False)),
        ("P_1_2.tif", ("P_1", 2, False)),
    ],
)
def test_parse_slice_name(name, expected):
    parsed = parse_slice_name(name)
    assert parsed is not None
    assert (parsed.patient, parsed.index, parsed.is_mask) == expected


@pytest.mark.parametrize("name", ["notes.txt", "P_1.png", "P_mask.tif", "P_a.tif", "_1.tif", "P_1_mask_x.tif", "P1.tif"])
def test_parse_slice_name_rejects(name):
    assert parse_slice_name(name) is None


def test_sort_slice_files_numeric_order():
    names = [f"{PID}_{k}{m}.tif" for k in (10, 2, 1, 33, 9) for m in ("", "_mask")]
    random.Random(0).shuffle(names)
    ordered = sort_slice_files(names)
    assert ordered == [f"{PID}_{k}{m}.tif" for k in (1, 2, 9, 10, 33) for m in ("", "_mask")]
    # lexicographic order would put _10 before _2: make sure that is not what we got
    assert ordered.index(f"{PID}_2.tif") < ordered.index(f"{PID}_10.tif")


def test_sort_slice_files_keeps_paths_and_puts_unparsable_first():
    names = [f"/data/{PID}/{PID}_10.tif", f"/data/{PID}/{PID}_2.tif", "/data/readme.tif"]
    assert sort_slice_files(names) == ["/data/readme.tif", f"/data/{PID}/{PID}_2.tif", f"/data/{PID}/{PID}_10.tif"]


# --- loading ----------------------------------------------------------------------------------


def test_load_patient_phantom_round_trip(tmp_path):
    images, masks = make_phantom(n_slices=12, size=64, seed=3)
    folder = write_slices(tmp_path / PID, PID, images, masks)
    patient = load_patient(folder)
    assert patient.patient_id == PID
    assert patient.images.shape == (12, 64, 64, 3) and patient.images.dtype == np.uint8
    assert patient.masks is not None and patient.masks.shape == (12, 64, 64) and patient.masks.dtype == np.uint8
    assert set(np.unique(patient.masks)) <= {0, 1}
    np.testing.assert_array_equal(patient.images, images)
    np.testing.assert_array_equal(patient.masks, masks)
    assert patient.slice_numbers == list(range(1, 13))
    assert patient.num_slices == 12
    assert [Path(f).name for f in patient.image_files] == [f"{PID}_{k}.tif" for k in range(1, 13)]
    assert [Path(f).name for f in patient.mask_files] == [f"{PID}_{k}_mask.tif" for k in range(1, 13)]
    meta = patient.metadata()
    assert meta["lgg_patient_id"] == PID
    assert meta["lgg_folder"] == str(folder)
    assert meta["lgg_slice_numbers"] == list(range(1, 13))
    assert meta["lgg_image_files"] == patient.image_files
    assert meta["lgg_mask_files"] == patient.mask_files
    assert patient.warnings == []


def test_load_patient_orders_numerically_not_lexicographically(tmp_path):
    images, masks = make_phantom(n_slices=12, size=32, seed=1)
    folder = write_slices(tmp_path / PID, PID, images, masks)
    patient = load_patient(folder / f"{PID}_10.tif")  # a slice path opens its folder
    for i in range(12):  # slice _2 must be the second, _10 the tenth
        np.testing.assert_array_equal(patient.images[i], images[i])
    assert patient.slice_numbers[1] == 2 and patient.slice_numbers[9] == 10


def test_images_without_masks_open_with_masks_none(tmp_path):
    images, _ = make_phantom(n_slices=4, size=32)
    patient = load_patient(write_slices(tmp_path / PID, PID, images))
    assert patient.masks is None
    assert patient.mask_files == [None] * 4


def test_some_masks_missing_are_empty(tmp_path):
    images, masks = make_phantom(n_slices=4, size=32)
    folder = write_slices(tmp_path / PID, PID, images, masks)
    (folder / f"{PID}_3_mask.tif").unlink()
    with pytest.warns(UserWarning, match="no mask file"):
        patient = load_patient(folder)
    assert patient.masks is not None and not patient.masks[2].any()
    assert patient.mask_files[2] is None


def test_masks_without_images_raise(tmp_path):
    images, masks = make_phantom(n_slices=3, size=32)
    folder = write_slices(tmp_path / PID, PID, images, masks)
    for k in range(1, 4):
        (folder / f"{PID}_{k}.tif").unlink()
    with pytest.raises(LGGFormatError, match="mask files but no image slices"):
        load_patient(folder)


def test_gaps_warn_but_open(tmp_path):
    images, masks = make_phantom(n_slices=5, size=32)
    folder = write_slices(tmp_path / PID, PID, images, masks, numbers=[1, 2, 3, 5, 8])
    with pytest.warns(UserWarning, match=r"gaps \(missing \[4, 6, 7\]\)"):
        patient = load_patient(folder)
    assert patient.slice_numbers == [1, 2, 3, 5, 8]
    np.testing.assert_array_equal(patient.images, images)
    assert any("gaps" in w for w in patient.warnings)


def test_duplicate_slice_numbers_raise(tmp_path):
    images, _ = make_phantom(n_slices=2, size=32)
    folder = write_slices(tmp_path / PID, PID, images)
    tifffile.imwrite(folder / f"{PID}_01.tif", images[0], photometric="rgb")
    with pytest.raises(LGGFormatError, match="appears twice") as info:
        load_patient(folder)
    assert f"{PID}_01.tif" in str(info.value) and f"{PID}_1.tif" in str(info.value)


def test_different_sizes_raise(tmp_path):
    small, _ = make_phantom(n_slices=2, size=32)
    big, _ = make_phantom(n_slices=1, size=48)
    folder = write_slices(tmp_path / PID, PID, small)
    tifffile.imwrite(folder / f"{PID}_3.tif", big[0], photometric="rgb")
    with pytest.raises(LGGFormatError, match="different sizes") as info:
        load_patient(folder)
    assert "(32, 32)" in str(info.value) and "(48, 48)" in str(info.value)


def test_mask_size_mismatch_raises(tmp_path):
    images, _ = make_phantom(n_slices=1, size=32)
    folder = write_slices(tmp_path / PID, PID, images)
    tifffile.imwrite(folder / f"{PID}_1_mask.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(LGGFormatError, match=f"{PID}_1_mask.tif: mask is"):
        load_patient(folder)


def test_several_patients_in_one_folder_raise(tmp_path):
    images, _ = make_phantom(n_slices=1, size=32)
    folder = write_slices(tmp_path / "mixed", "A_1", images)
    write_slices(folder, "B_2", images)
    with pytest.raises(LGGFormatError, match="several patients"):
        load_patient(folder)


def test_missing_folder_raises(tmp_path):
    with pytest.raises(LGGFormatError, match="no such folder"):
        load_patient(tmp_path / "absent")


# --- finding patients -------------------------------------------------------------------------


def test_find_patient_folders_and_roots(phantom_root):
    folders = find_patient_folders(phantom_root)
    assert [f.name for f in folders] == [f"PHANTOM_{i:02d}_20000101" for i in range(3)]
    assert is_dataset_root(phantom_root) and not is_patient_folder(phantom_root)
    assert is_patient_folder(folders[0]) and not is_dataset_root(folders[0])
    assert find_patient_folders(folders[0]) == [folders[0]]
    (phantom_root / "not_a_patient").mkdir()
    (phantom_root / "file.txt").write_text("x")
    assert len(find_patient_folders(phantom_root)) == 3
    assert find_patient_folders(phantom_root / "absent") == []
    assert not is_patient_folder(phantom_root / "file.txt")


# --- writing ----------------------------------------------------------------------------------


def test_write_patient_folder_round_trip_and_refuses_overwrite(tmp_path):
    images, masks = make_phantom(n_slices=3, size=32)
    target = write_patient_folder(tmp_path / "out", PID, masks, images=images, slice_numbers=[4, 5, 7])
    assert target == tmp_path / "out" / PID
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [f"{PID}_{k}.tif" for k in (4, 5, 7)] + [f"{PID}_{k}_mask.tif" for k in (4, 5, 7)] + ["lgg_seg_export.json"])
    assert set(np.unique(tifffile.imread(target / f"{PID}_5_mask.tif"))) <= {0, 255}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = load_patient(target)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.masks, masks)
    before = (target / f"{PID}_4_mask.tif").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_patient_folder(tmp_path / "out", PID, np.ones_like(masks), images=images, slice_numbers=[4, 5, 7])
    assert (target / f"{PID}_4_mask.tif").read_bytes() == before
    write_patient_folder(tmp_path / "out", PID, np.ones_like(masks), images=images, slice_numbers=[4, 5, 7],
                         overwrite=True)
    assert tifffile.imread(target / f"{PID}_4_mask.tif").min() == 255
    assert [p.name for p in (tmp_path / "out").iterdir()] == [PID]  # no temporary or backup folders left


def test_write_patient_folder_is_atomic_on_failure(tmp_path, monkeypatch):
    images, masks = make_phantom(n_slices=4, size=32)
    out = tmp_path / "out"
    original = write_patient_folder(out, PID, masks, images=images)
    snapshot = {p.name: p.read_bytes() for p in original.iterdir()}
    calls = {"n": 0}
    real_write = io._write_tiff

    def failing_write(path, array):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_write(path, array)

    monkeypatch.setattr(io, "_write_tiff", failing_write)
    with pytest.raises(OSError, match="No space left"):
        write_patient_folder(out, PID, 1 - masks, images=images, overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        calls["n"] = 0
        write_patient_folder(out, "OTHER", masks, images=images)
    # the existing folder is untouched, the new one was never created, nothing half-written is left
    assert {p.name: p.read_bytes() for p in original.iterdir()} == snapshot
    assert sorted(p.name for p in out.iterdir()) == [PID]


def test_write_patient_folder_masks_only_and_validation(tmp_path):
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[1, 4:8, 4:8] = 1
    target = write_patient_folder(tmp_path, PID, masks, slice_numbers=[3, 9], masks_only=True)
    assert sorted(p.name for p in target.iterdir()) == [f"{PID}_3_mask.tif", f"{PID}_9_mask.tif",
                                                       "lgg_seg_export.json"]
    np.testing.assert_array_equal(tifffile.imread(target / f"{PID}_9_mask.tif"), masks[1] * 255)
    with pytest.raises(LGGFormatError, match="slice numbers"):
        write_patient_folder(tmp_path, "X", masks, slice_numbers=[1], masks_only=True)
    with pytest.raises(LGGFormatError, match="images or image_files"):
        write_patient_folder(tmp_path, "Y", masks)
    with pytest.raises(LGGFormatError, match=r"\(Z, H, W\)"):
        write_patient_folder(tmp_path, "Z", np.zeros((1, 2, 3, 4)), masks_only=True)


def test_write_patient_folder_sanitizes_patient_id(tmp_path):
    masks = np.zeros((1, 8, 8), np.uint8)
    target = write_patient_folder(tmp_path / "out", "../../evil", masks, masks_only=True)
    assert target.parent == tmp_path / "out"
    assert ".." not in target.name


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b\\c", "..", ".", "", "  ", "a..b", "/abs/path", "C:\\x"])
def test_sanitize_name(name):
    cleaned = sanitize_name(name)
    assert cleaned
    assert "/" not in cleaned and "\\" not in cleaned and os.sep not in cleaned
    assert ".." not in cleaned
    assert cleaned not in (".", "..")
    assert not cleaned.startswith(".")


def test_sanitize_name_keeps_dataset_ids():
    assert sanitize_name(PID) == PID
    assert sanitize_name("PHANTOM_00_20000101") == "PHANTOM_00_20000101"
    assert sanitize_name("with space") == "with_space"


def test_atomic_write_names_the_file_and_keeps_errno(tmp_path):
    import errno

    from napari_lgg_seg._testing import disk_full_on_atomic_writes
    from napari_lgg_seg.io import atomic_write_text

    target = tmp_path / "report.json"
    target.write_text("old")
    with disk_full_on_atomic_writes(), pytest.raises(OSError) as info:
        atomic_write_text(target, "new")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"Could not save {target}: No space left on device. Free disk space and retry."
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "missing-folder" / "x.json", "new")
    assert info.value.errno == errno.ENOENT and "Free disk space" not in str(info.value)


def test_hidden_folders_are_never_patients(tmp_path):
    """A killed writer's ``.P.partial-xxxx`` with slices inside is not a patient, and is named as a leftover."""
    images, masks = make_phantom(n_slices=2, size=16, seed=0)
    partial = write_patient_folder(tmp_path / "root", PID, masks, images=images).rename(
        tmp_path / "root" / f".{PID}.partial-1234")
    assert not is_patient_folder(partial)
    assert io.writer_leftovers(tmp_path / "root") == [partial]
    with pytest.warns(UserWarning, match=r"\.partial-1234.*half-written"):
        assert find_patient_folders(tmp_path / "root") == []
    with pytest.raises(LGGFormatError, match="no patient folders"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        io.require_patient_folders(tmp_path / "root")


def _racing_writer(root: str, barrier, seed: int, results) -> None:
    """Child process: write the same patient as its twin; both wait at the barrier once every slice is written,
    so both reach the final rename together."""
    images, masks = make_phantom(n_slices=3, size=16, seed=seed)
    real_write, calls = io._write_tiff, [0]

    def write(path, array):
        real_write(path, array)
        calls[0] += 1
        if calls[0] == 2 * len(masks):
            barrier.wait(timeout=60)

    io._write_tiff = write
    try:
        io.write_patient_folder(root, PID, masks, images=images, sidecar={"writer": seed})
        results.put(("ok", seed))
    except FileExistsError as err:
        results.put(("refused", str(err)))
    except BaseException as err:  # noqa: BLE001
        results.put(("other", f"{type(err).__name__}: {err}"))


@pytest.mark.parametrize("attempt", range(3))
def test_two_concurrent_writers_one_wins_one_is_refused(tmp_path, attempt):
    """Issue 12: two exports of one patient at the same moment both reported success and one was lost. With two
    real processes meeting at the final step: exactly one writes, the other is refused naming the folder, and
    the surviving folder is complete."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    root = tmp_path / "out"
    procs = [ctx.Process(target=_racing_writer, args=(str(root), barrier, seed, results)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outcomes = sorted(results.get(timeout=10) for _ in procs)
    assert [o[0] for o in outcomes] == ["ok", "refused"], outcomes
    assert str(root / PID) in outcomes[1][1] and "already exists" in outcomes[1][1]
    winner = outcomes[0][1]
    images, masks = make_phantom(n_slices=3, size=16, seed=winner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = load_patient(root / PID)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.masks, masks)
    assert json.loads((root / PID / "lgg_seg_export.json").read_text()) == {"writer": winner}
    assert [p.name for p in root.iterdir()] == [PID]  # no temporary folder left


def test_killed_overwrite_is_recovered_by_the_next_writer(tmp_path):
    """A writer killed between its two renames leaves only ``.P.replaced-<pid>``: it is named as the previous
    version, and the next write of that patient restores it (and then refuses, since the folder exists again);
    a stale backup beside a complete folder is dropped."""
    images, masks = make_phantom(n_slices=2, size=16, seed=0)
    root = tmp_path / "out"
    target = write_patient_folder(root, PID, masks, images=images)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    backup = target.rename(root / f".{PID}.replaced-99999")
    with pytest.warns(UserWarning, match=rf"replaced-99999 \(the previous version of {PID}: rename it back"):
        assert find_patient_folders(root) == []
    with pytest.warns(UserWarning, match="restored from"), pytest.raises(FileExistsError, match="already exists"):
        write_patient_folder(root, PID, np.ones_like(masks), images=images)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before and not backup.exists()
    shutil.copytree(target, backup)
    write_patient_folder(root, PID, np.ones_like(masks), images=images, overwrite=True)
    assert [p.name for p in root.iterdir()] == [PID]


def test_three_page_tiff_is_read_as_channels_and_other_multipage_files_refused(tmp_path):
    """issue 12: a slice saved as three single-channel pages is read as (pre, FLAIR, post), not as its first page;
    a many-page volume in one file is refused with a message instead of opening as one slice."""
    import tifffile

    from napari_lgg_seg.io import LGGFormatError, read_tiff

    planes = [np.full((8, 8), v, np.uint8) for v in (10, 20, 30)]
    for plane in planes:  # 3 pages, one per channel
        tifffile.imwrite(tmp_path / "P_1.tif", plane, append=True)
    assert len(tifffile.TiffFile(tmp_path / "P_1.tif").pages) == 3
    image = read_tiff(tmp_path / "P_1.tif")
    assert image.shape == (8, 8, 3) and image[0, 0].tolist() == [10, 20, 30]
    tifffile.imwrite(tmp_path / "P_3.tif", np.stack(planes), planarconfig="separate", photometric="rgb")
    assert read_tiff(tmp_path / "P_3.tif")[0, 0].tolist() == [10, 20, 30]
    for _ in range(4):
        tifffile.imwrite(tmp_path / "P_2.tif", np.zeros((8, 8), np.uint8), append=True)
    with pytest.raises(LGGFormatError, match="holds 4 pages"):
        read_tiff(tmp_path / "P_2.tif")


def test_colour_mask_counts_any_channel(tmp_path):
    import tifffile

    from napari_lgg_seg.io import load_patient

    folder = tmp_path / "P"
    folder.mkdir()
    tifffile.imwrite(folder / "P_1.tif", np.full((8, 8, 3), 50, np.uint8))
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[2:4, 2:4, 1] = 255  # tumour drawn in green only
    tifffile.imwrite(folder / "P_1_mask.tif", mask)
    assert int(load_patient(folder).masks.sum()) == 4


def test_huge_slice_number_gap_is_cheap(tmp_path):
    """A slice numbered 100000000000 must not build a set of the whole range (it raised MemoryError)."""
    import tifffile

    from napari_lgg_seg.io import load_patient

    folder = tmp_path / "P"
    folder.mkdir()
    for k in (1, 100_000_000_000):
        tifffile.imwrite(folder / f"P_{k}.tif", np.full((8, 8, 3), 50, np.uint8))
    with pytest.warns(UserWarning, match="gaps"):
        patient = load_patient(folder)
    assert patient.slice_numbers == [1, 100_000_000_000]


def test_written_patient_folder_follows_the_umask(tmp_path):
    from napari_lgg_seg.io import write_patient_folder

    old = os.umask(0o022)
    try:
        out = write_patient_folder(tmp_path, "P", np.zeros((2, 8, 8), np.uint8), images=np.full((2, 8, 8, 3), 50, np.uint8))
    finally:
        os.umask(old)
    assert (Path(out).stat().st_mode & 0o777) == 0o755
