"""Dataset index, patient split and the in-memory slice store used by training (Qt-free)."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import LGGFormatError, Patient, atomic_write, load_patient, require_patient_folders
from .transforms import volume_channel_stats


def index_patients(roots: list[str | os.PathLike]) -> dict[str, Path]:
    """Map patient id (folder name) -> folder over one or more roots in the LGG layout.

    Patients are identified by their resolved folder: a link to a folder already indexed (in the same or another
    root) is skipped with a warning, so no patient is counted twice. Hidden/temporary folders are never patients.
    """
    found: dict[str, Path] = {}
    by_resolved: dict[Path, str] = {}
    for root in roots:
        for folder in require_patient_folders(root):
            resolved = folder.resolve()
            if resolved in by_resolved:
                warnings.warn(f"{folder} is the same folder as patient {by_resolved[resolved]}; counted once",
                              stacklevel=2)
                continue
            if folder.name in found:
                warnings.warn(f"patient {folder.name} found in several roots; using {folder}", stacklevel=2)
                by_resolved = {k: v for k, v in by_resolved.items() if v != folder.name}
            found[folder.name] = folder
            by_resolved[resolved] = folder.name
    return found


def split_patients(
    patient_ids: list[str],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.0,
    seed: int = 0,
    train: list[str] | None = None,
    val: list[str] | None = None,
    test: list[str] | None = None,
) -> dict[str, list[str]]:
    """Seeded split **by patient** into train / val / test; explicit lists win over fractions."""
    ids = sorted(set(patient_ids))
    test = sorted(test or [])
    val = sorted(val or [])
    for name, chosen in (("val", val), ("test", test)):
        missing = set(chosen) - set(ids)
        if missing:
            raise ValueError(f"{name} patients not in the data: {', '.join(sorted(missing))}")
    if train:
        train = sorted(set(train) & set(ids))
        rest = [p for p in ids if p not in train and p not in val and p not in test]
        if not val and rest:
            val = rest
    else:
        rng = np.random.default_rng(seed)
        pool = [p for p in ids if p not in val and p not in test]
        pool = [pool[i] for i in rng.permutation(len(pool))]
        n = len(ids)
        if not test and test_fraction > 0:
            k = max(1, round(n * test_fraction))
            test, pool = sorted(pool[:k]), pool[k:]
        if not val and val_fraction > 0:
            k = max(1, round(n * val_fraction))
            val, pool = sorted(pool[:k]), pool[k:]
        train = sorted(pool)
    if set(train) & set(val) or set(train) & set(test) or set(val) & set(test):
        raise ValueError("a patient appears in more than one of train / val / test")
    if not train:
        raise ValueError("no patients left for training")
    return {"train": train, "val": sorted(val), "test": sorted(test)}


def _cache_key(folder: Path) -> str:
    h = hashlib.sha1()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.lower().endswith((".tif", ".tiff")):
            st = entry.stat()
            h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_patient_cached(folder: Path, cache_dir: str | os.PathLike | None = None) -> Patient:
    """Load a patient, reusing a decoded ``.npz`` in ``cache_dir`` when the files are unchanged."""
    if not cache_dir:
        return load_patient(folder)
    cache = Path(cache_dir) / f"{folder.name}-{_cache_key(folder)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                masks = z["masks"] if z["has_masks"] else None
                return Patient(folder.name, z["images"], masks, z["slice_numbers"].tolist(), [], [], str(folder))
        except Exception:
            pass
    patient = load_patient(folder)
    try:  # the cache is an optimisation: a full disk or a read-only folder must not stop training
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: np.savez(
            f, images=patient.images, masks=patient.masks if patient.masks is not None else np.zeros(0),
            has_masks=patient.masks is not None, slice_numbers=np.asarray(patient.slice_numbers)))
    except OSError as err:
        warnings.warn(f"Could not write the decoded-slice cache {cache}: {err}; continuing without it.",
                      stacklevel=2)
    return patient


@dataclass
class SliceStore:
    """All slices of a set of patients, decoded once into memory (uint8)."""

    patient_ids: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8 {0, 1}
    stats: np.ndarray  # (N, 2, 3) per-slice copy of the patient's channel stats
    patient_of_slice: np.ndarray  # (N,) index into patient_ids
    offsets: list[tuple[int, int]]  # slice range of each patient

    @property
    def tumour_slices(self) -> np.ndarray:
        return np.flatnonzero(self.masks.reshape(len(self.masks), -1).any(axis=1))

    def patient_slices(self, i: int) -> slice:
        start, stop = self.offsets[i]
        return slice(start, stop)

    @classmethod
    def load(cls, folders: dict[str, Path], patient_ids: list[str], cache_dir: str | None = None,
             image_size: int | None = 256) -> SliceStore:
        """Decode the given patients; slices not of ``image_size`` are resized (training needs one size)."""
        images, masks, stats, owner, offsets = [], [], [], [], []
        n = 0
        for i, pid in enumerate(patient_ids):
            patient = load_patient_cached(folders[pid], cache_dir)
            if patient.masks is None:
                raise LGGFormatError(f"{folders[pid]}: no mask files; training needs <PATIENT>_<k>_mask.tif.")
            imgs, msk = patient.images, patient.masks
            if image_size and imgs.shape[1:3] != (image_size, image_size):
                imgs, msk = resize_pair(imgs, msk, image_size)
            images.append(imgs)
            masks.append(msk)
            stats.append(np.repeat(volume_channel_stats(imgs)[None], len(imgs), axis=0))
            owner.append(np.full(len(imgs), i))
            offsets.append((n, n + len(imgs)))
            n += len(imgs)
        return cls(list(patient_ids), np.concatenate(images), np.concatenate(masks), np.concatenate(stats),
                   np.concatenate(owner), offsets)


def resize_pair(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks at ``size`` x ``size``: the images the way inference resizes them
    (``inference.resize_images``), the masks by area averaging then a 0.5 threshold."""
    import torch

    from .inference import resize_images, resize_probabilities

    m = resize_probabilities(torch.from_numpy(masks).float(), (size, size))
    return resize_images(images, (size, size)), (m >= 0.5).to(torch.uint8).numpy()


def sample_crop_origins(
    store: SliceStore, indices: np.ndarray, crop: int, rng: np.random.Generator, centre_on_tumour: np.ndarray
) -> np.ndarray:
    """Top-left corners of ``crop`` windows: around a tumour pixel where asked, else in the head."""
    h, w = store.images.shape[1:3]
    origins = np.zeros((len(indices), 2), np.int64)
    for j, i in enumerate(indices):
        if centre_on_tumour[j]:
            ys, xs = np.nonzero(store.masks[i])
        else:
            ys, xs = np.nonzero(store.images[i, :, :, 1] > 10)
        if ys.size:
            k = rng.integers(ys.size)
            cy = ys[k] + rng.integers(-crop // 4, crop // 4 + 1)
            cx = xs[k] + rng.integers(-crop // 4, crop // 4 + 1)
        else:
            cy, cx = rng.integers(h), rng.integers(w)
        origins[j] = (np.clip(cy - crop // 2, 0, h - crop), np.clip(cx - crop // 2, 0, w - crop))
    return origins
