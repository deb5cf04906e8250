"""Export corrected masks as training data in the dataset's own layout (Qt-free)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from .io import LGGFormatError, sanitize_name, write_patient_folder


def export_corrected_patient(
    out_root: str | os.PathLike,
    masks: np.ndarray,
    metadata: dict,
    *,
    images: np.ndarray | None = None,
    patient_id: str | None = None,
    model: str | None = None,
    voxels_edited: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``OUT/<PATIENT>/<PATIENT>_<k>.tif`` + ``_mask.tif`` (0/255) and a JSON sidecar.

    ``metadata`` is the layer metadata the reader made (source files and slice numbers); the
    original image files are copied byte for byte when they still exist, else ``images``
    (Z, H, W, 3) uint8 are written. Raises ``FileExistsError`` rather than overwrite; with ``overwrite`` it
    still never replaces the folder the patient was read from, nor a folder holding files it did not write.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise LGGFormatError(f"expected a 3D (Z, H, W) mask volume; got shape {masks.shape}")
    pid = sanitize_name(patient_id or metadata.get("lgg_patient_id") or "patient")
    numbers = metadata.get("lgg_slice_numbers") or list(range(1, masks.shape[0] + 1))
    files = metadata.get("lgg_image_files") or None
    if len(numbers) != masks.shape[0]:
        raise LGGFormatError(
            f"the mask has {masks.shape[0]} slices but the patient has {len(numbers)}; export needs the full volume"
        )
    if files is not None and not all(Path(f).is_file() for f in files):
        files = None if images is not None else files
    if files is not None and Path(files[0]).name.rsplit("_", 1)[0] != pid:
        files = None if images is not None else files  # renamed patient: write pixels under the new name
    sidecar = {
        "patient_id": pid,
        "source_folder": metadata.get("lgg_folder"),
        "source_files_copied": files is not None,
        "model": model,
        "exported": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "voxels_edited": voxels_edited,
        "tumour_voxels": int(np.count_nonzero(masks)),
        "slices": int(masks.shape[0]),
        "tool": "napari-lgg-seg",
    }
    return write_patient_folder(out_root, pid, masks, images=images, image_files=files, slice_numbers=numbers,
                                sidecar=sidecar, overwrite=overwrite, source_folder=metadata.get("lgg_folder"))
