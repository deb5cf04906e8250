"""How a patient looks in napari: layer-data tuples, per-patient contrast and colours (Qt-free, no napari import).

The reader, the sample data and the patient browser all build their layers here, so a patient looks the same
whichever way it was opened.
"""

from __future__ import annotations

import numpy as np

from .io import CHANNEL_NAMES, FLAIR_CHANNEL, Patient

TRUTH_COLOR = "#00e5ff"  # ground truth: a cyan outline
TUMOUR_COLOR = "#ff9f1c"  # the AI result / the correction: an orange fill
TRUTH_CONTOUR = 2  # outline thickness (pixels) of the ground truth
CONTRAST_PERCENTILES = (0.5, 99.5)  # of the head's voxels, per channel

ROLE_GROUND_TRUTH = "ground_truth"
ROLE_PREDICTION = "prediction"
DATASET_ROOT_KEY = "lgg_dataset_root"  # on a layer: it came from opening this dataset root (the browser lists it)
CONTOUR_KEY = "lgg_contour"  # on a Labels layer: draw it as an outline of this thickness (Labels has no init kwarg)


def labels_colormap(color: str) -> dict:
    """A one-colour Labels colormap (label 1 in ``color``, everything else transparent)."""
    return {0: "transparent", 1: color, None: "transparent"}


PROBABILITY_LOOK = {"colormap": "magma", "contrast_limits": (0.0, 1.0)}  # the result's (hidden) probability image
TUMOUR_OPACITY = 0.6


def tumour_look() -> dict:
    """Display options of a tumour Labels layer: label 1 filled in the tumour colour, the rest transparent."""
    return {"opacity": TUMOUR_OPACITY, "colormap": labels_colormap(TUMOUR_COLOR)}


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels inside the head: Otsu foreground, with the holes of each slice filled (dark CSF, necrosis)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    volume = np.asarray(volume)
    if volume.size == 0 or volume.min() == volume.max():
        return np.ones(volume.shape, bool)
    foreground = volume > threshold_otsu(volume)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # fill within each slice, never across slices
    return ndimage.binary_fill_holes(foreground, structure=in_plane)


def contrast_limits(channel: np.ndarray, head: np.ndarray | None = None,
                    percentiles: tuple[float, float] = CONTRAST_PERCENTILES) -> tuple[float, float]:
    """Display limits of one channel: the given percentiles of its head voxels (all voxels without a head)."""
    channel = np.asarray(channel)
    values = channel[head] if head is not None and head.any() else channel.ravel()
    if values.size == 0:
        return 0.0, 255.0
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:  # a flat image: any non-empty window
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def channel_contrast_limits(images: np.ndarray, step: int = 2) -> list[tuple[float, float]]:
    """``contrast_limits`` of each channel of a (Z, H, W, C) volume over the FLAIR head mask, estimated on every
    ``step``-th pixel of each slice (a quarter of the voxels: ~15 ms a patient instead of ~60, same limits within 3 grey levels on the real data)."""
    sub = np.asarray(images)[:, ::step, ::step]
    head = head_mask(sub[..., FLAIR_CHANNEL])
    return [contrast_limits(sub[..., c], head) for c in range(sub.shape[-1])]


AXIS_LABELS = ("slice", "y", "x")  # napari's dims slider names the slice axis (not "0")


def patient_layer_data(patient: Patient, dataset_root: str | None = None) -> list[tuple]:
    """napari layer-data tuples of a patient: pre/post hidden, FLAIR visible on top, ground truth as an outline.

    Channels are opaque (``translucent`` blending at full opacity), so only the topmost visible one is seen; each
    gets the contrast of its own head voxels. ``dataset_root``: the root this patient was opened from (recorded in
    the metadata, so the viewer can bring up the patient browser for it).
    """
    meta = patient.metadata()
    if dataset_root is not None:
        meta[DATASET_ROOT_KEY] = str(dataset_root)
    limits = channel_contrast_limits(patient.images)
    layers = []
    order = [c for c in range(3) if c != FLAIR_CHANNEL] + [FLAIR_CHANNEL]
    for c in order:
        channel = patient.images[..., c]
        layers.append((
            channel,
            {"name": f"{patient.patient_id} {CHANNEL_NAMES[c]}", "colormap": "gray", "blending": "translucent",
             "opacity": 1.0, "visible": c == FLAIR_CHANNEL, "contrast_limits": limits[c], "axis_labels": AXIS_LABELS,
             "metadata": {**meta, "lgg_channel": CHANNEL_NAMES[c], "lgg_rgb_source": c == FLAIR_CHANNEL}},
            "image",
        ))
    if patient.masks is not None:
        layers.append((
            patient.masks,
            {"name": f"{patient.patient_id} ground truth", "opacity": 1.0, "visible": False, "axis_labels": AXIS_LABELS,
             "colormap": labels_colormap(TRUTH_COLOR),
             "metadata": {**meta, "lgg_role": ROLE_GROUND_TRUTH, CONTOUR_KEY: TRUTH_CONTOUR}},
            "labels",
        ))
    return layers


def tumour_layer_data(patient: Patient, masks: np.ndarray, extra_metadata: dict | None = None) -> tuple:
    """A ``<PATIENT> tumour`` Labels layer-data tuple (an AI result to correct), coloured like the segment dock's."""
    masks = (np.asarray(masks) > 0).astype(np.uint8)
    meta = {**patient.metadata(), "lgg_role": ROLE_PREDICTION, "lgg_ai_mask": masks.copy(), **(extra_metadata or {})}
    return (masks, {"name": f"{patient.patient_id} tumour", "opacity": 0.5, "axis_labels": AXIS_LABELS,
                    "colormap": labels_colormap(TUMOUR_COLOR), "metadata": meta}, "labels")
