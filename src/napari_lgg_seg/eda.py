"""Exploratory data check of a dataset root in the LGG layout (Qt-free).

``run_eda(root, out_dir)`` decodes every image and mask once and reports what the seed EDA
checked: image/mask pairs, patients, slices per patient, image sizes and dtypes, whether masks
are binary (0/255), unreadable files, the share of empty masks, image/mask alignment, plus lesion
sizes. It writes ``eda.json`` and a sample grid ``eda_samples.png`` (FLAIR with the mask outline
of a few tumour slices) into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .io import atomic_write_text, parse_slice_name, require_patient_folders
from .plots import save_figure

MAX_EXAMPLES = 20


def _stats(values: list[float] | np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {"count": 0, "min": None, "median": None, "max": None, "mean": None}
    return {"count": int(values.size), "min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max()), "mean": float(values.mean())}


def _read(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.pages[0].asarray()


def _shape_key(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


class _Findings:
    """A count of one kind of problem and its first few examples."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list = []

    def add(self, item) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(item)

    def as_dict(self) -> dict:
        return {"count": self.count, "examples": self.examples}


def run_eda(root: str | os.PathLike, out_dir: str | os.PathLike, *, samples: int = 8) -> dict:
    """Check a dataset root and write ``eda.json`` + ``eda_samples.png`` into ``out_dir``; returns the report."""
    t0 = time.perf_counter()
    root = Path(root)
    folders = require_patient_folders(root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    image_shapes: Counter = Counter()
    image_dtypes: Counter = Counter()
    mask_shapes: Counter = Counter()
    mask_dtypes: Counter = Counter()
    mask_values: set[int] = set()
    corrupt = _Findings()
    nonbinary = _Findings()
    misaligned = _Findings()
    images_without_mask = _Findings()
    masks_without_image = _Findings()
    unparsed = _Findings()
    gaps: dict[str, list[int]] = {}
    per_patient: list[dict] = []
    tumour_slice_pixels: list[int] = []
    flair_copies = {"pre-contrast": 0, "post-contrast": 0}
    n_images = n_masks = n_pairs = n_empty = n_tumour = 0
    candidates: list[tuple[int, str, Path, Path]] = []  # (tumour pixels, patient, image, mask): one per patient

    for folder in folders:
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not entry.is_file() or not entry.name.lower().endswith((".tif", ".tiff")):
                continue
            parsed = parse_slice_name(entry.name)
            if parsed is None:
                unparsed.add(f"{folder.name}/{entry.name}")
                continue
            (masks if parsed.is_mask else images)[parsed.index] = Path(entry.path)
        n_images += len(images)
        n_masks += len(masks)
        numbers = sorted(images)
        if numbers:
            missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            if missing:
                gaps[folder.name] = missing[:MAX_EXAMPLES]
        for k in sorted(set(masks) - set(images)):
            masks_without_image.add(masks[k].name)
        patient_tumour, patient_tumour_slices, patient_slices = 0, 0, 0
        best: tuple[int, Path, Path] | None = None
        copies = {0: True, 2: True}
        for k in numbers:
            img_path = images[k]
            try:
                img = _read(img_path)
            except Exception as err:  # tifffile raises several types for damaged files
                corrupt.add({"file": f"{folder.name}/{img_path.name}", "error": f"{type(err).__name__}: {err}"})
                continue
            patient_slices += 1
            image_shapes[_shape_key(img.shape)] += 1
            image_dtypes[str(img.dtype)] += 1
            if img.ndim == 3 and img.shape[-1] >= 3:
                for c in copies:
                    copies[c] = copies[c] and np.array_equal(img[..., c], img[..., 1])
            if k not in masks:
                images_without_mask.add(img_path.name)
                continue
            try:
                mask = _read(masks[k])
            except Exception as err:
                corrupt.add({"file": f"{folder.name}/{masks[k].name}", "error": f"{type(err).__name__}: {err}"})
                continue
            n_pairs += 1
            mask_shapes[_shape_key(mask.shape)] += 1
            mask_dtypes[str(mask.dtype)] += 1
            values = np.unique(mask) if mask.dtype != np.uint8 else np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
            mask_values.update(int(v) for v in values[:300])
            if not set(int(v) for v in values) <= {0, 255}:
                nonbinary.add(masks[k].name)
            if mask.shape[:2] != img.shape[:2]:
                misaligned.add({"file": masks[k].name, "image": list(img.shape[:2]),
                                "mask": list(mask.shape[:2])})
                continue
            plane = mask if mask.ndim == 2 else mask[..., 0]
            pixels = int(np.count_nonzero(plane))
            if pixels:
                n_tumour += 1
                patient_tumour_slices += 1
                patient_tumour += pixels
                tumour_slice_pixels.append(pixels)
                if best is None or pixels > best[0]:
                    best = (pixels, img_path, masks[k])
            else:
                n_empty += 1
        if patient_slices:
            for c, name in ((0, "pre-contrast"), (2, "post-contrast")):
                flair_copies[name] += int(copies[c])
        per_patient.append({"patient_id": folder.name, "slices": len(numbers), "tumour_slices": patient_tumour_slices,
                            "tumour_voxels": patient_tumour})
        if best is not None:
            candidates.append((best[0], folder.name, best[1], best[2]))

    labelled = n_empty + n_tumour
    slices = [p["slices"] for p in per_patient]
    tumour_voxels = [p["tumour_voxels"] for p in per_patient if p["tumour_voxels"]]
    report = {
        "root": str(root.resolve()),
        "patients": len(folders),
        "image_files": n_images,
        "mask_files": n_masks,
        "pairs": n_pairs,
        "slices_per_patient": _stats(slices),
        "image_shapes": dict(image_shapes),
        "image_dtypes": dict(image_dtypes),
        "mask_shapes": dict(mask_shapes),
        "mask_dtypes": dict(mask_dtypes),
        "mask_values": sorted(mask_values),
        "masks_binary_0_255": nonbinary.count == 0,
        "nonbinary_masks": nonbinary.as_dict(),
        "corrupt_files": corrupt.as_dict(),
        "images_without_mask": images_without_mask.as_dict(),
        "masks_without_image": masks_without_image.as_dict(),
        "size_mismatches": misaligned.as_dict(),
        "aligned": misaligned.count == 0 and images_without_mask.count == 0 and masks_without_image.count == 0,
        "unparsed_files": unparsed.as_dict(),
        "slice_number_gaps": gaps,
        "empty_masks": n_empty,
        "tumour_masks": n_tumour,
        "empty_mask_share": float(n_empty / labelled) if labelled else None,
        "patients_without_tumour": [p["patient_id"] for p in per_patient if p["tumour_voxels"] == 0],
        "tumour_pixels_per_tumour_slice": _stats(tumour_slice_pixels),
        "tumour_voxels_per_patient": _stats(tumour_voxels),
        "patients_with_channel_copy_of_flair": flair_copies,
        "other_files": sorted(p.name for p in root.iterdir() if p.is_file()) if root not in folders else [],
        "per_patient": per_patient,
    }
    png = out / "eda_samples.png"
    report["samples_png"] = str(png) if _sample_grid(png, candidates, samples) else None
    report["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "eda.json", json.dumps(report, indent=2))
    return report


def _sample_grid(path: Path, candidates: list[tuple[int, str, Path, Path]], n: int) -> bool:
    """FLAIR with the mask outline of the largest-tumour slice of ``n`` patients spread over the list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not candidates or n < 1:
        return False
    picks = [candidates[i] for i in np.unique(np.linspace(0, len(candidates) - 1, min(n, len(candidates))).round()
                                                .astype(int))]
    cols = min(4, len(picks))
    rows = -(-len(picks) // cols)
    fig = Figure(figsize=(3 * cols, 3.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (pixels, pid, img_path, mask_path) in zip(axes.ravel(), picks):
        img, mask = _read(img_path), _read(mask_path)
        flair = img[..., 1] if img.ndim == 3 and img.shape[-1] >= 2 else img
        plane = mask if mask.ndim == 2 else mask[..., 0]
        ax.imshow(flair, cmap="gray")
        ax.contour(plane > 0, levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(f"{pid}\nslice {img_path.stem.rsplit('_', 1)[-1]}: {pixels} px", fontsize=8)
    fig.suptitle("FLAIR with mask outline (largest-tumour slice per patient)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=1.5)
    save_figure(fig, path, dpi=80)
    return True
