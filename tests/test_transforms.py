"""Normalisation, missing-sequence simulation and training augmentation (transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lgg_seg.transforms import (
    FLAIR,
    Augmentation,
    augment_batch,
    normalize,
    simulate_missing_sequences,
    to_tensor_batch,
    volume_channel_stats,
)


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, 4:28, 4:28] = rng.integers(20, 250, size=(4, 24, 24, 3), dtype=np.uint8)
    return images


@pytest.mark.parametrize(("condition", "replaced"), [("flair_only", (0, 2)), ("no_post", (2,)), ("no_pre", (0,))])
def test_simulate_missing_sequences_copies_flair_like_the_dataset(condition, replaced):
    images = _volume()
    out = simulate_missing_sequences(images, condition)
    for c in range(3):
        expected = images[..., FLAIR] if c in replaced else images[..., c]
        np.testing.assert_array_equal(out[..., c], expected)
    assert not np.array_equal(images[..., 0], images[..., FLAIR])  # the input is untouched
    assert simulate_missing_sequences(images, "intact") is images
    with pytest.raises(ValueError, match="unknown missing-sequence condition"):
        simulate_missing_sequences(images, "no_flair")


def _batch(n: int = 6):
    images = np.concatenate([_volume(s) for s in range(2)])[:n]
    stats = torch.from_numpy(np.repeat(volume_channel_stats(images)[None], len(images), axis=0))
    x = normalize(to_tensor_batch(images), stats)
    y = torch.zeros(len(images), 1, 32, 32)
    y[:, :, 10:20, 10:20] = 1
    return x, y


def test_missing_sequence_augmentation_equals_the_standardised_flair():
    """With every sample made FLAIR-only, pre and post equal the standardised FLAIR (what the dataset's copy of FLAIR
    standardises to), and the mask is untouched by intensity changes."""
    x, y = _batch()
    plain = Augmentation(flip=False, rotate_degrees=0, scale=(1, 1), intensity=0)
    out, out_y = augment_batch(x, y, torch.Generator().manual_seed(0), Augmentation(**{
        **plain.__dict__, "missing_both": 1.0}))
    torch.testing.assert_close(out[:, 0], x[:, FLAIR])
    torch.testing.assert_close(out[:, 2], x[:, FLAIR])
    torch.testing.assert_close(out[:, FLAIR], x[:, FLAIR])
    torch.testing.assert_close(out_y, y)
    post_only, _ = augment_batch(x, y, torch.Generator().manual_seed(0), Augmentation(**{
        **plain.__dict__, "missing_post": 1.0}))
    torch.testing.assert_close(post_only[:, 0], x[:, 0])
    torch.testing.assert_close(post_only[:, 2], x[:, FLAIR])


def test_missing_sequence_shares_are_respected():
    x, y = _batch(6)
    x = x.repeat(100, 1, 1, 1)
    y = y.repeat(100, 1, 1, 1)
    a = Augmentation(flip=False, rotate_degrees=0, scale=(1, 1), intensity=0, missing_both=0.5, missing_post=0.2)
    out, _ = augment_batch(x, y, torch.Generator().manual_seed(1), a)
    pre_is_flair = (out[:, 0] == out[:, FLAIR]).flatten(1).all(1)
    post_is_flair = (out[:, 2] == out[:, FLAIR]).flatten(1).all(1)
    both = (pre_is_flair & post_is_flair).float().mean().item()
    post_only = (~pre_is_flair & post_is_flair).float().mean().item()
    assert abs(both - 0.5) < 0.08 and abs(post_only - 0.2) < 0.08


def test_geometry_pads_with_the_background_not_the_mean():
    """A rotation exposes corners: they take the sample's background (what uint8 0 standardises to), not 0."""
    x, y = _batch(2)
    a = Augmentation(flip=False, rotate_degrees=45, scale=(1, 1), intensity=0)
    out, _ = augment_batch(x, y, torch.Generator().manual_seed(3), a)
    background = x.amin(dim=(2, 3))
    torch.testing.assert_close(out[:, :, 0, 0], background, atol=1e-4, rtol=0)


def test_augmentation_is_repeatable_and_keeps_masks_binary():
    x, y = _batch()
    a = Augmentation(gamma=0.3, noise=0.1, intensity=0.2, missing_both=0.3, missing_post=0.1)
    one = augment_batch(x, y, torch.Generator().manual_seed(5), a)
    two = augment_batch(x, y, torch.Generator().manual_seed(5), a)
    torch.testing.assert_close(one[0], two[0])
    assert set(torch.unique(one[1]).tolist()) <= {0.0, 1.0}
    assert torch.isfinite(one[0]).all()


def test_gamma_keeps_the_sample_range():
    x, y = _batch()
    a = Augmentation(flip=False, rotate_degrees=0, scale=(1, 1), intensity=0, gamma=0.5)
    out, _ = augment_batch(x, y, torch.Generator().manual_seed(2), a)
    torch.testing.assert_close(out.amin(dim=(2, 3)), x.amin(dim=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.amax(dim=(2, 3)), x.amax(dim=(2, 3)), atol=1e-4, rtol=0)
    assert not torch.allclose(out, x)
