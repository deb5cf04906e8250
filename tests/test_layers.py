"""The Qt-free layer logic (``napari_lgg_seg.layers``): no viewer, no Qt."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def test_volume_readout_units():
    from napari_lgg_seg.layers import volume_readout
    from napari_lgg_seg.metrics import dice

    mask = np.zeros((4, 5, 5), np.uint8)
    mask[1, :2, :2] = 1
    mask[3, 0, 0] = 1
    assert volume_readout(mask) == "5 voxels in 2 slices"
    assert volume_readout(mask, (1, 1, 1)) == "5 voxels in 2 slices"
    assert volume_readout(mask, (3, 0.5, 0.5)) == "5 voxels in 2 slices = 3.8 mm\u00b3"
    assert dice(mask, mask) == 1.0 and dice(mask, np.zeros_like(mask)) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_compare_with_ai_counts_added_and_removed_voxels():
    from napari_lgg_seg.layers import AI_MASK_KEY, compare_with_ai, has_unexported_edits, mark_exported

    ai = np.zeros((2, 4, 4), np.uint8)
    ai[0, :2, :2] = 1  # 4 voxels
    labels = ai.copy()
    labels[0, 0, 0] = 0  # one removed
    labels[1, 3, 3:] = 1  # one added
    layer = SimpleNamespace(data=labels, metadata={AI_MASK_KEY: ai})
    result = compare_with_ai(layer)
    assert (result["voxels_added"], result["voxels_removed"], result["voxels_changed"]) == (1, 1, 2)
    assert result["dice"] == 2 * 3 / (4 + 4)
    assert has_unexported_edits(layer)
    mark_exported(layer)
    assert not has_unexported_edits(layer)
    assert compare_with_ai(SimpleNamespace(data=labels, metadata={})) is None
    assert compare_with_ai(SimpleNamespace(data=labels, metadata={AI_MASK_KEY: ai[:1]})) is None  # other shape


def test_reader_key_pairs_a_patients_layers_with_the_next_ones():
    from napari_lgg_seg.layers import ROLE_GROUND_TRUTH, ROLE_PREDICTION, reader_key

    assert reader_key({"lgg_channel": "FLAIR", "lgg_patient_id": "A"}) == reader_key({"lgg_channel": "FLAIR"})
    assert reader_key({"lgg_channel": "FLAIR"}) != reader_key({"lgg_channel": "pre-contrast"})
    assert reader_key({"lgg_role": ROLE_GROUND_TRUTH}) == "ground_truth"
    assert reader_key({"lgg_role": ROLE_PREDICTION}) is None and reader_key(None) is None


def test_refill_layer_sets_only_what_differs():
    """napari redraws the canvas for every set, changed or not: a refill with the same display settings sets
    only the data."""
    from napari.layers import Image

    from napari_lgg_seg.layers import refill_layer

    layer = Image(np.zeros((3, 8, 8), np.uint8), contrast_limits=(0, 100), colormap="gray", visible=True)
    seen = []
    for name in ("contrast_limits", "colormap", "visible", "opacity", "data"):
        getattr(layer.events, name).connect(lambda event, name=name: seen.append(name))
    refill_layer(layer, np.ones((3, 8, 8), np.uint8),
                 {"contrast_limits": (0, 100), "colormap": "gray", "visible": True, "opacity": 1.0})
    assert seen == ["data"]
    refill_layer(layer, np.ones((3, 8, 8), np.uint8), {"contrast_limits": (0, 50), "visible": False})
    assert layer.contrast_limits == [0, 50] and not layer.visible
    assert "contrast_limits" in seen[1:] and "visible" in seen[1:]


def test_to_uint8_rescales_other_types():
    from napari_lgg_seg.layers import to_uint8

    data = np.array([[-1.0, 0.0], [1.0, np.nan]], np.float32)
    assert to_uint8(data).tolist() == [[0, 128], [255, 128]]  # NaN counts as 0
    assert to_uint8(np.full((2, 2), 7, np.int16)).tolist() == [[255, 255], [255, 255]]  # from 0 up
    same = np.arange(4, dtype=np.uint8)
    assert to_uint8(same) is same
