"""npe2 writer: a Labels layer -> a folder of ``<PATIENT>_<k>_mask.tif`` (0/255) in the LGG layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import sanitize_name, write_patient_folder


def write_mask_folder(path: str, data, meta: dict) -> list[str]:
    """Save a Labels layer as ``path/<PATIENT>/<PATIENT>_<k>_mask.tif``; refuses to overwrite."""
    metadata = meta.get("metadata", {}) or {}
    pid = sanitize_name(metadata.get("lgg_patient_id") or meta.get("name") or Path(path).stem)
    masks = np.asarray(data)
    if masks.ndim == 2:
        masks = masks[None]
    numbers = metadata.get("lgg_slice_numbers")
    if numbers is None or len(numbers) != masks.shape[0]:
        numbers = list(range(1, masks.shape[0] + 1))
    target = write_patient_folder(path, pid, masks, slice_numbers=numbers, masks_only=True,
                                  sidecar={"patient_id": pid, "layer": meta.get("name"), "tool": "napari-lgg-seg"})
    return [str(target)]
