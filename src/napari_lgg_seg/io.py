"""Reading and writing patients in the LGG dataset layout (Qt-free).

Layout: ``<ROOT>/<PATIENT>/<PATIENT>_<k>.tif`` (H x W x 3 uint8) with optional
``<PATIENT>_<k>_mask.tif`` (H x W uint8, 0/255). Slices are ordered by the integer ``k``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

CHANNEL_NAMES = ("pre-contrast", "FLAIR", "post-contrast")
FLAIR_CHANNEL = 1
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_SLICE_PIXELS = 4096 * 4096

_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<k>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


class LGGFormatError(ValueError):
    """Input that looks like LGG data but cannot be read; the message says what to do."""


@dataclass(frozen=True)
class SliceName:
    """Parsed ``<PATIENT>_<k>[_mask].tif`` file name."""

    patient: str
    index: int
    is_mask: bool


def parse_slice_name(name: str) -> SliceName | None:
    """Parse a slice file name; ``None`` when it is not in the dataset's naming scheme."""
    match = _SLICE_RE.match(name)
    if match is None:
        return None
    return SliceName(match["patient"], int(match["k"]), match["mask"] is not None)


def sort_slice_files(names: Iterable[str]) -> list[str]:
    """Order slice file names by patient, then integer slice number (``_2`` before ``_10``)."""

    def key(name: str):
        parsed = parse_slice_name(Path(name).name)
        if parsed is None:
            return ("", 0, True, name)
        return (parsed.patient, parsed.index, parsed.is_mask, name)

    return sorted(names, key=key)


@dataclass
class Patient:
    """One patient volume: images (Z, H, W, 3) uint8 and optional masks (Z, H, W) uint8 in {0, 1}."""

    patient_id: str
    images: np.ndarray
    masks: np.ndarray | None
    slice_numbers: list[int]
    image_files: list[str]
    mask_files: list[str | None]
    folder: str
    warnings: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])

    def metadata(self) -> dict:
        """JSON-able description used as napari layer metadata (export needs it)."""
        return {
            "lgg_patient_id": self.patient_id,
            "lgg_folder": self.folder,
            "lgg_slice_numbers": list(self.slice_numbers),
            "lgg_image_files": list(self.image_files),
            "lgg_mask_files": list(self.mask_files),
        }


def _tiff_files(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except PermissionError as err:
        raise LGGFormatError(f"Cannot list {folder}: permission denied.") from err
    files = []
    for entry in entries:
        if not entry.name.lower().endswith(TIFF_SUFFIXES):
            continue
        try:
            if entry.is_file():
                files.append(Path(entry.path))
        except OSError:
            warnings.warn(f"{entry.path}: broken or looping link, ignored", stacklevel=3)
    return files


def folder_patient_id(folder: str | os.PathLike) -> str | None:
    """The patient id the reader gives a folder: from the image slice FILES it would read (not from folders or
    dangling links named like slices); None when it holds none or several patients. The reader, the "never
    replace the input" guards and the writers all use this one rule."""
    ids = {parsed.patient for parsed in (parse_slice_name(f.name) for f in _tiff_files(Path(folder)))
           if parsed is not None and not parsed.is_mask}
    return ids.pop() if len(ids) == 1 else None


MAX_NAME_BYTES = 255  # a file name on Linux / macOS file systems


def output_name_problem(patient_id: str, max_slice: int = 10**6) -> str | None:
    """Why outputs for ``patient_id`` could not carry the input's names (characters the writers would replace,
    or names too long for the file system), else None; checked before any work."""
    if sanitize_name(patient_id) != patient_id:
        return (f"patient id {patient_id!r} holds characters (spaces, non-ASCII or separators) that output file "
                f"names cannot keep, so masks would not pair with their images; rename the files to e.g. "
                f"{sanitize_name(patient_id)!r}")
    longest = max(len(f"{patient_id}_{max_slice}_mask.tif"), len(f".{patient_id}.partial-xxxxxxxx"))
    if len(patient_id.encode()) + (longest - len(patient_id)) > MAX_NAME_BYTES:
        return f"patient id of {len(patient_id)} characters is too long for output file names (limit {MAX_NAME_BYTES} bytes)"
    return None


def is_hidden_name(name: str) -> bool:
    """True for hidden or temporary names (``.x``, e.g. a killed writer's ``.P.partial-xxxx``); never patients."""
    return name.startswith(".") and name not in (".", "..")


_LEFTOVER_RE = re.compile(r"^\.(?P<patient>.+)\.(?P<kind>partial|replaced)-[^/]*$")


def writer_leftovers(root: str | os.PathLike) -> list[Path]:
    """Folders below ``root`` left by a killed writer (``.P.partial-xxxx``, ``.P.replaced-<pid>``)."""
    try:
        with os.scandir(root) as it:
            return sorted(Path(e.path) for e in it if _LEFTOVER_RE.match(e.name) and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _warn_leftovers(root: Path) -> None:
    leftovers = writer_leftovers(root)
    if not leftovers:
        return
    parts = []
    for path in leftovers:
        m = _LEFTOVER_RE.match(path.name)
        if m and m["kind"] == "replaced" and not (root / m["patient"]).exists():
            parts.append(f"{path.name} (the previous version of {m['patient']}: rename it back to restore it)")
        else:
            parts.append(f"{path.name} (half-written: delete it)")
    warnings.warn(f"{root}: ignored leftovers of an interrupted write (a killed export or segment): "
                  f"{', '.join(parts)}", stacklevel=3)


def is_patient_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding at least one ``<PATIENT>_<k>.tif`` image slice.

    Hidden and temporary folders (name starting with ``.``) are never patients.
    """
    path = Path(path)
    if is_hidden_name(path.name) or not path.is_dir():
        return False
    try:
        with os.scandir(path) as it:
            for entry in it:
                parsed = parse_slice_name(entry.name)
                if parsed is not None and not parsed.is_mask:
                    return True
    except OSError:
        return False
    return False


def find_patient_folders(root: str | os.PathLike) -> list[Path]:
    """Patient folders directly below a dataset root (sorted by name); the root itself if it is one.

    Hidden and temporary folders are skipped (leftovers of killed writers are named in a warning); a link to a
    folder already listed (same resolved folder) is listed once, under the real folder's name.
    """
    root = Path(root)
    if is_patient_folder(root):
        return [root]
    if not root.is_dir():
        return []
    try:
        children = sorted(p for p in root.iterdir() if not is_hidden_name(p.name) and (
            p.is_dir() and not p.is_symlink() or (p.is_symlink() and p.is_dir() and not _points_inside(p, root))))
    except OSError:
        return []
    _warn_leftovers(root)
    found = [p for p in children if is_patient_folder(p)]
    return _unique_folders(found)


def _resolved(folder: Path) -> Path:
    try:
        return folder.resolve()
    except (OSError, RuntimeError):
        return folder.absolute()


def _unique_folders(folders: list[Path]) -> list[Path]:
    """Drop folders whose resolved path was seen already; a real folder wins over a link to it."""
    ordered = sorted(folders, key=lambda p: p.is_symlink())  # stable: real folders first
    seen: dict[Path, Path] = {}
    for folder in ordered:
        key = _resolved(folder)
        if key in seen:
            warnings.warn(f"{folder} is a link to {seen[key]}; the patient is counted once", stacklevel=3)
            continue
        seen[key] = folder
    return sorted(seen.values())


def require_patient_folders(root: str | os.PathLike) -> list[Path]:
    """``find_patient_folders`` for a root that must hold patients: a clear error when it holds none."""
    root = Path(root)
    if not root.is_dir():
        raise LGGFormatError(f"{root}: data folder not found.")
    folders = find_patient_folders(root)
    if not folders:
        raise LGGFormatError(f"{root}: no patient folders (<PATIENT>/<PATIENT>_<k>.tif) found.")
    return folders


def _points_inside(link: Path, root: Path) -> bool:
    """True when a symlinked folder resolves to ``root`` or one of its parents (a loop)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return True
    root_resolved = root.resolve()
    return target == root_resolved or target in root_resolved.parents


def is_dataset_root(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder of patient folders (and not a patient folder itself)."""
    path = Path(path)
    return path.is_dir() and not is_patient_folder(path) and bool(find_patient_folders(path))


def _to_rgb(array: np.ndarray, file: Path, notes: dict[str, list[str]]) -> np.ndarray:
    """Bring an image slice to (H, W, 3), keeping its pixel type; single channel becomes FLAIR replicated."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        notes.setdefault("single-channel image, used as FLAIR for all three channels", []).append(file.name)
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        notes.setdefault("single-channel image, used as FLAIR for all three channels", []).append(file.name)
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        notes.setdefault("RGBA image, alpha channel dropped", []).append(file.name)
        arr = arr[..., :3]
    elif not (arr.ndim == 3 and arr.shape[-1] == 3):
        raise LGGFormatError(
            f"{file}: image has shape {arr.shape}; expected H x W x 3 (pre-contrast, FLAIR, "
            "post-contrast), H x W, or H x W x 4."
        )
    if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise LGGFormatError(f"{file}: unsupported pixel type {arr.dtype}; expected 8-bit, 16-bit or float images.")
    return arr


def _to_uint8_volume(slices: list[np.ndarray], files: list[Path], notes: dict[str, list[str]]) -> list[np.ndarray]:
    """uint8 slices as they are; others mapped linearly to 0-255 with one map per channel for the whole
    volume (a per-slice map would change the brightness from slice to slice)."""
    other = [i for i, s in enumerate(slices) if s.dtype not in (np.uint8, bool)]
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for i in other:
        data = slices[i].astype(np.float64)
        finite = np.isfinite(data)
        lo = np.minimum(lo, np.where(finite, data, np.inf).min(axis=(0, 1)))
        hi = np.maximum(hi, np.where(finite, data, -np.inf).max(axis=(0, 1)))
    span = np.where(hi > lo, hi - lo, 1.0)
    out = []
    for i, s in enumerate(slices):
        if s.dtype == np.uint8:
            out.append(np.ascontiguousarray(s))
        elif s.dtype == bool:
            out.append(s.astype(np.uint8) * 255)
        else:
            data = s.astype(np.float64)
            scaled = np.where(np.isfinite(data) & (hi > lo), (data - lo) / span * 255.0, 0.0)
            out.append(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
            key = f"{s.dtype} image rescaled to 0-255 (one linear map per channel for the whole volume)"
            notes.setdefault(key, []).append(files[i].name)
    return out


def _summarize_notes(notes: dict[str, list[str]]) -> list[str]:
    """One line per kind of note, naming the first file or two (not one warning per slice)."""
    lines = []
    for note, names in notes.items():
        shown = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
        lines.append(f"{shown}: {note}")
    return lines


def _to_binary_mask(array: np.ndarray, file: Path) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # a mask drawn in colour: tumour wherever any colour is set
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2:
        raise LGGFormatError(f"{file}: mask has shape {arr.shape}; expected H x W.")
    return (arr > 0).astype(np.uint8)


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read one TIFF page with a clear error for missing, unreadable, corrupt or huge files."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            height, width = int(page.imagelength), int(page.imagewidth)
            if height * width > MAX_SLICE_PIXELS:
                raise LGGFormatError(
                    f"{path}: image of {height} x {width} pixels is too large for a slice "
                    f"(limit {MAX_SLICE_PIXELS} pixels)."
                )
            pages = len(tif.pages)
            if pages == 1:
                array = page.asarray()
                if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
                    array = np.moveaxis(array, 0, -1)  # channels stored as separate planes of one page
                return array
            if pages == 3:  # one page per channel (pre-contrast, FLAIR, post-contrast)
                planes = [p.asarray() for p in tif.pages]
                if all(pl.ndim == 2 and pl.shape == planes[0].shape for pl in planes):
                    return np.stack(planes, axis=-1)
            raise LGGFormatError(
                f"{path}: the file holds {pages} pages; a slice file holds one image (or three single-channel "
                "pages, read as pre-contrast, FLAIR, post-contrast). Save each slice as its own "
                "<PATIENT>_<k>.tif."
            )
    except LGGFormatError:
        raise
    except PermissionError as err:
        raise LGGFormatError(f"{path}: permission denied; check the file's access rights.") from err
    except FileNotFoundError as err:
        raise LGGFormatError(f"{path}: file not found.") from err
    except Exception as err:  # tifffile raises several types for damaged files
        raise LGGFormatError(
            f"{path}: not a readable TIFF ({type(err).__name__}: {err}). The file may be truncated "
            "or corrupt; re-copy it from the source."
        ) from err


def load_patient(path: str | os.PathLike) -> Patient:
    """Load a patient folder (or any slice file in it) as one volume in numeric slice order."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise LGGFormatError(f"{path}: no such folder.")
    files = _tiff_files(path)
    if not files:
        raise LGGFormatError(f"{path}: no TIFF files found; expected <PATIENT>_<k>.tif slices.")
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    patients: set[str] = set()
    notes: list[str] = []
    named: list[tuple[Path, SliceName]] = []
    for file in sort_slice_files(files):
        parsed = parse_slice_name(file.name)
        if parsed is None:
            notes.append(f"{file.name}: not named <PATIENT>_<k>.tif, ignored")
            continue
        patients.add(parsed.patient)
        named.append((file, parsed))
    if len(patients) > 1:
        raise LGGFormatError(
            f"{path}: slices of several patients in one folder ({', '.join(sorted(patients))}); "
            "put each patient in its own folder."
        )
    for file, parsed in named:
        target = masks if parsed.is_mask else images
        if parsed.index in target:
            raise LGGFormatError(
                f"{path}: slice number {parsed.index} appears twice ({target[parsed.index].name} and "
                f"{file.name}); remove one of them."
            )
        target[parsed.index] = file
    if not images:
        if masks:
            raise LGGFormatError(
                f"{path}: found {len(masks)} mask files but no image slices; the images "
                "<PATIENT>_<k>.tif are needed."
            )
        raise LGGFormatError(f"{path}: no files named <PATIENT>_<k>.tif.")
    patient_id = patients.pop()
    numbers = sorted(images)
    if numbers[-1] - numbers[0] + 1 != len(numbers):  # gaps, found in O(number of files)
        missing: list[int] = []
        for a, b in zip(numbers, numbers[1:]):
            missing.extend(range(a + 1, min(b, a + 1 + 10 - len(missing))))
            if len(missing) >= 10:
                break
        gap_count = numbers[-1] - numbers[0] + 1 - len(numbers)
        notes.append(f"slice numbers have {gap_count} gaps (missing {missing[:10]}{'...' if gap_count > 10 else ''})")
    orphan_masks = sorted(set(masks) - set(images))
    if orphan_masks:
        notes.append(f"masks without images ignored for slices {orphan_masks[:10]}")

    converted: dict[str, list[str]] = {}
    slices = [_to_rgb(read_tiff(images[k]), images[k], converted) for k in numbers]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        by_shape: dict[tuple, int] = {}
        for k, s in zip(numbers, slices):
            by_shape.setdefault(s.shape, k)
        detail = ", ".join(f"{shape[:2]} (e.g. {images[k].name})" for shape, k in by_shape.items())
        raise LGGFormatError(f"{path}: slices have different sizes: {detail}. All slices must match.")
    slices = _to_uint8_volume(slices, [images[k] for k in numbers], converted)
    notes.extend(_summarize_notes(converted))
    volume = np.stack(slices)

    mask_volume = None
    if masks:
        mask_slices = []
        for k, image in zip(numbers, slices):
            if k in masks:
                m = _to_binary_mask(read_tiff(masks[k]), masks[k])
                if m.shape != image.shape[:2]:
                    raise LGGFormatError(
                        f"{masks[k]}: mask is {m.shape} but its image is {image.shape[:2]}."
                    )
            else:
                m = np.zeros(image.shape[:2], np.uint8)
            mask_slices.append(m)
        missing_masks = [k for k in numbers if k not in masks]
        if missing_masks:
            notes.append(f"{len(missing_masks)} slices have no mask file; treated as empty")
        mask_volume = np.stack(mask_slices)
    for note in notes:
        warnings.warn(f"{patient_id}: {note}", stacklevel=2)
    return Patient(
        patient_id=patient_id,
        images=volume,
        masks=mask_volume,
        slice_numbers=numbers,
        image_files=[str(images[k]) for k in numbers],
        mask_files=[str(masks[k]) if k in masks else None for k in numbers],
        folder=str(path),
        warnings=notes,
    )


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sanitize_name(name: str) -> str:
    """Make a patient or layer name safe as a single path component (no separators, no ``..``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    cleaned = cleaned.replace("..", "_")
    return cleaned or "patient"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(fileobj)`` into a unique temporary file beside it, then rename atomically.

    A crash, a full disk or a concurrent writer never leaves a torn or half-written file at ``path``; an
    operating-system error is re-raised as an ``OSError`` (same errno) that names the file and what to do.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            hint = " Free disk space and retry." if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            clear = OSError(f"Could not save {path}: {err.strerror or err}.{hint}")
            clear.errno = err.errno
            raise clear from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[dict], fieldnames: list[str], **writer_options) -> None:
    """Write dict rows as CSV with a header, atomically (``writer_options`` go to ``csv.DictWriter``)."""
    import csv
    import io as _io

    buffer = _io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, **writer_options)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, array, compression="zlib", photometric="minisblack" if array.ndim == 2 else "rgb")


PLUGIN_SIDECARS = ("lgg_seg_export.json", "lgg_seg_segment.json")  # how a folder the plugin wrote is recognised


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (the output root) for the final rename of a patient folder.

    ``flock`` on the directory itself: no lock file is left behind and a killed writer's lock is released by
    the operating system. Where ``fcntl`` is missing (Windows) a ``.lgg_seg.lock`` file is locked instead.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        fd = os.open(folder / ".lgg_seg.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            yield
        finally:
            os.close(fd)
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_replaceable(target: Path, patient_id: str) -> None:
    """Refuse to replace ``target`` unless napari-lgg-seg wrote it: a real folder with one of its sidecars and
    nothing but that patient's slices besides."""
    if target.is_symlink() or not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder napari-lgg-seg wrote; it is left as it is. "
                              "Choose another output folder.")
    names, foreign = [], []
    with os.scandir(target) as it:
        for entry in it:
            names.append(entry.name)
            parsed = parse_slice_name(entry.name)
            own = entry.name in PLUGIN_SIDECARS or (parsed is not None and parsed.patient == patient_id)
            if not own or not entry.is_file(follow_symlinks=False):
                foreign.append(entry.name)
    if not any(n in PLUGIN_SIDECARS for n in names):
        raise FileExistsError(f"{target} has no {PLUGIN_SIDECARS[0]} (it was not written by napari-lgg-seg); it "
                              "is never replaced. Choose another output folder.")
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"{target} holds files napari-lgg-seg did not write ({shown}); it is never replaced. "
                              "Move them away or choose another output folder.")


def check_patient_target(out_root: str | os.PathLike, patient_id: str, *, overwrite: bool = False,
                         source_folder: str | os.PathLike | None = None, image_files: list[str] | None = None) -> Path:
    """Raise the ``FileExistsError`` that :func:`write_patient_folder` would raise for ``OUT/<PATIENT>`` right now
    (exists and no ``overwrite``; the patient's source folder; a folder holding files the plugin did not write);
    returns the target. A cheap check before handing a write to a thread; the write checks again, atomically."""
    patient_id = sanitize_name(patient_id)
    target = Path(out_root) / patient_id
    if source_folder is not None or image_files is not None:
        _check_not_source(target, source_folder, image_files)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target} already exists; choose another output folder or allow overwriting.")
        _check_replaceable(target, patient_id)
    return target


def _check_not_source(target: Path, source: str | os.PathLike | None, image_files: list[str] | None) -> None:
    """Never replace the folder the patient was read from (or one holding the images being copied)."""
    resolved = _resolved(target)
    sources = [Path(source)] if source else []
    sources += [Path(f).parent for f in (image_files or [])[:1]]
    for folder in sources:
        folder = _resolved(folder)
        if folder == resolved or resolved in folder.parents or folder in resolved.parents:
            raise FileExistsError(f"{target} is the folder the patient was read from ({folder}); it is never "
                                  "replaced. Choose another output folder.")


def _restore_or_drop_backups(out_root: Path, patient_id: str, target: Path) -> None:
    """Under the lock: a ``.P.replaced-<pid>`` left by a writer killed between its two renames is restored when
    the patient folder is missing, and deleted when the new folder is in place."""
    for backup in sorted(out_root.glob(f".{glob_escape(patient_id)}.replaced-*")):
        if not target.exists() and not target.is_symlink():
            os.rename(backup, target)
            warnings.warn(f"{target} restored from {backup.name} (left by an interrupted overwrite)", stacklevel=3)
        else:
            shutil.rmtree(backup, ignore_errors=True)


def glob_escape(name: str) -> str:
    """Escape glob characters in a name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def write_patient_folder(
    out_root: str | os.PathLike,
    patient_id: str,
    masks: np.ndarray,
    *,
    images: np.ndarray | None = None,
    image_files: list[str] | None = None,
    slice_numbers: list[int] | None = None,
    sidecar: dict | None = None,
    overwrite: bool = False,
    masks_only: bool = False,
    source_folder: str | os.PathLike | None = None,
) -> Path:
    """Write a patient in the dataset layout, atomically (temporary folder, then rename under a lock).

    Images are copied byte for byte from ``image_files`` when those exist, else written from
    ``images``. Masks are written as uint8 0/255; a sidecar (``lgg_seg_export.json``) marks the folder as
    written by the plugin. Raises ``FileExistsError`` when the patient folder exists and ``overwrite`` is false
    (checked again atomically at the final rename, so of two concurrent writers one wins and one is refused),
    when it is the folder the patient was read from (``source_folder`` / ``image_files``), or when it holds
    files the plugin did not write.
    """
    out_root = Path(out_root)
    patient_id = sanitize_name(patient_id)
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise LGGFormatError(f"masks must be (Z, H, W); got shape {masks.shape}.")
    z = masks.shape[0]
    numbers = list(slice_numbers) if slice_numbers is not None else list(range(1, z + 1))
    if len(numbers) != z:
        raise LGGFormatError(f"{len(numbers)} slice numbers for {z} mask slices.")
    if not masks_only and images is None and image_files is None:
        raise LGGFormatError("images or image_files are needed to write a training folder.")
    target = out_root / patient_id
    _check_not_source(target, source_folder, image_files)

    def check_existing() -> None:
        check_patient_target(out_root, patient_id, overwrite=overwrite)

    check_existing()
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_root, prefix=f".{patient_id}.partial-"))
    tmp.chmod(0o777 & ~_current_umask())  # mkdtemp makes it 0700; the patient folder follows the umask
    try:
        for i, k in enumerate(numbers):
            if not masks_only:
                image_path = tmp / f"{patient_id}_{k}.tif"
                source = image_files[i] if image_files is not None else None
                if source is not None and Path(source).is_file():
                    shutil.copyfile(source, image_path)
                elif images is not None:
                    _write_tiff(image_path, np.asarray(images[i], dtype=np.uint8))
                else:
                    raise LGGFormatError(f"source image {source} is missing and no pixels were given.")
            mask = (masks[i] > 0).astype(np.uint8) * 255
            _write_tiff(tmp / f"{patient_id}_{k}_mask.tif", mask)
        meta = sidecar if sidecar is not None else {"patient_id": patient_id, "tool": "napari-lgg-seg"}
        (tmp / PLUGIN_SIDECARS[0]).write_text(json.dumps(meta, indent=2, default=str))
        with _folder_lock(out_root):
            _restore_or_drop_backups(out_root, patient_id, target)
            check_existing()  # again, atomically with the rename: a concurrent writer may have finished meanwhile
            if target.exists() or target.is_symlink():
                backup = out_root / f".{patient_id}.replaced-{os.getpid()}"
                os.rename(target, backup)
                os.rename(tmp, target)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
