"""Evaluate a model on labelled patient folders and choose post-processing on validation patients (Qt-free).

``evaluate_folders`` runs the same inference path as the napari widget (``inference.predict_volume``
then ``inference.postprocess``, with the checkpoint card's defaults unless overridden) and scores each
patient with ``metrics.score_patient``. ``predict_patients`` + ``choose_postprocessing`` /
``choose_inference_settings`` grid-search threshold, small-lesion removal, largest component, hole
filling (and TTA on/off) for the best mean per-patient Dice; run them on VALIDATION patients only.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from .io import atomic_write_csv, atomic_write_text
from .metrics import PatientScores, score_patient, summarize

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_MIN_SIZES = (0, 50, 100, 250, 500)
POSTPROCESSING_KEYS = ("threshold", "min_lesion_voxels", "keep_largest", "fill_holes")
PATIENT_COLUMNS = ("patient_id", "slices", "tumour_slices", "truth_voxels", "pred_voxels", "volume_dice",
                   "slice_dice", "slice_iou", "tumour_slice_dice", "empty_slices", "empty_slices_with_fp", "seconds")
# missing sequences simulated next to the intact images (transforms.MISSING_SEQUENCES): pre and post replaced by
# FLAIR, post only, as the dataset stores patients lacking them
CONDITIONS = ("intact", "flair_only", "no_post")


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def patient_row(scores: PatientScores, seconds: float | None = None) -> dict:
    """One flat row (for per_patient.csv) from a patient's scores."""
    return {
        "patient_id": scores.patient_id,
        "slices": len(scores.slice_dice),
        "tumour_slices": len(scores.tumour_slice_dice),
        "truth_voxels": scores.truth_voxels,
        "pred_voxels": scores.pred_voxels,
        "volume_dice": scores.volume_dice,
        "slice_dice": float(np.mean(scores.slice_dice)) if scores.slice_dice else float("nan"),
        "slice_iou": float(np.mean(scores.slice_iou)) if scores.slice_iou else float("nan"),
        "tumour_slice_dice": float(np.mean(scores.tumour_slice_dice)) if scores.tumour_slice_dice else float("nan"),
        "empty_slices": scores.empty_slices,
        "empty_slices_with_fp": scores.empty_slices_with_fp,
        "seconds": seconds if seconds is not None else float("nan"),
    }


RESULT_FILES = ("per_patient.csv", "summary.json")


def check_results_out(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse (``FileExistsError`` naming the file) when ``out`` already holds results and not ``overwrite``."""
    if overwrite:
        return
    for name in RESULT_FILES:
        path = Path(out) / name
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; choose a new --out folder, or pass --overwrite to "
                                  "replace the results there.")


def write_results(out: str | os.PathLike, result: dict, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``per_patient.csv`` and ``summary.json`` (summary + settings) into ``out``; existing results are
    replaced only with ``overwrite`` (see :func:`check_results_out`)."""
    check_results_out(out, overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "per_patient.csv", out / "summary.json"
    rows = ({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in result["patients"])
    columns = list(PATIENT_COLUMNS) + [f"{c}_volume_dice" for c in result.get("conditions", {})]
    atomic_write_csv(csv_path, rows, columns, extrasaction="ignore")
    payload = {"summary": result["summary"], "conditions": result.get("conditions", {}), "settings": result["settings"]}
    atomic_write_text(json_path, json.dumps(_nan_to_none(payload), indent=2))
    return csv_path, json_path


def predict_probabilities(model, images: np.ndarray, *, device="auto", batch_size: int = 16, tta: bool = False,
                          image_size: int | None = 256, precision: str = "auto",
                          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(Z, H, W, 3) uint8 -> (Z, H, W) probabilities, the way the CLI and widgets predict: slices far from
    the model's training size ``image_size`` are resized for the network and back
    (``inference.predict_any_size``); ``image_size`` None never resizes."""
    from .inference import predict_any_size, predict_volume

    if image_size is None:
        return predict_volume(model, images, device=device, batch_size=batch_size, tta=tta, precision=precision,
                              progress=progress)
    return predict_any_size(model, images, size=int(image_size), device=device, batch_size=batch_size, tta=tta,
                            precision=precision, progress=progress)


def _select_folders(data_roots: Iterable[str | os.PathLike], patients: list[str] | None) -> dict[str, Path]:
    from .data import index_patients

    folders = index_patients(list(data_roots))
    if patients:
        missing = [p for p in patients if p not in folders]
        if missing:
            raise ValueError(f"patient(s) not found in the data: {', '.join(missing)}")
        folders = {p: folders[p] for p in patients}
    return folders


def evaluate_folders(
    data_roots: list[str | os.PathLike],
    weights: str | os.PathLike | None,
    *,
    patients: list[str] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    tta: bool | None = None,
    postprocessing: dict | None = None,
    out: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    conditions: Iterable[str] = CONDITIONS,
) -> dict:
    """Score a model on labelled patients: ``{"summary", "patients" (rows), "conditions", "settings"}``.

    Each name in ``conditions`` other than "intact" scores the patients again with those sequences replaced
    by FLAIR (``transforms.simulate_missing_sequences``): ``result["conditions"][name]`` holds its summary
    and the mean per-patient Dice lost against the intact images, and every row gets ``<name>_volume_dice``.

    ``weights`` None means the shipped default model. TTA and post-processing default to the
    checkpoint card's inference settings; ``tta`` / ``postprocessing`` override them. With ``out``,
    ``per_patient.csv`` and ``summary.json`` are written there. Patients without masks are skipped
    (listed in ``settings["skipped"]``).
    """
    from .inference import card_settings, postprocess, resolve_device
    from .io import load_patient

    if out is not None:
        check_results_out(out)  # before any work
    from .model import load_model_or_default
    from .transforms import simulate_missing_sequences

    extra = [c for c in dict.fromkeys(conditions) if c != "intact"]
    dev = resolve_device(device)
    loaded = load_model_or_default(weights, dev)
    pp, use_tta = card_settings(loaded, tta, postprocessing)
    size = loaded.training_size
    folders = _select_folders(data_roots, patients)
    if not folders:
        raise ValueError("no patients to evaluate")
    scores: list[PatientScores] = []
    by_condition: dict[str, list[PatientScores]] = {c: [] for c in extra}
    rows: list[dict] = []
    skipped: list[str] = []
    t_all = time.perf_counter()
    for i, (pid, folder) in enumerate(folders.items()):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patient = load_patient(folder)
        if patient.masks is None:
            skipped.append(pid)
            continue

        def report(done: int, total: int, pid=pid, i=i) -> None:
            if progress is not None:
                progress(f"patient {i + 1}/{len(folders)} {pid}: slice {done}/{total}")

        probs = predict_probabilities(loaded.model, patient.images, device=dev, batch_size=batch_size, tta=use_tta,
                                      image_size=size, progress=report)
        s = score_patient(pid, postprocess(probs, pp), patient.masks)
        scores.append(s)
        row = patient_row(s, time.perf_counter() - t0)
        for condition in extra:
            probs = predict_probabilities(loaded.model, simulate_missing_sequences(patient.images, condition),
                                          device=dev, batch_size=batch_size, tta=use_tta, image_size=size)
            scored = score_patient(pid, postprocess(probs, pp), patient.masks)
            by_condition[condition].append(scored)
            row[f"{condition}_volume_dice"] = scored.volume_dice
        rows.append(row)
    if not scores:
        raise ValueError("none of the selected patients has mask files (<PATIENT>_<k>_mask.tif); nothing to score")
    settings = {
        "weights": str(loaded.path),
        "data_roots": [str(Path(r).resolve()) for r in data_roots],
        "patients": [r["patient_id"] for r in rows],
        "skipped": skipped,
        "device": str(dev),
        "batch_size": batch_size,
        "tta": use_tta,
        "postprocessing": {k: getattr(pp, k) for k in POSTPROCESSING_KEYS},
        "image_size": size,
        "model_commit": loaded.meta.get("commit"),
        "seconds": time.perf_counter() - t_all,
    }
    result = {"summary": summarize(scores), "patients": rows, "settings": settings,
              "conditions": {c: condition_summary(scores, by_condition[c]) for c in extra}}
    if out is not None:
        write_results(out, result)
    return result


def condition_summary(intact: list[PatientScores], changed: list[PatientScores]) -> dict:
    """Summary of the scores under a missing-sequence condition, with the per-patient Dice lost against intact
    (mean and worst, over patients with tumour)."""
    lost = [a.volume_dice - b.volume_dice for a, b in zip(intact, changed) if a.truth_voxels > 0]
    return {**summarize(changed), "patient_dice_drop_mean": float(np.mean(lost)) if lost else float("nan"),
            "patient_dice_drop_max": float(np.max(lost)) if lost else float("nan")}


def load_labelled_patients(data_roots: list[str | os.PathLike], patients: list[str] | None = None,
                           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Images and masks of labelled patients: ``({pid: (Z,H,W,3) uint8}, {pid: (Z,H,W) {0,1}})``."""
    from .io import load_patient

    images, truths = {}, {}
    for pid, folder in _select_folders(data_roots, patients).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patient = load_patient(folder)
        if patient.masks is None:
            continue
        images[pid], truths[pid] = patient.images, patient.masks
    return images, truths


def predict_patients(
    model,
    images: Mapping[str, np.ndarray],
    *,
    device: str = "auto",
    batch_size: int = 16,
    tta: Iterable[bool] = (False, True),
    image_size: int | None = 256,
    progress: Callable[[str], None] | None = None,
) -> dict[bool, dict[str, np.ndarray]]:
    """Probabilities of every patient without and/or with TTA: ``{tta: {pid: (Z,H,W) float32}}``.

    ``model`` is a ``torch.nn.Module`` or a ``LoadedModel`` (then ``image_size`` comes from its card).
    """
    from .inference import resolve_device

    if hasattr(model, "model") and hasattr(model, "meta"):
        image_size = model.training_size
        model = model.model
    dev = resolve_device(device) if isinstance(device, str) else device
    result: dict[bool, dict[str, np.ndarray]] = {}
    for flag in tta:
        result[bool(flag)] = {}
        for pid, volume in images.items():
            if progress is not None:
                progress(f"predicting {pid} (TTA {'on' if flag else 'off'})")
            result[bool(flag)][pid] = predict_probabilities(model, volume, device=dev, batch_size=batch_size,
                                                            tta=bool(flag), image_size=image_size)
    return result


class _Components:
    """Thresholded volume with its 3D components, labelled once and reused for every size setting."""

    def __init__(self, probs: np.ndarray, threshold: float) -> None:
        from scipy import ndimage

        self.mask = np.asarray(probs) >= threshold
        self.labels, n = ndimage.label(self.mask, structure=ndimage.generate_binary_structure(3, 1))
        self.sizes = np.bincount(self.labels.ravel())[1:] if n else np.zeros(0, np.int64)

    def keep(self, min_size: int, keep_largest: bool) -> np.ndarray:
        """Which components survive (the same rule as ``inference.postprocess``)."""
        if self.sizes.size == 0 or (min_size <= 0 and not keep_largest):
            return np.ones(self.sizes.size, bool)
        keep = self.sizes >= max(min_size, 1)
        if keep_largest and keep.any():
            largest = int(np.argmax(np.where(keep, self.sizes, -1)))
            keep = np.zeros_like(keep)
            keep[largest] = True
        return keep

    def select(self, keep: np.ndarray) -> np.ndarray:
        if keep.all():
            return self.mask
        return np.concatenate([[False], keep])[self.labels]


def _crop_box(probs: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[slice, slice]:
    """Rows/cols holding every voxel that any setting could mark or that is tumour, plus a 1-pixel margin.

    Outside it prediction and truth are both empty at every setting, so scores, components and hole
    filling computed on the crop equal those of the whole volume (all slices are kept).
    """
    any_fg = (np.asarray(probs) >= threshold).any(axis=0) | (np.asarray(truth) > 0).any(axis=0)
    rows, cols = np.flatnonzero(any_fg.any(axis=1)), np.flatnonzero(any_fg.any(axis=0))
    if rows.size == 0:
        return slice(0, 1), slice(0, 1)
    h, w = any_fg.shape
    return (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))


def choose_postprocessing(
    probabilities: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray],
    *,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    min_sizes: Iterable[int] = DEFAULT_MIN_SIZES,
    keep_largest: Iterable[bool] = (False, True),
    fill_holes: Iterable[bool] = (False, True),
) -> tuple[dict, list[dict]]:
    """Grid search of post-processing maximising mean per-patient Dice (tie-break: lower empty-slice
    false-positive rate, then the simpler setting: less clean-up, threshold nearer 0.5).

    Run it on VALIDATION patients only. Returns ``(settings, table)``: the best threshold /
    min_lesion_voxels / keep_largest / fill_holes, and one row per setting, best first.
    """
    from .inference import fill_holes_per_slice

    pids = [p for p in probabilities if p in truths]
    if not pids:
        raise ValueError("no patient has both probabilities and a truth mask")
    for p in pids:
        if np.shape(probabilities[p]) != np.shape(truths[p]):
            raise ValueError(f"{p}: probabilities {np.shape(probabilities[p])} and truth {np.shape(truths[p])} differ")
    thresholds = [float(t) for t in thresholds]
    grid_sizes, grid_largest, grid_fill = list(min_sizes), list(keep_largest), list(fill_holes)
    probs, truth = {}, {}
    for p in pids:  # crop to where anything can happen: exact, and much faster on small lesions
        rows, cols = _crop_box(probabilities[p], truths[p], min(thresholds))
        probs[p] = np.asarray(probabilities[p])[:, rows, cols]
        truth[p] = np.asarray(truths[p])[:, rows, cols] > 0
    table: list[dict] = []
    for threshold in thresholds:
        components = {p: _Components(probs[p], threshold) for p in pids}
        cache: dict[tuple, object] = {}  # settings that keep the same components score the same

        def scored(p: str, keep: np.ndarray, fill: bool, components=components, cache=cache):
            key = (p, keep.tobytes(), fill)
            if key not in cache:
                mask = components[p].select(keep)
                cache[key] = score_patient(p, fill_holes_per_slice(mask) if fill else mask, truth[p])
            return cache[key]

        for min_size, largest in itertools.product(grid_sizes, grid_largest):
            keeps = {p: components[p].keep(int(min_size), bool(largest)) for p in pids}
            for fill in grid_fill:
                scores = [scored(p, keeps[p], bool(fill)) for p in pids]
                summary = summarize(scores)
                table.append({"threshold": float(threshold), "min_lesion_voxels": int(min_size),
                              "keep_largest": bool(largest), "fill_holes": bool(fill),
                              "patient_dice_mean": summary["patient_dice_mean"],
                              "empty_slice_fp_rate": summary["empty_slice_fp_rate"],
                              "slice_dice": summary["slice_dice"],
                              "tumour_slice_dice": summary["tumour_slice_dice"]})
    table = _rank(table)
    return {k: table[0][k] for k in POSTPROCESSING_KEYS}, table


def _rank(table: list[dict]) -> list[dict]:
    """Best first: higher mean per-patient Dice, lower empty-slice FP rate, then the simpler setting."""

    def key(row: dict):
        d = row["patient_dice_mean"]
        d = -1.0 if d is None or math.isnan(d) else d
        simpler = (row.get("tta", False), row["min_lesion_voxels"] > 0, row["keep_largest"], row["fill_holes"],
                   row["min_lesion_voxels"], abs(row["threshold"] - 0.5), row["threshold"])
        return (-round(d, 9), round(row["empty_slice_fp_rate"], 9), simpler)

    return sorted(table, key=key)


def choose_inference_settings(
    probabilities_by_tta: Mapping[bool, Mapping[str, np.ndarray]],
    truths: Mapping[str, np.ndarray],
    **grid,
) -> tuple[dict, list[dict]]:
    """``choose_postprocessing`` over TTA off/on (the output of ``predict_patients``).

    Returns ``(settings with "tta", table best first)``; on a tie TTA off wins (it is half the cost).
    """
    table: list[dict] = []
    for flag in probabilities_by_tta:
        _, rows = choose_postprocessing(probabilities_by_tta[flag], truths, **grid)
        table += [{"tta": bool(flag), **row} for row in rows]
    if not table:
        raise ValueError("no probabilities given")
    table = _rank(table)
    best = table[0]
    return {"tta": best["tta"], **{k: best[k] for k in POSTPROCESSING_KEYS}}, table
