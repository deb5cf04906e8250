"""Intensity normalisation (shared by training and inference) and batch augmentation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_MIN_STD = 1.0


def volume_channel_stats(images: np.ndarray) -> np.ndarray:
    """Per-channel mean and std over the head (voxels > 0) of a (Z, H, W, 3) uint8 volume.

    Returns a (2, C) float32 array. MRI intensities have no absolute scale, so each patient is
    standardised on its own (as nnU-Net does for MRI); training and inference both use this.
    """
    images = np.asarray(images)
    channels = images.shape[-1]
    stats = np.zeros((2, channels), np.float32)
    flat = images.reshape(-1, channels)
    step = max(1, flat.shape[0] // 2_000_000)  # a strided subsample keeps this fast on big volumes
    sample = flat[::step].astype(np.float32)
    for c in range(channels):
        values = sample[:, c]
        foreground = values[values > 0]
        if foreground.size < 100:
            foreground = values
        stats[0, c] = float(foreground.mean()) if foreground.size else 0.0
        stats[1, c] = max(float(foreground.std()) if foreground.size else 1.0, _MIN_STD)
    return stats


def normalize(batch: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Standardise an (N, C, H, W) uint8/float batch with per-sample (N, 2, C) stats -> float32."""
    x = batch.float()
    mean = stats[:, 0, :, None, None].to(x.device, x.dtype)
    std = stats[:, 1, :, None, None].to(x.device, x.dtype)
    return (x - mean) / std


def to_tensor_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy -> (N, C, H, W) uint8 tensor (no copy of the pixels' values)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool = True,
    rotate_degrees: float = 15.0,
    scale: tuple[float, float] = (0.9, 1.1),
    intensity: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation + scaling and intensity jitter on normalised (N, C, H, W) images.

    ``y`` is (N, 1, H, W) float in {0, 1}; it gets the same geometry (nearest-style via >0.5).
    """
    n = x.shape[0]
    dev = x.device
    if flip:
        do_flip = torch.rand(n, generator=generator) < 0.5
        sign = torch.where(do_flip, -1.0, 1.0)
    else:
        sign = torch.ones(n)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate_degrees)
    s = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * sign
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * sign
    theta[:, 1, 1] = cos
    theta = theta.to(dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(y.dtype)
    if intensity > 0:
        gain = 1 + (torch.rand(n, x.shape[1], 1, 1, generator=generator) * 2 - 1) * intensity
        shift = (torch.rand(n, x.shape[1], 1, 1, generator=generator) * 2 - 1) * intensity
        x = x * gain.to(dev) + shift.to(dev)
    return x, y


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dims up to a multiple; returns the padded tensor and original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)
