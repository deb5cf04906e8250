"""The bad-input matrix: what the reader and ``napari-lgg-seg segment`` do with damaged or unusual data.

Every error must name the file or folder and the problem, and the CLI must answer with exit code 2 and
one line on stderr (no traceback).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lgg_seg import cli, io
from napari_lgg_seg.io import LGGFormatError, find_patient_folders, load_patient, read_tiff
from napari_lgg_seg.sample import make_phantom

PID = "BAD_01_20000101"


def write_patient(folder: Path, n: int = 3, size: int = 32, masks: bool = True, numbers=None, pid: str = PID,
                  seed: int = 0) -> Path:
    images, truth = make_phantom(n_slices=n, size=size, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(numbers or range(1, n + 1)):
        tifffile.imwrite(folder / f"{pid}_{k}.tif", images[i], photometric="rgb")
        if masks:
            tifffile.imwrite(folder / f"{pid}_{k}_mask.tif", truth[i] * 255)
    return folder


def quiet_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_patient(path)


def segment(capsys, source: Path, out: Path, checkpoint: Path, *extra) -> tuple[int, str, str]:
    code = cli.main(["segment", str(source), "--out", str(out), "--weights", str(checkpoint), "--device", "cpu",
                     *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_cli_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("napari-lgg-seg segment: error:"), err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


# --- folders ---------------------------------------------------------------------------------


def test_empty_folder(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / PID
    folder.mkdir()
    with pytest.raises(LGGFormatError, match="no TIFF files found") as info:
        load_patient(folder)
    assert str(folder) in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, str(folder), "no LGG patient folders found")


def test_folder_without_tiffs(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / PID
    folder.mkdir()
    (folder / f"{PID}_1.png").write_bytes(b"\x89PNG")
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(LGGFormatError, match="no TIFF files found"):
        load_patient(folder)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "no LGG patient folders found")


def test_tiffs_with_other_names(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / PID
    folder.mkdir()
    tifffile.imwrite(folder / "scan.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(folder / f"{PID}_first.tif", np.zeros((8, 8), np.uint8))  # non-numeric slice number
    with pytest.raises(LGGFormatError, match=r"no files named <PATIENT>_<k>\.tif"):
        load_patient(folder)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "no files named")


def test_images_without_masks(tmp_path, capsys, tiny_checkpoint):
    folder = write_patient(tmp_path / "data" / PID, masks=False)
    assert quiet_load(folder).masks is None
    code, out, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert code == 0, err
    assert len(list((tmp_path / "out" / PID).glob("*_mask.tif"))) == 3


def test_masks_without_images(tmp_path, capsys, tiny_checkpoint):
    folder = write_patient(tmp_path / PID)
    for k in (1, 2, 3):
        (folder / f"{PID}_{k}.tif").unlink()
    with pytest.raises(LGGFormatError, match="3 mask files but no image slices") as info:
        load_patient(folder)
    assert str(folder) in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, str(folder), "mask files but no image slices")


def test_different_sizes(tmp_path, capsys, tiny_checkpoint):
    folder = write_patient(tmp_path / PID)
    tifffile.imwrite(folder / f"{PID}_2.tif", np.zeros((40, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(LGGFormatError, match="different sizes") as info:
        load_patient(folder)
    assert f"{PID}_2.tif" in str(info.value) and "(40, 32)" in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "different sizes", f"{PID}_2.tif")


def test_duplicate_slice_numbers(tmp_path, capsys, tiny_checkpoint):
    folder = write_patient(tmp_path / PID)
    tifffile.imwrite(folder / f"{PID}_002.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(LGGFormatError, match="slice number 2 appears twice") as info:
        load_patient(folder)
    assert f"{PID}_002.tif" in str(info.value) and f"{PID}_2.tif" in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "appears twice")


def test_non_numeric_slice_names_are_ignored_with_a_warning(tmp_path):
    folder = write_patient(tmp_path / PID)
    tifffile.imwrite(folder / f"{PID}_extra.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.warns(UserWarning, match=f"{PID}_extra.tif: not named"):
        patient = load_patient(folder)
    assert patient.slice_numbers == [1, 2, 3]


def test_gaps_warn_and_open(tmp_path, capsys, tiny_checkpoint):
    folder = write_patient(tmp_path / "data" / PID, n=3, numbers=[1, 2, 5])
    with pytest.warns(UserWarning, match="gaps"):
        patient = load_patient(folder)
    assert patient.slice_numbers == [1, 2, 5]
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert code == 0, err
    assert "gaps" in err  # the CLI passes the reader's warning on
    assert sorted(p.name for p in (tmp_path / "out" / PID).glob("*.tif")) == [
        f"{PID}_{k}_mask.tif" for k in (1, 2, 5)]


# --- damaged files ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_tiff(tmp_path, capsys, tiny_checkpoint, keep):
    folder = write_patient(tmp_path / PID)
    victim = folder / f"{PID}_2.tif"
    data = victim.read_bytes()
    victim.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(LGGFormatError, match="not a readable TIFF") as info:
        load_patient(folder)
    assert str(victim) in str(info.value) and "truncated or corrupt" in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, f"{PID}_2.tif", "not a readable TIFF")
    assert not (tmp_path / "out" / PID).exists()


def test_garbage_tiff_and_corrupt_mask(tmp_path):
    folder = write_patient(tmp_path / PID)
    (folder / f"{PID}_3_mask.tif").write_bytes(os.urandom(300))
    with pytest.raises(LGGFormatError, match="not a readable TIFF") as info:
        load_patient(folder)
    assert f"{PID}_3_mask.tif" in str(info.value)


def test_one_bad_patient_in_a_dataset(tmp_path, capsys, tiny_checkpoint):
    root = tmp_path / "data"
    write_patient(root / PID, n=2)
    write_patient(root / "GOOD_02_20000101", n=2, pid="GOOD_02_20000101")
    (root / PID / f"{PID}_1.tif").write_bytes(b"II*\x00garbage")
    code, out, err = segment(capsys, root, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "1 of 2 patients could not be read", PID)
    assert f"skipped {PID}" in err and f"{PID}_1.tif" in err
    assert len(list((tmp_path / "out" / "GOOD_02_20000101").glob("*_mask.tif"))) == 2  # the good one is done
    assert not (tmp_path / "out" / PID).exists()


def test_same_patient_in_two_folders(tmp_path, capsys, tiny_checkpoint):
    root = tmp_path / "data"
    write_patient(root / "copy_a", n=1)
    write_patient(root / "copy_b", n=1)
    code, _, err = segment(capsys, root, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "both hold patient", PID)
    assert not (tmp_path / "out").exists()


# --- unusual pixel data ----------------------------------------------------------------------


def test_16bit_images_are_rescaled_per_volume(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 1000, (3, 16, 16, 3)).astype(np.uint16)
    raw[0, 0, 0, :] = 4000  # the volume's maximum in slice 1 only
    for i in range(3):
        tifffile.imwrite(folder / f"{PID}_{i + 1}.tif", raw[i], photometric="rgb")
    with pytest.warns(UserWarning, match="uint16 image rescaled to 0-255"):
        patient = load_patient(folder)
    assert patient.images.dtype == np.uint8
    assert patient.images[0, 0, 0].tolist() == [255, 255, 255]
    # one map for the whole volume: slices 2 and 3 are not stretched to their own maximum
    assert patient.images[1:].max() <= round(999 / 4000 * 255) + 1
    expected = np.round(raw.astype(np.float64) / 4000 * 255)
    np.testing.assert_allclose(patient.images, expected, atol=1)
    assert len([w for w in patient.warnings if "rescaled" in w]) == 1  # one note, not one per slice


def test_float_images_with_nan_are_rescaled(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    data = np.linspace(-1, 1, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    data[0, 0, 1] = np.nan
    tifffile.imwrite(folder / f"{PID}_1.tif", data, photometric="rgb")
    with pytest.warns(UserWarning, match="float32 image rescaled"):
        patient = load_patient(folder)
    img = patient.images[0]
    assert img.dtype == np.uint8 and img[0, 0, 1] == 0
    assert img[..., 0].min() == 0 and img[..., 0].max() == 255


def test_constant_16bit_image(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    tifffile.imwrite(folder / f"{PID}_1.tif", np.full((8, 8, 3), 7, np.uint16), photometric="rgb")
    assert not quiet_load(folder).images.any()


def test_single_channel_images_are_replicated(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    flair = np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8)
    for i in range(2):
        tifffile.imwrite(folder / f"{PID}_{i + 1}.tif", flair[i])
    with pytest.warns(UserWarning, match="single-channel image, used as FLAIR"):
        patient = load_patient(folder)
    assert patient.images.shape == (2, 16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(patient.images[..., c], flair)


def test_rgba_images_drop_alpha(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    rgba = np.random.default_rng(1).integers(0, 255, (16, 16, 4), dtype=np.uint8)
    tifffile.imwrite(folder / f"{PID}_1.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with pytest.warns(UserWarning, match="RGBA image, alpha channel dropped"):
        patient = load_patient(folder)
    np.testing.assert_array_equal(patient.images[0], rgba[..., :3])


def test_two_channel_image_is_refused(tmp_path):
    folder = tmp_path / PID
    folder.mkdir()
    tifffile.imwrite(folder / f"{PID}_1.tif", np.zeros((16, 16, 2), np.uint8), planarconfig="contig",
                     photometric="minisblack")
    with pytest.raises(LGGFormatError, match=f"{PID}_1.tif: image has shape"):
        load_patient(folder)


@pytest.mark.parametrize("shape", [(200, 180), (250, 250), (48, 40)])
def test_non_256_sizes_come_back_at_original_size(tmp_path, capsys, tiny_checkpoint, shape):
    folder = tmp_path / "data" / PID
    folder.mkdir(parents=True)
    images, truth = make_phantom(n_slices=2, size=max(shape), seed=0)
    for i in range(2):
        tifffile.imwrite(folder / f"{PID}_{i + 1}.tif", images[i, : shape[0], : shape[1]], photometric="rgb")
        tifffile.imwrite(folder / f"{PID}_{i + 1}_mask.tif", truth[i, : shape[0], : shape[1]] * 255)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint, "--threshold", "0.01")
    assert code == 0, err
    for k in (1, 2):
        mask = tifffile.imread(tmp_path / "out" / PID / f"{PID}_{k}_mask.tif")
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}


def write_huge_header_tiff(path: Path, width: int = 60000, height: int = 60000) -> None:
    """A tiny file whose TIFF header claims a width x height 8-bit image (no pixel data follows)."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd + struct.pack("<I", 0))


def test_huge_image_header_is_refused_without_reading(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / PID
    folder.mkdir()
    write_huge_header_tiff(folder / f"{PID}_1.tif")
    assert (folder / f"{PID}_1.tif").stat().st_size < 1000
    with pytest.raises(LGGFormatError, match="60000 x 60000 pixels is too large") as info:
        load_patient(folder)
    assert f"{PID}_1.tif" in str(info.value)
    code, _, err = segment(capsys, folder, tmp_path / "out", tiny_checkpoint)
    assert_cli_error(code, err, "too large")


def test_slice_limit_applies_to_real_files(tmp_path, monkeypatch):
    folder = write_patient(tmp_path / PID, n=1, size=32)
    monkeypatch.setattr(io, "MAX_SLICE_PIXELS", 32 * 32 - 1)
    with pytest.raises(LGGFormatError, match="32 x 32 pixels is too large"):
        load_patient(folder)
    monkeypatch.setattr(io, "MAX_SLICE_PIXELS", 32 * 32)
    assert quiet_load(folder).images.shape == (1, 32, 32, 3)


# --- file system oddities --------------------------------------------------------------------


def test_symlink_loops_do_not_hang(tmp_path, capsys, tiny_checkpoint):
    root = tmp_path / "root"
    write_patient(root / PID, n=2)
    other = write_patient(tmp_path / "elsewhere" / "LINKED_02_20000101", n=2, pid="LINKED_02_20000101")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "parent").symlink_to(tmp_path, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "absent", target_is_directory=True)
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / PID / "self").symlink_to(root / PID, target_is_directory=True)

    result: list = []
    worker = threading.Thread(target=lambda: result.append(find_patient_folders(root)), daemon=True)
    worker.start()
    worker.join(timeout=120)  # a safety net against a hang, not a timing assertion
    assert not worker.is_alive(), "find_patient_folders did not return"
    assert [p.name for p in result[0]] == [PID, "linked"]
    assert quiet_load(root / PID).num_slices == 2  # the 'self' link inside is ignored
    code, _, err = segment(capsys, root, tmp_path / "out", tiny_checkpoint)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [PID, "LINKED_02_20000101"]


_UNREADABLE_CHECK = """
import sys
from napari_lgg_seg.io import LGGFormatError, load_patient
try:
    load_patient(sys.argv[1])
except LGGFormatError as err:
    print(err)
    sys.exit(3)
"""


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_unreadable_file(tmp_path):
    """A file without read permission (chmod 000). Root reads anything, so as root the check runs without the
    capabilities that bypass file permissions (setpriv), like an ordinary user."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop the permission-bypass capabilities")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    folder = write_patient(tmp_path / PID)
    victim = folder / f"{PID}_2.tif"
    victim.chmod(0)
    try:
        result = subprocess.run([*prefix, sys.executable, "-c", _UNREADABLE_CHECK, str(folder)],
                                capture_output=True, text=True, timeout=120)
    finally:
        victim.chmod(0o644)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "permission denied" in result.stdout and f"{PID}_2.tif" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_permission_error_message(tmp_path, monkeypatch):
    """The same path as chmod 000, reachable as root: the reader names the file and the problem."""
    folder = write_patient(tmp_path / PID, n=1)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tifffile, "TiffFile", denied)
    with pytest.raises(LGGFormatError, match="permission denied") as info:
        read_tiff(folder / f"{PID}_1.tif")
    assert f"{PID}_1.tif" in str(info.value)


def test_missing_file_message(tmp_path):
    with pytest.raises(LGGFormatError, match="file not found"):
        read_tiff(tmp_path / "absent.tif")


def test_killed_writers_leftovers_and_links_in_a_root(tmp_path, capsys, tiny_checkpoint):
    """Issue 12: a killed export's ``.P.partial-1234`` made ``segment`` fail on the root, and a link to a patient
    counted it twice. Segment writes each real patient once and names the leftover in a warning."""
    root = tmp_path / "root"
    write_patient(root / PID)
    shutil.copytree(root / PID, root / f".{PID}.partial-1234")
    os.symlink(root / PID, root / "ZZ_link")
    with pytest.warns(UserWarning, match=r"leftovers of an interrupted write.*partial-1234"):
        code, out, err = segment(capsys, root, tmp_path / "out", tiny_checkpoint)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [PID]
    assert "masks of 1 patient written" in err + out
