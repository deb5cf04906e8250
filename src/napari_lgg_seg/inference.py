"""U-Net inference on whole patient volumes and 3D post-processing (Qt-free)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import normalize, pad_to_multiple, to_tensor_batch, volume_channel_stats

DEVICES = ("auto", "cpu", "cuda", "mps")
HEAD_THRESHOLD = 10  # uint8 level above which a pixel counts as head (any channel)


def available_devices() -> list[str]:
    """Device choices present on this machine ("auto" first)."""
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str = "auto") -> torch.device:
    """Turn auto / cpu / cuda / mps into a torch device; unknown or absent devices raise."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device not in available_devices():
        raise ValueError(f"device {device!r} is not available here; choose one of {', '.join(available_devices())}")
    return torch.device(device)


# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) at or above native bf16 matmul; "ALL"/"DEFAULT" cap nothing
ONEDNN_BF16_ISAS = frozenset({"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
                              "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                              "AVX10_2_512_AMX_2", "ALL", "DEFAULT"})


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); read from the CPU flags.

    Override with ``LGG_SEG_CPU_BF16=0/1``. A oneDNN ISA cap below bf16 (``ONEDNN_MAX_CPU_ISA=AVX2``, as used
    to run an AVX2-only CPU's code paths on a newer one) also means no fast bf16: oneDNN would then emulate it.
    """
    forced = os.environ.get("LGG_SEG_CPU_BF16")
    if forced is not None:
        return forced.strip() not in ("0", "false", "no", "")
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa_cap and isa_cap not in ONEDNN_BF16_ISAS:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def cpu_uses_bf16(precision: str = "auto") -> bool:
    """Whether CPU work runs in bf16 autocast: asked for, or ``auto`` on a CPU with native bf16."""
    precision = precision.lower()
    return precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16())


def autocast_context(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CPUs with native bf16 and on CUDA; fp16 on MPS; else a no-op."""
    precision = precision.lower()
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_uses_bf16(precision) else contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "mps" and precision in ("auto", "fp16"):
        return torch.autocast("mps", dtype=torch.float16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on the device, channels_last memory format (fast on CPU and GPU)."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last)


@dataclass
class PostProcessing:
    """Threshold and 3D clean-up applied to probabilities."""

    threshold: float = 0.5
    min_lesion_voxels: int = 0
    keep_largest: bool = False
    fill_holes: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> PostProcessing:
        d = d or {}
        return cls(**{k: d[k] for k in ("threshold", "min_lesion_voxels", "keep_largest", "fill_holes") if k in d})


def card_settings(loaded, tta: bool | None = None, overrides: dict | None = None) -> tuple[PostProcessing, bool]:
    """``(PostProcessing, tta)`` from a checkpoint card's inference defaults (``LoadedModel``), with overrides."""
    defaults = loaded.inference_defaults
    settings = PostProcessing.from_dict({**defaults, **(overrides or {})})
    return settings, bool(defaults.get("tta", False)) if tta is None else bool(tta)


def postprocess(probabilities: np.ndarray, settings: PostProcessing | None = None) -> np.ndarray:
    """Binary uint8 mask from (Z, H, W) probabilities (or one (H, W) slice): threshold, small-lesion removal,
    largest 3D component, per-slice hole filling."""
    from scipy import ndimage

    if np.ndim(probabilities) == 2:
        return postprocess(np.asarray(probabilities)[None], settings)[0]
    s = settings or PostProcessing()
    mask = np.asarray(probabilities) >= s.threshold
    if (s.min_lesion_voxels > 0 or s.keep_largest) and mask.any():
        labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))
        if n > 0:
            sizes = np.bincount(labels.ravel())[1:]
            keep = sizes >= max(s.min_lesion_voxels, 1)
            if s.keep_largest and keep.any():
                largest = int(np.argmax(np.where(keep, sizes, -1)))
                keep = np.zeros_like(keep)
                keep[largest] = True
            mask = np.concatenate([[False], keep])[labels]
    if s.fill_holes and mask.any():
        mask = fill_holes_per_slice(mask)
    return mask.astype(np.uint8)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """A (Z, H, W) boolean mask with the holes of each slice filled (slices without tumour are skipped)."""
    from scipy import ndimage

    out = mask.copy()
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def head_bounding_box(images: np.ndarray, margin: int = 16, multiple: int = 16) -> tuple[slice, slice]:
    """Bounding box (rows, cols) of the head over a (N, H, W, C) batch, padded and rounded up."""
    head = (images > HEAD_THRESHOLD).any(axis=(0, 3))
    h, w = head.shape
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    if rows.size == 0:
        return slice(0, h), slice(0, w)

    def span(lo: int, hi: int, size: int) -> slice:
        lo, hi = max(lo - margin, 0), min(hi + 1 + margin, size)
        length = min(-(-(hi - lo) // multiple) * multiple, size)
        lo = max(min(lo, size - length), 0)
        return slice(lo, lo + length)

    return span(rows[0], rows[-1], h), span(cols[0], cols[-1], w)


class NonFiniteOutputError(ValueError):
    """The network produced NaN or infinite probabilities: its result cannot be right."""


def check_finite(probabilities: np.ndarray, model: torch.nn.Module) -> None:
    """Raise ``NonFiniteOutputError`` naming the model's checkpoint (``model.source_path``, set by
    ``model.load_model``) when ``probabilities`` hold NaN or inf: a thresholded NaN would read as "no tumour".
    (numpy's check: 0.2 ms for 16 slices of 256 x 256, where torch's took 40 ms on a busy 2-core machine.)"""
    if not bool(np.isfinite(probabilities).all()):
        net = getattr(model, "module", model)
        source = getattr(net, "source_path", None) or "the model (not loaded from a file)"
        raise NonFiniteOutputError(
            f"{source}: the network produced NaN or infinite probabilities, so its mask would be meaningless; "
            "the checkpoint's weights are probably broken (a diverged training run). Use another checkpoint.")


def iter_predict_volume(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 16,
    tta: bool = False,
    precision: str = "auto",
    crop_to_head: bool = True,
    skip_empty: bool = True,
    stats: np.ndarray | None = None,
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Yield ``(slices_done, total, None)`` while predicting, then ``(total, total, probs)``.

    ``images`` is (Z, H, W, 3) uint8; ``probs`` is (Z, H, W) float32 tumour probability. Slices
    without head (all pixels dark) get probability 0 without running the network. With
    ``crop_to_head`` every slice is cropped to the head's bounding box over the whole volume (plus a
    margin) and pasted back, so a result never depends on the batch size. ``tta`` averages the prediction with that of the left-right flipped image.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a (Z, H, W, 3) volume; got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images; got {images.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number >= 1; got {batch_size!r}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    z, h, w, _ = images.shape
    probs = np.zeros((z, h, w), np.float32)
    if stats is None:
        stats = volume_channel_stats(images)
    stats_t = torch.from_numpy(np.asarray(stats, np.float32))[None]
    indices = np.arange(z)
    if skip_empty:
        indices = indices[(images > HEAD_THRESHOLD).reshape(z, -1).any(axis=1)]
    done = z - indices.size
    rows, cols = head_bounding_box(images[indices]) if crop_to_head and indices.size else (slice(0, h), slice(0, w))
    yield done, z, None
    param = next(model.parameters())
    if param.device != dev:
        model = model.to(dev)
    with torch.inference_mode(), autocast_context(dev, precision):
        for start in range(0, indices.size, batch_size):
            idx = indices[start:start + batch_size]
            x = to_tensor_batch(images[idx][:, rows, cols])
            x = normalize(x, stats_t.expand(len(idx), -1, -1))
            x, (ch, cw) = pad_to_multiple(x)
            x = x.to(dev).contiguous(memory_format=torch.channels_last)
            p = torch.sigmoid(model(x).float())
            if tta:
                p = 0.5 * (p + torch.sigmoid(model(torch.flip(x, dims=[3])).float()).flip(dims=[3]))
            batch_probs = p[:, 0, :ch, :cw].cpu().numpy()
            check_finite(batch_probs, model)
            probs[idx, rows, cols] = batch_probs
            done += len(idx)
            yield done, z, None
    yield z, z, probs


def _final_probabilities(steps: Iterator[tuple[int, int, np.ndarray | None]],
                         progress: Callable[[int, int], None] | None) -> np.ndarray:
    """Run a prediction generator to its end, reporting progress; returns its probabilities."""
    result = None
    for done, total, probs in steps:
        if progress is not None:
            progress(done, total)
        if probs is not None:
            result = probs
    assert result is not None
    return result


def predict_volume(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> np.ndarray:
    """(Z, H, W, 3) uint8 volume -> (Z, H, W) float32 tumour probability (see ``iter_predict_volume``)."""
    return _final_probabilities(iter_predict_volume(model, images, **kwargs), progress)


MODEL_SIZE = 256  # slice size of the training data


def model_input_size(h: int, w: int, size: int = MODEL_SIZE, tolerance: float = 0.25) -> tuple[int, int]:
    """(H, W) the network sees for an H x W slice.

    Sizes within ``tolerance`` of ``size`` are kept (padding to a multiple of 16 handles the rest);
    others are scaled, keeping the aspect ratio, so that the longer side is ``size``.
    """
    lo, hi = size * (1 - tolerance), size * (1 + tolerance)
    if lo <= h <= hi and lo <= w <= hi:
        return int(h), int(w)
    scale = size / max(h, w)
    return max(16, round(h * scale)), max(16, round(w * scale))


def _resize_stack(t: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) float tensor, antialiased when shrinking."""
    shrink = shape[0] < t.shape[-2] or shape[1] < t.shape[-1]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink)


def resize_images(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(Z, H, W, C) uint8 slices resized to ``shape`` for the network (training and inference alike)."""
    t = _resize_stack(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float(), shape)
    return np.ascontiguousarray(t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def resize_probabilities(probs: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(Z, H, W) probabilities (or a binary mask as float) resized to ``shape``, kept in [0, 1]."""
    t = torch.as_tensor(probs, dtype=torch.float32)
    return _resize_stack(t[:, None], shape)[:, 0].clamp(0, 1)


def iter_predict_any_size(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    size: int = MODEL_SIZE,
    **kwargs,
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """``iter_predict_volume`` for slices of any size: slices far from the training size ``size`` are resized
    for the network (``model_input_size``) and the probabilities come back at the original (H, W)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a (Z, H, W, 3) volume; got shape {images.shape}")
    z, h, w, _ = images.shape
    shape = model_input_size(h, w, size)
    if shape == (h, w):
        yield from iter_predict_volume(model, images, **kwargs)
        return
    resized = resize_images(images, shape)
    for done, total, probs in iter_predict_volume(model, resized, **kwargs):
        if probs is not None:
            probs = resize_probabilities(probs, (h, w)).numpy().astype(np.float32, copy=False)
        yield done, total, probs


def predict_any_size(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> np.ndarray:
    """(Z, H, W, 3) uint8 of any slice size -> (Z, H, W) probabilities (see ``iter_predict_any_size``)."""
    return _final_probabilities(iter_predict_any_size(model, images, **kwargs), progress)
