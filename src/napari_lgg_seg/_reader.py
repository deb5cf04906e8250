"""npe2 reader: an LGG patient folder (or one of its slices) -> FLAIR/pre/post images + ground truth.

Also reads the command line's output folders (masks only, with the sidecar naming their source folder): the source
images with the masks as the ``<PATIENT> tumour`` layer, ready to correct. A dataset root (a folder of patient folders,
or of such mask folders) opens its first patient; its layers name the root, and a viewer hook (``_viewer_hooks``, no
widget import here) brings up the patient browser for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .display import DATASET_ROOT_KEY, patient_layer_data, tumour_layer_data
from .io import (
    LGGFormatError,
    Patient,
    is_patient_folder,
    load_patient,
    parse_slice_name,
    read_tiff,
)

__all__ = ["napari_get_reader", "patient_layer_data", "read_patient", "read_dataset_root", "patient_folders",
           "mask_folder_source", "is_mask_folder", "load_folder"]

SIDECAR_NAMES = ("lgg_seg_segment.json", "lgg_seg_export.json")  # written by `napari-lgg-seg segment` / export


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            paths = {Path(p).parent if Path(p).is_file() else Path(p) for p in path}
            return str(paths.pop()) if len(paths) == 1 else None
        path = path[0]
    return str(path)


def _mask_files(folder: Path) -> dict[int, Path]:
    """``{slice number: file}`` of a folder's ``<PATIENT>_<k>_mask.tif`` files (empty when it has image slices)."""
    masks: dict[int, Path] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    for entry in entries:
        parsed = parse_slice_name(entry.name)
        if parsed is None:
            continue
        if not parsed.is_mask:
            return {}
        masks[parsed.index] = Path(entry.path)
    return masks


def _sidecar(folder: Path) -> tuple[Path, dict] | None:
    for name in SIDECAR_NAMES:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("source_folder"):
                return path, data
    return None


def mask_folder_source(folder: str | os.PathLike) -> Path | None:
    """The source patient folder recorded in a masks-only folder's sidecar; None when ``folder`` is not one."""
    folder = Path(folder)
    if not folder.is_dir() or not _mask_files(folder):
        return None
    found = _sidecar(folder)
    if found is None:
        return None
    source = Path(str(found[1]["source_folder"]))
    return source if source.is_absolute() else (folder / source)


def is_mask_folder(path: str | os.PathLike) -> bool:
    """True for a masks-only folder (``segment`` output) whose sidecar names its source images."""
    return mask_folder_source(path) is not None


def patient_folders(root: str | os.PathLike) -> list[Path]:
    """Folders directly below ``root`` that this reader opens (patient folders and masks-only folders), by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in children if is_patient_folder(p) or is_mask_folder(p)]


def napari_get_reader(path):
    """Return a reader for LGG patient folders, their slice files, segment output folders and dataset roots."""
    path = _single_path(path)
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        parsed = parse_slice_name(p.name)
        if parsed is None or not (is_patient_folder(p.parent) or is_mask_folder(p.parent)):
            return None
        return read_patient
    if is_patient_folder(p) or is_mask_folder(p):
        return read_patient
    if p.is_dir() and patient_folders(p):
        return read_dataset_root
    return None


def load_folder(folder: str | os.PathLike) -> tuple[Patient, list[tuple]]:
    """A patient folder or a ``segment`` output folder: ``(patient, extra layer-data tuples)``; the extra layer is
    the output's masks as ``<PATIENT> tumour`` (none for a patient folder). For the patient browser."""
    folder = Path(folder)
    if is_mask_folder(folder):
        patient, masks, extra = _load_mask_folder(folder)
        return patient, [tumour_layer_data(patient, masks, extra)]
    return load_patient(folder), []


def read_folder(folder: str | os.PathLike) -> tuple[Patient, list[tuple], list[tuple]]:
    """``(patient, extra layer tuples, patient layer tuples)`` of a patient (or segment output) folder, with the
    patient's contrast computed: what the patient browser shows (any thread)."""
    patient, extra_layers = load_folder(folder)
    return patient, extra_layers, patient_layer_data(patient)


def signature_of(folder: str | os.PathLike) -> tuple:
    """Names, sizes and modification times of a folder's files (and of a segment output's source folder): a copy
    read earlier is still the folder's while this is unchanged."""
    def listing(path) -> tuple:
        try:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)))
        except OSError:
            return ()

    source = mask_folder_source(folder)
    return listing(folder), (listing(source) if source is not None else ())


def read_folder_signed(folder: str | os.PathLike) -> tuple[tuple, tuple[Patient, list[tuple], list[tuple]]]:
    """``(signature_of(folder), read_folder(folder))``, the signature taken first: a file written meanwhile makes
    the signatures differ, so the copy is not used (the patient browser's prefetch)."""
    signature = signature_of(folder)
    return signature, read_folder(folder)


def read_mask_folder(folder: str | os.PathLike) -> list[tuple]:
    """A ``segment`` output folder: its source patient's layers plus the masks as the ``<PATIENT> tumour`` layer."""
    patient, masks, extra = _load_mask_folder(Path(folder))
    return [*patient_layer_data(patient), tumour_layer_data(patient, masks, extra)]


def _load_mask_folder(folder: Path) -> tuple[Patient, np.ndarray, dict]:
    sidecar_path, info = _sidecar(folder) or (None, {})
    source = mask_folder_source(folder)
    if source is None or sidecar_path is None:
        raise LGGFormatError(f"{folder}: not a segment output folder (masks with a sidecar naming the source).")
    if not is_patient_folder(source):
        raise LGGFormatError(
            f"{folder}: its masks were made from {source} ({sidecar_path.name}), but no image slices are there now; "
            f"put the patient's images back at {source} (or edit source_folder in {sidecar_path})."
        )
    patient = load_patient(source)
    files = _mask_files(folder)
    if sorted(files) != list(patient.slice_numbers):
        raise LGGFormatError(
            f"{folder}: its masks are for slices {sorted(files)[:3]}... ({len(files)}) but {source} has slices "
            f"{patient.slice_numbers[:3]}... ({patient.num_slices}); they do not belong together."
        )
    masks = []
    for k in patient.slice_numbers:
        mask = np.asarray(read_tiff(files[k]))
        if mask.ndim == 3:
            mask = mask.max(axis=-1)
        if mask.shape != patient.images.shape[1:3]:
            raise LGGFormatError(f"{files[k]}: mask is {mask.shape} but its image in {source} is "
                                 f"{patient.images.shape[1:3]}.")
        masks.append(mask > 0)
    return patient, np.stack(masks), {"lgg_masks_folder": str(folder), "lgg_model": info.get("model")}


def read_patient(path) -> list[tuple]:
    """Read one patient (folder, slice path, or a segment output folder) into layer-data tuples."""
    from ._viewer_hooks import after_read

    path = Path(_single_path(path))
    folder = path.parent if path.is_file() else path
    layers = read_mask_folder(folder) if is_mask_folder(folder) else patient_layer_data(load_patient(folder))
    after_read(folder, folder.parent if _has_other_patients(folder) else None)
    return layers


def _has_other_patients(folder: Path) -> bool:
    """True when ``folder``'s parent holds another patient folder (it is a dataset root)."""
    parent = folder.parent
    if parent == folder:
        return False
    try:
        siblings = [p for p in parent.iterdir() if p.is_dir() and p.name != folder.name and not p.name.startswith(".")]
    except OSError:
        return False
    return any(is_patient_folder(p) or is_mask_folder(p) for p in siblings)


def read_dataset_root(path) -> list[tuple]:
    """The first patient of a dataset root; its layers name the root (the viewer then shows the patient browser)."""
    from ._viewer_hooks import after_read

    root = Path(_single_path(path)).resolve()
    folders = patient_folders(root)
    if not folders:
        raise LGGFormatError(f"{root}: no patient folders (<PATIENT>/<PATIENT>_<k>.tif) found.")
    first = folders[0]
    if is_mask_folder(first):
        layers = read_mask_folder(first)
    else:
        layers = patient_layer_data(load_patient(first))
    for _, kwargs, _ in layers:
        kwargs["metadata"] = {**kwargs["metadata"], DATASET_ROOT_KEY: str(root)}
    after_read(root, root)
    return layers
