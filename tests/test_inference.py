"""Volume inference and post-processing (napari_lgg_seg.inference) with tiny models on phantoms."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from conftest import TINY
from napari_lgg_seg import inference
from napari_lgg_seg.inference import (
    PostProcessing,
    autocast_context,
    available_devices,
    cpu_has_fast_bf16,
    head_bounding_box,
    iter_predict_any_size,
    iter_predict_volume,
    model_input_size,
    postprocess,
    predict_any_size,
    predict_volume,
    resolve_device,
)
from napari_lgg_seg.model import ModelConfig, UNet
from napari_lgg_seg.sample import make_phantom


@pytest.fixture(scope="module")
def tiny_model() -> UNet:
    torch.manual_seed(0)
    return UNet(ModelConfig.from_dict(TINY)).eval()


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    images, _ = make_phantom(n_slices=6, size=64, seed=0)
    return images


def local_model() -> torch.nn.Module:
    """A 3x3 convolution on FLAIR: a 'network' whose output depends on a small neighbourhood only."""
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 1, 1, 1] = 2.0
        conv.weight[0, 1, 0, 1] = 0.5
        conv.bias.fill_(-0.5)
    return conv.eval()


def test_predict_volume_shape_dtype_range(tiny_model, volume):
    probs = predict_volume(tiny_model, volume, device="cpu", batch_size=4)
    assert probs.shape == volume.shape[:3]
    assert probs.dtype == np.float32
    assert np.all(probs >= 0) and np.all(probs <= 1)
    assert np.isfinite(probs).all()


def test_single_slice_input(tiny_model, volume):
    probs = predict_volume(tiny_model, volume[2], device="cpu")
    assert probs.shape == (1, 64, 64)


def test_batch_size_invariance(tiny_model, volume):
    one = predict_volume(tiny_model, volume, device="cpu", batch_size=1, crop_to_head=False)
    four = predict_volume(tiny_model, volume, device="cpu", batch_size=4, crop_to_head=False)
    many = predict_volume(tiny_model, volume, device="cpu", batch_size=64, crop_to_head=False)
    np.testing.assert_allclose(one, four, atol=1e-5)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_progress_callback(tiny_model, volume):
    calls = []
    predict_volume(tiny_model, volume, device="cpu", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert all(t == 6 for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) >= 4  # 0, then one step per batch of 2


def test_iter_predict_volume_yields_probabilities_last(tiny_model, volume):
    steps = list(iter_predict_volume(tiny_model, volume, device="cpu", batch_size=3))
    assert all(p is None for _, _, p in steps[:-1])
    assert steps[-1][2] is not None and steps[-1][:2] == (6, 6)


def test_tta_is_the_mean_with_the_flipped_prediction(tiny_model, volume):
    plain = predict_volume(tiny_model, volume, device="cpu", crop_to_head=False)
    flipped = predict_volume(tiny_model, np.ascontiguousarray(volume[:, :, ::-1]), device="cpu", crop_to_head=False)
    tta = predict_volume(tiny_model, volume, device="cpu", tta=True, crop_to_head=False)
    np.testing.assert_allclose(tta, 0.5 * (plain + flipped[:, :, ::-1]), atol=1e-5)
    assert not np.allclose(tta, plain, atol=1e-7)


def test_crop_to_head_matches_full_image_inside_the_head(volume):
    canvas = np.zeros((6, 128, 128, 3), np.uint8)
    canvas[:, 32:96, 32:96] = volume  # a head with a wide dark border, so that cropping happens
    rows, cols = head_bounding_box(canvas)
    assert (rows.stop - rows.start) < 128 or (cols.stop - cols.start) < 128
    head = (canvas > inference.HEAD_THRESHOLD).any(axis=-1)
    model = local_model()
    cropped = predict_volume(model, canvas, device="cpu", crop_to_head=True)
    full = predict_volume(model, canvas, device="cpu", crop_to_head=False)
    np.testing.assert_allclose(cropped[head], full[head], atol=1e-5)
    assert full[head].std() > 0.05  # the comparison is not between two constants


def test_crop_to_head_close_with_tiny_unet(tiny_model, volume):
    canvas = np.zeros((6, 128, 128, 3), np.uint8)
    canvas[:, 32:96, 32:96] = volume
    head = (canvas > inference.HEAD_THRESHOLD).any(axis=-1)
    cropped = predict_volume(tiny_model, canvas, device="cpu", crop_to_head=True)
    full = predict_volume(tiny_model, canvas, device="cpu", crop_to_head=False)
    assert np.abs(cropped[head] - full[head]).mean() < 0.01


def test_empty_slices_are_skipped_and_zero(volume):
    images = volume.copy()
    images[0] = 0
    images[3] = 5  # below the head threshold: dark noise only
    model = local_model()
    with torch.no_grad():
        model.bias.fill_(3.0)  # the network says "tumour" everywhere
    skipped = predict_volume(model, images, device="cpu")
    assert not skipped[0].any() and not skipped[3].any()
    assert skipped[1].min() > 0.5
    computed = predict_volume(model, images, device="cpu", skip_empty=False)
    assert computed[0].min() > 0.5  # without skipping the dark slice would be called tumour


def test_progress_counts_skipped_slices(volume):
    images = volume.copy()
    images[:4] = 0
    steps = list(iter_predict_volume(local_model(), images, device="cpu", batch_size=1))
    assert steps[0][:2] == (4, 6)


def test_bad_volumes_raise(tiny_model):
    with pytest.raises(ValueError, match=r"\(Z, H, W, 3\)"):
        predict_volume(tiny_model, np.zeros((2, 32, 32, 4), np.uint8), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        predict_volume(tiny_model, np.zeros((2, 32, 32, 3), np.float32), device="cpu")


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((256, 256), (256, 256)), ((240, 250), (240, 250)), ((300, 200), (300, 200)), ((64, 64), (256, 256)),
     ((200, 180), (256, 230)), ((512, 512), (256, 256)), ((1000, 10), (256, 16))],
)
def test_model_input_size(shape, expected):
    assert model_input_size(*shape) == expected


@pytest.mark.parametrize("shape", [(200, 180), (100, 60), (250, 250), (64, 64)])
def test_predict_any_size_returns_original_size(tiny_model, shape):
    images, _ = make_phantom(n_slices=2, size=max(shape), seed=1)
    images = np.ascontiguousarray(images[:, : shape[0], : shape[1]])
    probs = predict_any_size(tiny_model, images, device="cpu")
    assert probs.shape == (2, *shape)
    assert probs.dtype == np.float32 and probs.min() >= 0 and probs.max() <= 1


def test_predict_any_size_equals_predict_volume_near_training_size(tiny_model, volume):
    images, _ = make_phantom(n_slices=2, size=240, seed=2)
    np.testing.assert_allclose(predict_any_size(tiny_model, images, device="cpu"),
                               predict_volume(tiny_model, images, device="cpu"), atol=1e-6)


def test_iter_predict_any_size_reports_progress_and_returns_original_size(tiny_model):
    images = np.random.default_rng(0).integers(0, 255, (3, 400, 120, 3), dtype=np.uint8)
    steps = list(iter_predict_any_size(tiny_model, images, size=64, device="cpu", batch_size=2))
    assert [s[2] is None for s in steps] == [True] * (len(steps) - 1) + [False]
    assert steps[-1][:2] == (3, 3) and steps[-1][2].shape == (3, 400, 120)
    np.testing.assert_allclose(steps[-1][2], predict_any_size(tiny_model, images, size=64, device="cpu", batch_size=2))


def test_head_bounding_box_multiple_of_16(volume):
    canvas = np.zeros((2, 200, 180, 3), np.uint8)
    canvas[:, 50:90, 70:100] = 100
    rows, cols = head_bounding_box(canvas)
    assert (rows.stop - rows.start) % 16 == 0 and (cols.stop - cols.start) % 16 == 0
    assert rows.start <= 50 - 16 and rows.stop >= 90 + 16 and cols.start <= 70 - 16 and cols.stop >= 100 + 16
    assert head_bounding_box(np.zeros((1, 32, 48, 3), np.uint8)) == (slice(0, 32), slice(0, 48))


# --- post-processing -------------------------------------------------------------------------


def test_postprocess_threshold():
    probs = np.array([[[0.2, 0.5, 0.7, 0.49]]], np.float32)
    np.testing.assert_array_equal(postprocess(probs), [[[0, 1, 1, 0]]])
    np.testing.assert_array_equal(postprocess(probs, PostProcessing(threshold=0.6)), [[[0, 0, 1, 0]]])
    assert postprocess(probs).dtype == np.uint8


def blobs() -> np.ndarray:
    """Two slices: a 3-voxel blob, a 12-voxel blob (spanning both slices) and a 1-voxel speck."""
    probs = np.zeros((2, 10, 10), np.float32)
    probs[0, 0, 0:3] = 0.9  # small: 3 voxels
    probs[0, 5:7, 5:8] = 0.9  # big: 6 voxels on slice 0 ...
    probs[1, 5:7, 5:8] = 0.9  # ... and 6 on slice 1, 6-connected through z
    probs[1, 9, 9] = 0.9  # speck
    return probs


def test_postprocess_min_lesion_voxels_uses_3d_components():
    mask = postprocess(blobs(), PostProcessing(min_lesion_voxels=4))
    assert mask.sum() == 12 and mask[0, 5, 5] and mask[1, 5, 5] and not mask[0, 0, 0] and not mask[1, 9, 9]
    assert postprocess(blobs(), PostProcessing(min_lesion_voxels=3)).sum() == 15
    assert postprocess(blobs(), PostProcessing(min_lesion_voxels=13)).sum() == 0


def test_postprocess_keep_largest():
    mask = postprocess(blobs(), PostProcessing(keep_largest=True))
    assert mask.sum() == 12 and not mask[0, 0, 0]
    # nothing above the threshold: nothing to keep, no error
    assert postprocess(np.zeros((2, 4, 4), np.float32), PostProcessing(keep_largest=True)).sum() == 0


def test_postprocess_fill_holes_per_slice():
    probs = np.zeros((2, 9, 9), np.float32)
    probs[0, 2:7, 2:7] = 0.9
    probs[0, 4, 4] = 0.1  # a hole inside a ring
    probs[1, 4, 4] = 0.1  # slice 1 has nothing: must stay empty
    assert postprocess(probs).sum() == 24
    filled = postprocess(probs, PostProcessing(fill_holes=True))
    assert filled[0, 4, 4] == 1 and filled.sum() == 25 and filled[1].sum() == 0


def test_postprocessing_from_dict_ignores_unknown_keys():
    settings = PostProcessing.from_dict({"threshold": 0.3, "tta": True, "keep_largest": True})
    assert settings == PostProcessing(threshold=0.3, keep_largest=True)
    assert PostProcessing.from_dict(None) == PostProcessing()


# --- devices ---------------------------------------------------------------------------------


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_device("").type in {"cpu", "cuda", "mps"}
    assert available_devices()[:2] == ["auto", "cpu"]


def test_resolve_device_unknown_raises():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_resolve_device_absent_raises(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"device '{name}' is not available here"):
        resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("0", False), ("false", False),
                                                 ("", False)])
def test_cpu_has_fast_bf16_honours_environment(monkeypatch, value, expected):
    monkeypatch.setenv("LGG_SEG_CPU_BF16", value)
    cpu_has_fast_bf16.cache_clear()
    try:
        assert cpu_has_fast_bf16() is expected
    finally:
        monkeypatch.delenv("LGG_SEG_CPU_BF16")
        cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize(("isa", "expected_if_flags_say_yes"), [("AVX2", False), ("avx512_core", False),
                                                               ("AVX512_CORE_BF16", True), ("ALL", True)])
def test_cpu_has_fast_bf16_honours_a_onednn_isa_cap(monkeypatch, isa, expected_if_flags_say_yes):
    monkeypatch.delenv("LGG_SEG_CPU_BF16", raising=False)
    cpu_has_fast_bf16.cache_clear()
    try:
        from_flags = cpu_has_fast_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        cpu_has_fast_bf16.cache_clear()
        assert cpu_has_fast_bf16() is (from_flags and expected_if_flags_say_yes)
        if not expected_if_flags_say_yes:  # a cap below bf16 says no whatever the flags say
            assert cpu_has_fast_bf16() is False
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        cpu_has_fast_bf16.cache_clear()


def test_autocast_context_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, "fp32"), contextlib.nullcontext)
    assert isinstance(autocast_context(cpu, "bf16"), torch.autocast)
    monkeypatch.setenv("LGG_SEG_CPU_BF16", "0")
    cpu_has_fast_bf16.cache_clear()
    try:
        assert isinstance(autocast_context(cpu, "auto"), contextlib.nullcontext)
    finally:
        monkeypatch.delenv("LGG_SEG_CPU_BF16")
        cpu_has_fast_bf16.cache_clear()


def test_bf16_prediction_close_to_fp32(tiny_model, volume):
    fp32 = predict_volume(tiny_model, volume, device="cpu", precision="fp32")
    bf16 = predict_volume(tiny_model, volume, device="cpu", precision="bf16")
    assert bf16.dtype == np.float32
    assert np.abs(fp32 - bf16).max() < 0.05


def test_postprocess_takes_a_single_slice():
    probs = np.zeros((32, 32), np.float32)
    probs[4:10, 4:10] = 0.9
    probs[20:22, 20:22] = 0.9
    settings = PostProcessing(threshold=0.5, keep_largest=True)
    mask = postprocess(probs, settings)
    assert mask.shape == (32, 32) and int(mask.sum()) == 36
    np.testing.assert_array_equal(mask, postprocess(probs[None], settings)[0])


def test_result_does_not_depend_on_the_batch_size_with_the_head_crop(tiny_model):
    """The head crop is one box for the whole volume (issue 13): slices whose heads differ in size give the same
    probabilities whatever the batch size (a per-batch box changed the network's input and so the result)."""
    images, _ = make_phantom(n_slices=9, size=96, seed=3)
    images[:3, :, :30] = 0  # the first slices' heads are narrower: a per-batch box would differ between batches
    runs = [predict_volume(tiny_model, images, device="cpu", batch_size=b, precision="fp32") for b in (1, 2, 3, 16)]
    for probs in runs[1:]:
        np.testing.assert_allclose(probs, runs[0], atol=1e-6, rtol=0)


def test_resize_images_and_probabilities_round_trip():
    images, _ = make_phantom(n_slices=2, size=64, seed=0)
    small = inference.resize_images(images, (32, 32))
    assert small.shape == (2, 32, 32, 3) and small.dtype == np.uint8
    mask = np.zeros((2, 64, 64), np.float32)
    mask[:, 16:48, 16:48] = 1
    back = inference.resize_probabilities(inference.resize_probabilities(mask, (32, 32)), (64, 64)).numpy()
    assert back.shape == (2, 64, 64) and 0 <= back.min() and back.max() <= 1
    assert ((back >= 0.5) == (mask >= 0.5)).mean() > 0.98


def test_non_finite_probabilities_are_an_error_naming_the_checkpoint(volume):
    """A model whose weights became NaN in memory (load_model refuses such files) must not read as 'no tumour'."""
    from napari_lgg_seg.inference import NonFiniteOutputError, predict_any_size

    tiny_model = UNet(ModelConfig.from_dict(TINY)).eval()
    with torch.no_grad():
        tiny_model.head.bias.fill_(float("nan"))
    tiny_model.source_path = "/models/broken.pt"
    with pytest.raises(NonFiniteOutputError, match="/models/broken.pt: the network produced NaN"):
        predict_volume(tiny_model, volume, device="cpu")
    with pytest.raises(NonFiniteOutputError):
        predict_any_size(tiny_model, volume, size=128, device="cpu")


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size_raises(tiny_model, volume, batch_size):
    with pytest.raises(ValueError, match="batch size"):
        predict_volume(tiny_model, volume, device="cpu", batch_size=batch_size)
