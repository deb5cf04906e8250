"""How patients are shown (napari_lgg_seg.display): head mask, per-patient contrast, colours."""

from __future__ import annotations

import numpy as np

from napari_lgg_seg.display import (
    TRUTH_COLOR,
    TUMOUR_COLOR,
    channel_contrast_limits,
    contrast_limits,
    head_mask,
    labels_colormap,
)
from napari_lgg_seg.sample import make_phantom


def test_head_mask_fills_dark_structures_inside_the_head():
    images, _ = make_phantom(n_slices=8, size=64, seed=0)
    flair = images[..., 1]
    head = head_mask(flair)
    assert head[:, 32, 32].all()  # the dark ventricles in the middle are inside the head
    assert not head[:, 0, 0].any() and not head[:, -1, -1].any()  # air in the corners is not
    slice_only = head_mask(np.stack([flair[0], np.zeros_like(flair[0])]))
    assert not slice_only[1].any()  # holes are filled within a slice, never across slices


def test_contrast_limits_of_flat_and_empty_images():
    assert contrast_limits(np.full((2, 4, 4), 7, np.uint8)) == (7.0, 8.0)
    assert contrast_limits(np.zeros((0, 4, 4), np.uint8)) == (0.0, 255.0)
    assert head_mask(np.full((2, 4, 4), 7, np.uint8)).all()
    lo, hi = contrast_limits(np.arange(1000, dtype=np.uint16).reshape(10, 10, 10))
    assert lo == np.percentile(np.arange(1000), 0.5) and hi == np.percentile(np.arange(1000), 99.5)


def test_channel_contrast_limits_follow_each_channel():
    images, _ = make_phantom(n_slices=12, size=64, seed=2)
    dim = images.copy()
    dim[..., 1] //= 4  # a FLAIR scanned four times darker gets a four times narrower window
    (lo, hi), (dlo, dhi) = channel_contrast_limits(images)[1], channel_contrast_limits(dim)[1]
    assert abs(dhi - hi / 4) <= 1 and abs(dlo - lo / 4) <= 1
    assert len(channel_contrast_limits(images)) == 3


def test_colours():
    assert labels_colormap(TRUTH_COLOR) == {0: "transparent", 1: TRUTH_COLOR, None: "transparent"}
    assert TRUTH_COLOR.lower() != TUMOUR_COLOR.lower()
