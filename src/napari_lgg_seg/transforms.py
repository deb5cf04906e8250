"""Intensity normalisation (shared by training and inference) and batch augmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# Channels a missing sequence puts FLAIR into (the dataset copies FLAIR into a missing pre/post-contrast channel)
MISSING_SEQUENCES: dict[str, tuple[int, ...]] = {"intact": (), "flair_only": (0, 2), "no_post": (2,), "no_pre": (0,)}
FLAIR = 1


def simulate_missing_sequences(images: np.ndarray, condition: str) -> np.ndarray:
    """A (..., 3) uint8 volume as the dataset stores a patient lacking sequences: the channels of
    ``MISSING_SEQUENCES[condition]`` replaced by FLAIR ("intact" returns the input itself)."""
    if condition not in MISSING_SEQUENCES:
        raise ValueError(f"unknown missing-sequence condition {condition!r}; choose one of {', '.join(MISSING_SEQUENCES)}")
    channels = MISSING_SEQUENCES[condition]
    if not channels:
        return images
    out = np.array(images, copy=True)
    for c in channels:
        out[..., c] = out[..., FLAIR]
    return out


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation; every number is the strength of one ingredient (0 switches it off)."""

    flip: bool = True
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    intensity: float = 0.1  # per-channel gain and shift, uniform in +-intensity (standardised units)
    gamma: float = 0.0  # per-channel gamma exp(U(-gamma, gamma)) on the sample's own intensity range
    noise: float = 0.0  # Gaussian noise with a per-sample std drawn from U(0, noise)
    missing_both: float = 0.0  # share of samples with pre- and post-contrast replaced by FLAIR
    missing_post: float = 0.0  # share (of the rest) with post-contrast replaced by FLAIR
    missing_pre: float = 0.0  # share (of the rest) with pre-contrast replaced by FLAIR


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    augmentation: Augmentation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment normalised (N, C, H, W) images and (N, 1, H, W) {0, 1} masks on their device.

    Geometry (flip, rotation, scaling) first, padding with each sample's background, then per-channel
    intensity (gamma, gain / shift, noise), then missing sequences: FLAIR copied into pre- and/or
    post-contrast exactly as the dataset stores a patient lacking them (after per-channel
    standardisation a copied channel equals the standardised FLAIR). Random numbers come from the CPU
    ``generator``, so a run is repeatable whatever the device.
    """
    a = augmentation or Augmentation()
    n, channels = x.shape[:2]
    dev = x.device
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if a.flip else torch.ones(n)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(a.rotate_degrees)
    s = torch.empty(n).uniform_(a.scale[0], a.scale[1], generator=generator)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * sign
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * sign
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
    background = x.amin(dim=(2, 3), keepdim=True)  # what an empty (uint8 0) pixel standardises to
    x = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).to(y.dtype)
    if a.gamma > 0:
        g = torch.exp((torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * a.gamma).to(dev)
        lo, hi = background, x.amax(dim=(2, 3), keepdim=True)
        span = (hi - lo).clamp_min(1e-6)
        x = lo + ((x - lo) / span).clamp(0, 1).pow(g) * span
    if a.intensity > 0:
        gain = 1 + (torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * a.intensity
        shift = (torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * a.intensity
        x = x * gain.to(dev) + shift.to(dev)
    if a.noise > 0:
        std = (torch.rand(n, 1, 1, 1, generator=generator) * a.noise).to(dev)
        x = x + torch.randn(x.shape, generator=generator).to(dev) * std
    if a.missing_both > 0 or a.missing_post > 0 or a.missing_pre > 0:
        u = torch.rand(n, generator=generator)
        both = u < a.missing_both
        post = (u >= a.missing_both) & (u < a.missing_both + a.missing_post)
        pre = (u >= a.missing_both + a.missing_post) & (u < a.missing_both + a.missing_post + a.missing_pre)
        replace = torch.zeros(n, channels, 1, 1, dtype=torch.bool)
        replace[:, 0, 0, 0] = both | pre
        replace[:, 2, 0, 0] = both | post
        x = torch.where(replace.to(dev), x[:, FLAIR:FLAIR + 1], x)
    return x, y


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dims up to a multiple; returns the padded tensor and original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)
