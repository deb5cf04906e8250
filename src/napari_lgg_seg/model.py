"""The lightweight U-Net (about 7.77 M parameters) and its checkpoint format."""

from __future__ import annotations

import datetime as _dt
import io as _io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion

CHECKPOINT_FORMAT = "napari-lgg-seg/1"
DEFAULT_MODEL_PATH = Path(__file__).with_name("models") / "lgg_unet_default.pt"


@dataclass
class ModelConfig:
    """Architecture of the U-Net; stored in every checkpoint."""

    in_channels: int = 3
    out_channels: int = 1
    features: tuple[int, ...] = (32, 64, 128, 256)
    bottleneck: int = 512
    norm: str = "batch"  # "batch", "group" (GroupNorm, 8 groups) or "instance": see NORMS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "features" in d:
            d["features"] = tuple(int(f) for f in d["features"])
        known = {k: d[k] for k in ("in_channels", "out_channels", "features", "bottleneck", "norm") if k in d}
        return cls(**known)


# "group" and "instance" normalise each slice with its own statistics, so inference normalises exactly as training
# did; BatchNorm's running statistics come from the augmented training batches and can misfit real slices.
NORMS = ("batch", "group", "instance")
NORM_GROUPS = 8


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(NORM_GROUPS, channels), channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv, normalisation, ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with 4 encoder blocks, a bottleneck and 4 decoder blocks; returns logits.

    Input height and width must be multiples of 16 (``inference`` pads for you).
    """

    source_path: str | None = None  # the checkpoint it was loaded from (set by ``load_model``)

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.encoders = nn.ModuleList()
        channels = c.in_channels
        for f in c.features:
            self.encoders.append(DoubleConv(channels, f, c.norm))
            channels = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(channels, c.bottleneck, c.norm)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        channels = c.bottleneck
        for f in reversed(c.features):
            self.upsamples.append(nn.ConvTranspose2d(channels, f, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(2 * f, f, c.norm))
            channels = f
        self.head = nn.Conv2d(channels, c.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = up(x)
            x = decoder(torch.cat([skip, x], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


DATASET_SLICE_SIZE = 256  # the LGG set's slices are 256 x 256


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


@dataclass
class LoadedModel:
    """A U-Net with the configuration and metadata of its checkpoint."""

    model: UNet
    config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def inference_defaults(self) -> dict:
        """Threshold / TTA / post-processing chosen on validation patients, if the card has them."""
        return dict(self.meta.get("inference", {}))

    @property
    def training_size(self) -> int:
        """The slice size the model was trained on (see :func:`training_size`)."""
        return training_size(self.config)


IMAGE_SIZE_RANGE = (32, 1024)  # a card's training slice size: a multiple of 16 in this range
MAX_FEATURE_LEVELS = 8
MAX_CHANNELS = 4096  # per U-Net level or at the bottleneck
MAX_PARAMETERS = 200_000_000  # the shipped model has 7.77 M; refuse absurd cards before allocating


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def image_size_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable training slice size (None when it is)."""
    lo, hi = IMAGE_SIZE_RANGE
    if not _is_int(value) or value % 16 or not lo <= value <= hi:
        return f"must be a whole number of pixels, a multiple of 16 between {lo} and {hi}; got {value!r}"
    return None


def training_size(config: dict | None) -> int:
    """The slice size a checkpoint was trained on, which is the network's input size for every caller
    (``inference.model_input_size``): its config's ``image_size``, else the dataset's 256.

    Raises ``ValueError`` for a size that is not a multiple of 16 in ``IMAGE_SIZE_RANGE``
    (``load_model`` refuses such cards with the file named).
    """
    value = config.get("image_size") if isinstance(config, dict) else None
    if value is None:
        return DATASET_SLICE_SIZE
    problem = image_size_problem(value)
    if problem:
        raise ValueError(f"config.image_size {problem}")
    return int(value)


def parameter_count(config: ModelConfig) -> int:
    """Trainable parameters of ``UNet(config)``, computed from the configuration without building it."""

    def double_conv(cin: int, cout: int) -> int:
        return (9 * cin * cout + cout + 2 * cout) + (9 * cout * cout + cout + 2 * cout)

    total, channels = 0, config.in_channels
    for f in config.features:
        total += double_conv(channels, f)
        channels = f
    total += double_conv(channels, config.bottleneck)
    channels = config.bottleneck
    for f in reversed(config.features):
        total += 4 * channels * f + f + double_conv(2 * f, f)
        channels = f
    return total + channels * config.out_channels + config.out_channels


def _card_problem(ckpt: dict) -> str | None:
    """The first field of a checkpoint dict's card that is of the wrong type or out of range, as a message."""
    for key in ("model_config", "config", "meta"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            return f"{key} must be a mapping (dict); got {type(ckpt[key]).__name__}"
    mc = ckpt.get("model_config", {})
    for key in ("in_channels", "out_channels", "bottleneck"):
        if key in mc and not (_is_int(mc[key]) and 1 <= mc[key] <= MAX_CHANNELS):
            return f"model_config.{key} must be a whole number between 1 and {MAX_CHANNELS}; got {mc[key]!r}"
    if "features" in mc:
        f = mc["features"]
        if (not isinstance(f, (list, tuple)) or not 1 <= len(f) <= MAX_FEATURE_LEVELS
                or not all(_is_int(v) and 1 <= v <= MAX_CHANNELS for v in f)):
            return (f"model_config.features must be a list of 1 to {MAX_FEATURE_LEVELS} whole numbers between 1 "
                    f"and {MAX_CHANNELS}; got {f!r}"[:300])
    config = ckpt.get("config", {})
    if config.get("image_size") is not None and image_size_problem(config["image_size"]):
        return f"config.image_size {image_size_problem(config['image_size'])}"
    inference = ckpt.get("meta", {}).get("inference", {})
    if not isinstance(inference, dict):
        return f"meta.inference must be a mapping (dict); got {type(inference).__name__}"
    if "threshold" in inference:
        t = inference["threshold"]
        if not (_is_number(t) and 0.0 < t < 1.0):
            return f"meta.inference.threshold must be a number between 0 and 1 (exclusive); got {t!r}"
    if "min_lesion_voxels" in inference:
        v = inference["min_lesion_voxels"]
        if not (_is_int(v) and v >= 0):
            return f"meta.inference.min_lesion_voxels must be a whole number >= 0; got {v!r}"
    for key in ("keep_largest", "fill_holes", "tta"):
        if key in inference and not isinstance(inference[key], bool):
            return f"meta.inference.{key} must be true or false; got {inference[key]!r}"
    return None


def validate_card(ckpt: dict, path: str | os.PathLike) -> None:
    """Check the types and ranges of a checkpoint's card (``model_config``, ``config.image_size``,
    ``meta.inference``) and the size of its network, before anything is built; raises ``CheckpointError``
    naming the file and the field."""
    problem = _card_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: invalid model card: {problem}. Use a checkpoint saved by napari-lgg-seg "
                              "or correct this field.")
    mc = ModelConfig.from_dict(ckpt.get("model_config", {}))
    n = parameter_count(mc)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: invalid model card: model_config describes a network of {n:,} parameters "
                              f"(more than the limit of {MAX_PARAMETERS:,}); refused before allocating it.")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool):
        return None if obj is None else bool(obj)
    # plain built-ins only: subclasses such as torch's TorchVersion (a str) would be pickled by class
    # and then refused by torch.load(weights_only=True)
    for kind in (str, int, float):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def checkpoint_dict(model: nn.Module, config: dict | None = None, meta: dict | None = None,
                    half: bool = False) -> dict:
    """The on-disk checkpoint: state dict, model config, JSON-able config and metadata."""
    net = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = dict(meta or {})
    meta.setdefault("saved", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    meta.setdefault("torch", str(torch.__version__))
    return {
        "format": CHECKPOINT_FORMAT,
        "model_config": net.config.to_dict(),
        "state_dict": state,
        "config": _jsonable(config or {}),
        "meta": _jsonable(meta),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and rename: a crash never leaves a torn file."""
    from .io import atomic_write_bytes

    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict | None = None,
                    meta: dict | None = None, half: bool = False) -> None:
    """Save weights + config + metadata atomically."""
    atomic_torch_save(checkpoint_dict(model, config, meta, half=half), path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely (``weights_only=True``: pickles that run code are refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found.")
    try:
        # TorchVersion (a str subclass) is allowed: checkpoints of earlier builds stored torch.__version__ as is
        with torch.serialization.safe_globals([TorchVersion]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path}: refused: the file contains Python objects other than weights, which could "
                "run code when loaded. Only load checkpoints saved by napari-lgg-seg."
            ) from err
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text}); it may be truncated.") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: unexpected content ({type(ckpt).__name__}); expected a checkpoint dict.")
    return ckpt


def _first_non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (numpy's check: about 7 ms for the shipped
    model's 7.77 M fp16 weights, where torch's multi-threaded one took 0.5 s on a busy 2-core machine)."""
    import numpy as np

    for name, value in state.items():
        if not value.is_floating_point():
            continue
        if value.dtype in (torch.float16, torch.float32, torch.float64):
            finite = bool(np.isfinite(value.detach().cpu().numpy()).all())
        else:
            finite = bool(torch.isfinite(value).all())
        if not finite:
            return name
    return None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a U-Net checkpoint (ours, or a bare state dict of the same architecture)."""
    ckpt = read_checkpoint(path)
    if "state_dict" in ckpt:
        validate_card(ckpt, path)
        state = ckpt["state_dict"]
        model_config = ModelConfig.from_dict(ckpt.get("model_config", {}))
    else:
        state, model_config = ckpt, ModelConfig()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found.")
    first = state.get("encoders.0.0.weight")
    if first is not None and first.ndim == 4 and first.shape[1] != model_config.in_channels:
        model_config.in_channels = int(first.shape[1])
    if model_config.in_channels != 3:
        raise CheckpointError(
            f"{path}: the model was trained on {model_config.in_channels} input channels; this plugin "
            "feeds 3 (pre-contrast, FLAIR, post-contrast)."
        )
    bad = _first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: the weights hold NaN or infinite values (first in {bad}); the model would "
                              "give meaningless masks. Use another checkpoint (e.g. an earlier epoch of the run).")
    if parameter_count(model_config) > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: the network would have more than {MAX_PARAMETERS:,} parameters; refused.")
    with torch.device("meta"):  # no random initialisation to throw away: half of the load time (20-35 ms)
        model = UNet(model_config)
    try:
        model.load_state_dict({k: v.float().contiguous() if v.is_floating_point() else v.contiguous()
                               for k, v in state.items()}, assign=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()][:4]
        raise CheckpointError(
            f"{path}: weights do not fit the lightweight U-Net ({' '.join(lines)[:400]})."
        ) from err
    model.to(device).eval()
    model.source_path = str(path)  # named by inference.check_finite when the outputs are not finite
    return LoadedModel(model=model, config=dict(ckpt.get("config", {})), meta=dict(ckpt.get("meta", {})),
                       path=str(path))


def default_model_path() -> Path | None:
    """The model shipped in the package, or ``None`` when none is installed."""
    return DEFAULT_MODEL_PATH if DEFAULT_MODEL_PATH.is_file() else None


def load_model_or_default(weights: str | os.PathLike | None, device: str | torch.device = "cpu") -> LoadedModel:
    """``load_model(weights)``, or the shipped default model when ``weights`` is empty."""
    path = weights or default_model_path()
    if not path:
        raise CheckpointError("no default model is installed; pass --weights PATH (a checkpoint such as a "
                              "training run's best.pt).")
    return load_model(path, device=device)


def average_checkpoints(paths: list[str | os.PathLike], out: str | os.PathLike) -> LoadedModel:
    """Average the weights of checkpoints of one architecture (e.g. a run's last epochs) into ``out``.

    Floating-point tensors (weights and BatchNorm statistics) are averaged, integer ones (BatchNorm's
    batch counter) are taken from the last checkpoint; config and metadata are the last checkpoint's, with
    ``meta["averaged_from"]`` listing the inputs.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    models = [load_model(p) for p in paths]
    states = [m.model.state_dict() for m in models]
    shapes = [{k: v.shape for k, v in state.items()} for state in states]
    if any(s != shapes[-1] for s in shapes):
        raise CheckpointError(f"cannot average {', '.join(map(str, paths))}: their architectures differ.")
    averaged = {key: torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
                if last.is_floating_point() else last
                for key, last in states[-1].items()}
    result = models[-1]
    result.model.load_state_dict(averaged)
    result.meta = {**result.meta, "averaged_from": [str(Path(p).resolve()) for p in paths]}
    save_checkpoint(out, result.model, config=result.config, meta=result.meta)
    result.path = str(out)
    return result
