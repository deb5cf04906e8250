"""Synthetic MRI-like phantom patients (the sample data and the tests' data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def make_phantom(n_slices: int = 24, size: int = 256, seed: int = 0, lesion: bool = True,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A head-like phantom: (Z, H, W, 3) uint8 images and (Z, H, W) uint8 {0, 1} lesion mask.

    Channels mimic pre-contrast, FLAIR and post-contrast: an elliptical head with a skull rim,
    brain texture, ventricles and (optionally) a FLAIR-bright ellipsoidal lesion in the middle
    third of the slices.
    """
    rng = np.random.default_rng(seed)
    z = np.linspace(-1, 1, n_slices)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy = (yy - size / 2) / (size / 2)
    xx = (xx - size / 2) / (size / 2)
    a, b = 0.72 + 0.05 * rng.random(), 0.86 + 0.05 * rng.random()
    shrink = np.sqrt(np.clip(1 - (z / 1.15) ** 2, 0.05, 1))
    r_head = (xx / (a * shrink)) ** 2 + (yy / (b * shrink)) ** 2
    head = r_head <= 1.0
    brain = r_head <= 0.82
    ventricles = ((xx / 0.12) ** 2 + ((yy + 0.05) / 0.28) ** 2 <= 1) & (np.abs(z) < 0.5)
    texture = rng.normal(0, 1, (n_slices, size, size)).astype(np.float32)
    from scipy import ndimage

    texture = ndimage.gaussian_filter(texture, sigma=(0.5, 3, 3))
    texture /= texture.std() + 1e-6
    mask = np.zeros((n_slices, size, size), bool)
    if lesion:
        cx, cy = rng.uniform(-0.35, 0.35), rng.uniform(-0.4, 0.2)
        rx, ry, rz = rng.uniform(0.12, 0.22), rng.uniform(0.12, 0.22), rng.uniform(0.25, 0.4)
        cz = rng.uniform(-0.2, 0.2)
        warp = 1 + 0.15 * np.sin(3 * np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 6))
        mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) * warp + ((z - cz) / rz) ** 2 <= 1
        mask &= brain
    channels = []
    # intensities as in the real data (uint8 after the dataset's per-volume scaling): brain ~60 on every channel,
    # the lesion ~1.8x brain on FLAIR and near brain on pre/post-contrast, dark CSF on FLAIR, bright scalp
    for base_brain, base_vent, lesion_level, skull in ((65, 30, 55, 140), (62, 25, 112, 80), (62, 35, 62, 120)):
        img = np.zeros((n_slices, size, size), np.float32)
        img[head] = skull
        img[brain] = base_brain
        img[brain & ventricles] = base_vent
        img += 6 * texture * brain
        img[mask] = lesion_level + 8 * texture[mask]
        img += rng.normal(0, 3, img.shape) * head + np.abs(rng.normal(0, 1.5, img.shape))
        channels.append(np.clip(img, 0, 255))
    images = np.stack(channels, axis=-1).round().astype(np.uint8)
    return images, mask.astype(np.uint8)


def write_phantom_dataset(root: str | os.PathLike, n_patients: int = 3, n_slices: int = 12, size: int = 256,
                          seed: int = 0, prefix: str = "PHANTOM") -> list[Path]:
    """Write phantom patients in the dataset's layout (``ROOT/<ID>/<ID>_<k>.tif`` + masks)."""
    from .io import write_patient_folder

    folders = []
    for i in range(n_patients):
        images, masks = make_phantom(n_slices, size, seed=seed + i)
        pid = f"{prefix}_{i:02d}_20000101"
        folders.append(write_patient_folder(root, pid, masks, images=images, overwrite=True))
    return folders
