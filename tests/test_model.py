"""The U-Net and its checkpoint format (napari_lgg_seg.model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_tiny_checkpoint
from napari_lgg_seg.model import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    ModelConfig,
    UNet,
    checkpoint_dict,
    count_parameters,
    default_model_path,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


def tiny_unet(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return UNet(ModelConfig.from_dict({**TINY, **overrides})).eval()


def test_parameter_count_is_pinned():
    assert count_parameters(UNet()) == 7_765_985


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 3, 32, 32), (3, 3, 16, 80)])
def test_output_shape_matches_input(shape):
    model = tiny_unet()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 1, shape[2], shape[3])
    assert out.dtype == torch.float32


def test_outputs_are_logits_not_probabilities():
    model = tiny_unet()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(5.0)
        out = model(torch.randn(1, 3, 32, 32))
    # a sigmoid at the end would squash these into (0, 1)
    assert torch.allclose(out, torch.full_like(out, 5.0))


def test_model_config_round_trip():
    config = ModelConfig.from_dict({**TINY, "unknown_key": 1})
    assert config.features == (4, 8, 16, 32) and config.bottleneck == 32
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_checkpoint_round_trip(tmp_path):
    model = tiny_unet(seed=1)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config={"lr": 1e-3, "path": Path("/x")}, meta={"inference": {"threshold": 0.4}})
    loaded = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))
    assert loaded.config == {"lr": 1e-3, "path": "/x"}
    assert loaded.inference_defaults == {"threshold": 0.4}
    assert isinstance(loaded.meta["torch"], str) and loaded.meta["saved"]
    assert loaded.path == str(path)
    assert not loaded.model.training
    raw = read_checkpoint(path)
    assert raw["format"] == CHECKPOINT_FORMAT
    assert raw["model_config"]["features"] == [4, 8, 16, 32]
    # the file must load with plain torch.load(weights_only=True): nothing but tensors and built-ins
    assert type(torch.load(path, weights_only=True)["meta"]["torch"]) is str


def test_inference_defaults_empty_without_card(tiny_checkpoint):
    assert load_model(tiny_checkpoint).inference_defaults == {}


def test_fp16_checkpoint_loads_as_fp32(tmp_path):
    model = tiny_unet(seed=2)
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, half=True)
    assert read_checkpoint(path)["state_dict"]["encoders.0.0.weight"].dtype == torch.float16
    loaded = load_model(path)
    weight = loaded.model.state_dict()["encoders.0.0.weight"]
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, model.state_dict()["encoders.0.0.weight"], atol=1e-3, rtol=1e-3)
    # integer buffers (BatchNorm's num_batches_tracked) are not converted
    assert loaded.model.state_dict()["encoders.0.1.num_batches_tracked"].dtype == torch.int64


def test_bare_state_dict_of_default_architecture_loads(tmp_path):
    torch.manual_seed(0)
    model = UNet()
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert count_parameters(loaded.model) == 7_765_985
    assert loaded.meta == {}


def test_wrong_shapes_raise(tmp_path):
    ckpt = checkpoint_dict(tiny_unet())
    ckpt["model_config"] = ModelConfig().to_dict()  # claims the full-size architecture
    path = tmp_path / "wrong.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not fit the lightweight U-Net") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_bare_state_dict_of_other_architecture_raises(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0])
def test_truncated_checkpoint_raises(tmp_path, keep):
    good = make_tiny_checkpoint(tmp_path / "good.pt")
    data = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        load_model(bad)
    assert "truncated" in str(info.value) and str(bad) in str(info.value)


def test_not_a_checkpoint_raises(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path)


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_non_dict_checkpoint_raises(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="unexpected content"):
        load_model(path)


def test_state_dict_without_tensors_raises(tmp_path):
    path = tmp_path / "strings.pt"
    torch.save({"state_dict": {"a": "b"}}, path)
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        load_model(path)


class _Exploit:
    """Pickles as a call to os.system: loading it without weights_only would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = checkpoint_dict(tiny_unet())
    ckpt["meta"] = {"payload": _Exploit(marker)}
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_model(path)
    assert "could run code" in str(info.value)
    assert not marker.exists()


def test_one_channel_checkpoint_raises(tmp_path):
    path = tmp_path / "one_channel.pt"
    save_checkpoint(path, tiny_unet(in_channels=1))
    with pytest.raises(CheckpointError, match="1 input channels") as info:
        load_model(path)
    assert "pre-contrast, FLAIR, post-contrast" in str(info.value)


def test_one_channel_weights_with_wrong_config_raise(tmp_path):
    ckpt = checkpoint_dict(tiny_unet(in_channels=1))
    ckpt["model_config"]["in_channels"] = 3  # a lying config: the weights decide
    path = tmp_path / "lying.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="1 input channels"):
        load_model(path)


def test_save_is_atomic_and_creates_folders(tmp_path):
    path = tmp_path / "deep" / "er" / "model.pt"
    save_checkpoint(path, tiny_unet())
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left


def test_default_model_path_is_none_or_a_file():
    path = default_model_path()
    assert path is None or Path(path).is_file()


def test_training_size_from_the_config():
    from napari_lgg_seg.model import LoadedModel, training_size

    assert training_size({"image_size": 64}) == 64
    assert training_size({}) == training_size(None) == training_size({"image_size": None}) == 256
    for bad in ("x", 1, -256, 100, 16, 2048, 256.0, True):
        with pytest.raises(ValueError, match="image_size"):
            training_size({"image_size": bad})
    assert LoadedModel(UNet(ModelConfig(features=(4, 8, 16, 32), bottleneck=32)), {"image_size": 128}).training_size == 128


def test_average_checkpoints_is_the_mean_of_the_weights(tmp_path):
    from napari_lgg_seg.model import average_checkpoints

    paths = [make_tiny_checkpoint(tmp_path / f"e{i}.pt", seed=i, meta={"epochs_done": i}) for i in (1, 2, 3)]
    out = tmp_path / "avg.pt"
    averaged = average_checkpoints(paths, out)
    states = [load_model(p).model.state_dict() for p in paths]
    reloaded = load_model(out)
    for key, value in reloaded.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
    assert reloaded.meta["epochs_done"] == 3 and len(reloaded.meta["averaged_from"]) == 3
    assert averaged.path == str(out)


def test_average_of_different_architectures_raises(tmp_path):
    from napari_lgg_seg.model import average_checkpoints

    tiny = make_tiny_checkpoint(tmp_path / "tiny.pt")
    save_checkpoint(tmp_path / "full.pt", UNet())
    with pytest.raises(CheckpointError, match="architectures differ"):
        average_checkpoints([tiny, tmp_path / "full.pt"], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norm_choice_keeps_the_parameter_count_and_round_trips(tmp_path, norm):
    model = UNet(ModelConfig(norm=norm))
    assert count_parameters(model) == 7_765_985
    small = UNet(ModelConfig(features=(4, 8, 16, 32), bottleneck=32, norm=norm))
    save_checkpoint(tmp_path / "m.pt", small)
    assert load_model(tmp_path / "m.pt").model.config.norm == norm
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(ModelConfig(norm="layer"))


def test_a_card_without_norm_is_batch_norm():
    assert ModelConfig.from_dict({"features": [4, 8, 16, 32], "bottleneck": 32}).norm == "batch"


# --- the model card is validated before the network is built (issue 12) -------------------------------------


def _card(tmp_path, name: str = "card.pt", **parts) -> Path:
    """A tiny checkpoint whose card parts (model_config / config / meta) are replaced by ``parts``."""
    ckpt = checkpoint_dict(tiny_unet(), config={"image_size": 64}, meta={"inference": {"threshold": 0.5}})
    ckpt.update(parts)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("parts, field", [
    ({"meta": {"inference": {"threshold": 1.5}}}, "meta.inference.threshold"),
    ({"meta": {"inference": {"threshold": -1}}}, "meta.inference.threshold"),
    ({"meta": {"inference": {"threshold": 0.0}}}, "meta.inference.threshold"),
    ({"meta": {"inference": {"threshold": "0.7"}}}, "meta.inference.threshold"),
    ({"meta": {"inference": {"threshold": True}}}, "meta.inference.threshold"),
    ({"meta": {"inference": {"min_lesion_voxels": "50"}}}, "meta.inference.min_lesion_voxels"),
    ({"meta": {"inference": {"min_lesion_voxels": -3}}}, "meta.inference.min_lesion_voxels"),
    ({"meta": {"inference": {"min_lesion_voxels": 2.5}}}, "meta.inference.min_lesion_voxels"),
    ({"meta": {"inference": {"keep_largest": "yes"}}}, "meta.inference.keep_largest"),
    ({"meta": {"inference": {"fill_holes": 1}}}, "meta.inference.fill_holes"),
    ({"meta": {"inference": {"tta": "false"}}}, "meta.inference.tta"),
    ({"meta": {"inference": "threshold=0.5"}}, "meta.inference"),
    ({"meta": [1, 2]}, "meta"),
    ({"config": 5}, "config"),
    ({"model_config": "unet"}, "model_config"),
    ({"model_config": {**TINY, "features": [-4, 8, 16, 32]}}, "model_config.features"),
    ({"model_config": {**TINY, "features": "4,8"}}, "model_config.features"),
    ({"model_config": {**TINY, "features": []}}, "model_config.features"),
    ({"model_config": {**TINY, "bottleneck": 10**6}}, "model_config.bottleneck"),
    ({"model_config": {**TINY, "bottleneck": "32"}}, "model_config.bottleneck"),
    ({"config": {"image_size": 1}}, "config.image_size"),
    ({"config": {"image_size": -256}}, "config.image_size"),
    ({"config": {"image_size": "256"}}, "config.image_size"),
])
def test_bad_card_is_refused_naming_file_and_field(tmp_path, parts, field):
    path = _card(tmp_path, **parts)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text and f"{field} must" in text


def test_card_of_absurd_size_is_refused_before_allocation(tmp_path, monkeypatch):
    from napari_lgg_seg import model as model_module

    path = _card(tmp_path, model_config={**TINY, "features": [4096] * 8, "bottleneck": 4096})
    built = []
    monkeypatch.setattr(model_module.UNet, "__init__", lambda self, *a, **k: built.append(1) or None)
    with pytest.raises(CheckpointError, match="parameters"):
        load_model(path)
    assert not built


def test_parameter_count_matches_the_built_network():
    from napari_lgg_seg.model import parameter_count

    for config in (ModelConfig(), ModelConfig.from_dict(TINY), ModelConfig(features=(5, 7), bottleneck=9)):
        assert parameter_count(config) == count_parameters(UNet(config))


def test_good_card_loads(tmp_path):
    path = _card(tmp_path, meta={"inference": {"threshold": 0.4, "min_lesion_voxels": 10, "keep_largest": True,
                                               "fill_holes": False, "tta": True}})
    loaded = load_model(path)
    assert loaded.inference_defaults["threshold"] == 0.4 and loaded.training_size == 64


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, value):
    net = tiny_unet()
    with torch.no_grad():
        net.head.weight[0, 0] = value
    save_checkpoint(tmp_path / "nan.pt", net)
    with pytest.raises(CheckpointError, match="NaN or infinite") as info:
        load_model(tmp_path / "nan.pt")
    assert str(tmp_path / "nan.pt") in str(info.value)
