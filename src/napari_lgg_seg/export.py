"""Export corrected masks as training data in the dataset's own layout: from arrays, or from a viewer's tumour
layer (Qt-free)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import recovery
from .io import LGGFormatError, check_patient_target, sanitize_name, write_patient_folder
from .layers import find_patients, mark_exported, tumour_layer, voxels_changed


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


# ------------------------------------------------------------- from a viewer (the docks and the workflow)


def _model_description(meta: dict) -> str | None:
    """'label (path)' of the model that made a prediction layer, or None."""
    path, label = meta.get("lgg_model"), meta.get("lgg_model_label")
    if path and label and label != Path(path).name:
        return f"{label} ({path})"
    return path or label


@dataclass
class ExportJob:
    """One export, prepared on the GUI thread by :func:`prepare_export`: :meth:`write` may then run in any thread
    (it only reads copies taken here), :meth:`finish` runs back on the GUI thread."""

    layer: object
    patient_id: str
    out_root: str
    data: np.ndarray  # a copy of the layer's data as exported (painting meanwhile does not change it)
    metadata: dict
    images: np.ndarray | None
    voxels_edited: int | None
    overwrite: bool = False

    def write(self) -> Path:
        """Write ``OUT/<PATIENT>/`` (atomically); raises as :func:`export_patient`."""
        masks = self.data[None] if self.data.ndim == 2 else self.data
        return export_corrected_patient(self.out_root, masks, self.metadata, images=self.images,
                                        patient_id=self.patient_id, model=_model_description(self.metadata),
                                        voxels_edited=self.voxels_edited, overwrite=self.overwrite)

    def finish(self) -> None:
        """After a successful write: the layer is marked exported (with what was written) and its autosave cleared."""
        mark_exported(self.layer, self.data)
        recovery.clear_recovery(self.patient_id)


def prepare_export(viewer, out_root: str | os.PathLike, *, patient_id: str | None = None, layer=None,
                   overwrite: bool = False) -> ExportJob:
    """Gather what :func:`export_patient` writes (GUI thread, a few ms) and refuse early what it would refuse
    before writing anything: ``ValueError`` (nothing to export), ``FileExistsError`` (already exported, or the
    patient's source folder)."""
    if layer is None:
        layer = tumour_layer(viewer, patient_id)
        if layer is None:
            raise ValueError(f"{patient_id or 'this patient'} has no tumour layer to export: segment it first.")
    meta = dict(layer.metadata or {})
    pid = patient_id or meta.get("lgg_patient_id")
    patients = find_patients(viewer)
    patient = patients.get(pid) if pid else None
    if patient is None and not pid:  # a hand-made layer: the one open patient of the same shape
        same = [p for p in patients.values() if np.shape(p.reference.data) == np.shape(layer.data)]
        patient = same[0] if len(same) == 1 else None
        pid = patient.patient_id if patient is not None else sanitize_name(layer.name)
        meta = {**(patient.metadata() if patient is not None else {}), **meta}
    data = np.array(layer.data, copy=True)
    masks = data[None] if data.ndim == 2 else data
    images = None
    if patient is not None:
        try:
            images = patient.volume()
        except ValueError:
            images = None
        images = images if images is not None and images.shape[:3] == masks.shape else None
    out_root = os.path.expanduser(out_root)
    check_patient_target(out_root, pid, overwrite=overwrite, source_folder=meta.get("lgg_folder"))
    return ExportJob(layer, pid, out_root, data, meta, images, voxels_changed(layer), overwrite)


def export_patient(viewer, out_root: str | os.PathLike, *, patient_id: str | None = None, layer=None,
                   overwrite: bool = False) -> Path:
    """Export ``layer`` (default: the tumour layer of ``patient_id``) to ``OUT/<PATIENT>/`` with the patient's source
    images and a sidecar; marks it exported and clears its autosave. Returns the patient folder written.

    Raises ``ValueError`` (nothing to export), ``FileExistsError`` (already exported; nothing written unless
    ``overwrite``), ``LGGFormatError`` or ``OSError``. :func:`prepare_export` + ``ExportJob.write`` (in a worker) +
    ``ExportJob.finish`` do the same without writing on the GUI thread.
    """
    job = prepare_export(viewer, out_root, patient_id=patient_id, layer=layer, overwrite=overwrite)
    target = job.write()
    job.finish()
    return target
