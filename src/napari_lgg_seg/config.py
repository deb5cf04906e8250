"""Training configuration (a dataclass, read from TOML files in ``training/configs``)."""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A training option of the wrong type or out of range; the message names the field (and the file)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with every checkpoint."""

    name: str = "run"
    # model size (U-Net channels per level and at the bottleneck; the defaults are the shipped model's)
    model_features: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    model_bottleneck: int = 512
    model_norm: str = "batch"  # "batch", "group" or "instance" (model.NORMS)
    # loss
    loss: str = "weighted_bce_dice"  # "bce_dice" (baseline) or "weighted_bce_dice"
    pos_weight: float = 3.0
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the training slices
    scheduler: str = "plateau"  # "plateau" (ReduceLROnPlateau) or "cosine" (warm-up + cosine)
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    warmup_steps: int = 0
    min_lr: float = 1e-6
    # sampling and augmentation
    image_size: int = 256  # slices of another size are resized to this (the dataset's size)
    crop_size: int | None = None  # train on random crops (multiple of 16); None: whole slices
    tumour_fraction: float | None = None  # share of samples drawn from tumour slices; None: natural
    flip: bool = True
    rotate_degrees: float = 15.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    intensity: float = 0.1  # per-channel gain / shift in standardised units
    gamma: float = 0.0  # per-channel gamma exp(U(-gamma, gamma))
    noise: float = 0.0  # Gaussian noise, per-sample std in U(0, noise)
    # missing-sequence augmentation: share of samples with FLAIR copied into pre+post / post only / pre only
    missing_both: float = 0.0
    missing_post: float = 0.0
    missing_pre: float = 0.0
    # data split (by patient)
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    train_patients: list[str] = field(default_factory=list)
    val_patients: list[str] = field(default_factory=list)
    test_patients: list[str] = field(default_factory=list)
    # hardware
    device: str = "auto"
    precision: str = "auto"  # "auto" (bf16 where the CPU/GPU is fast at it), "bf16", "fp32"
    num_threads: int = 0  # 0: torch's default
    val_batch_size: int = 16
    # validation also scores these simulated missing-sequence conditions (transforms.MISSING_SEQUENCES)
    val_conditions: list[str] = field(default_factory=lambda: ["flair_only"])
    validate_every: int = 1  # validate every N epochs (and always after the last)
    # start from weights (fine-tuning); "" for scratch
    init_weights: str = ""
    threshold: float = 0.5
    cache_dir: str = ""
    # also keep each epoch's weights as epoch_<N>.pt (model only), e.g. to average the last epochs
    keep_epoch_checkpoints: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def augmentation(self):
        """The ``transforms.Augmentation`` this config trains with."""
        from .transforms import Augmentation

        return Augmentation(flip=self.flip, rotate_degrees=self.rotate_degrees, scale=(self.scale_min, self.scale_max),
                            intensity=self.intensity, gamma=self.gamma, noise=self.noise,
                            missing_both=self.missing_both, missing_post=self.missing_post,
                            missing_pre=self.missing_pre)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a TOML config (flat keys, as in ``training/configs``)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not a valid TOML file ({err}).") from err
        data.setdefault("name", path.stem)
        try:
            config = cls.from_dict(data)
            config.validate()
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {err}. Correct this field in the file.") from err
        return config

    def validate(self) -> None:
        """Check every field's type (from the dataclass annotations, so new fields are covered) and range
        (``FIELD_RULES``); raises ``ConfigError`` naming the first bad field."""
        for f in fields(self):
            problem = field_problem(f.name, getattr(self, f.name), type(self))
            if problem:
                raise ConfigError(f"{f.name} {problem}")
        if self.crop_size is not None and self.crop_size > self.image_size:
            raise ConfigError(f"crop_size ({self.crop_size}) must not exceed image_size ({self.image_size})")
        scale_min, scale_max = getattr(self, "scale_min", None), getattr(self, "scale_max", None)
        if scale_min is not None and scale_max is not None and scale_max < scale_min:
            raise ConfigError(f"scale_max ({scale_max}) must not be below scale_min ({scale_min})")
        shares = (self.missing_both, self.missing_post, self.missing_pre)
        if sum(shares) > 1:
            raise ConfigError("missing_both + missing_post + missing_pre must be at most 1 (shares of the samples)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("val_fraction + test_fraction must be below 1 (some patients must be left to train on)")
        from .model import MAX_PARAMETERS, ModelConfig, parameter_count

        n = parameter_count(ModelConfig(features=tuple(self.model_features), bottleneck=self.model_bottleneck))
        if n > MAX_PARAMETERS:
            raise ConfigError(f"model_features / model_bottleneck describe a network of {n:,} parameters, more than "
                              f"the limit of {MAX_PARAMETERS:,}")


def field_problem(name: str, value: Any, cls: type | None = None) -> str | None:
    """Why ``value`` is not valid for the ``TrainConfig`` field ``name`` ("must be ...; got ..."), or None.

    The type comes from the field's annotation, the range from ``FIELD_RULES``; the CLI's options
    (``cli.config_option``), the dock and config files all go through this one check.
    """
    annotation = typing.get_type_hints(cls or TrainConfig).get(name, object)
    if not _matches(value, annotation):
        return f"must be {_describe(annotation)}; got {value!r} ({type(value).__name__})"
    rule = FIELD_RULES.get(name)
    if rule is not None and value is not None and not rule[0](value):
        return f"must be {rule[1]}; got {value!r}"
    return None


def parse_field(name: str, text: str) -> Any:
    """Parse command-line text for the field ``name`` (by its annotated type) and check it; ``ConfigError``
    says why it is refused (without the field name, which the caller's message carries)."""
    annotation = typing.get_type_hints(TrainConfig).get(name, str)
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    value: Any = text
    for kind in kinds:
        try:
            value = kind(text) if kind in (int, float) else text
            break
        except ValueError:
            continue
    problem = field_problem(name, value)
    if problem:
        raise ConfigError(problem)
    return value


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the annotated type: bool is not an int, an int is a float, NaN/inf are not."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this check does not know: left to the range rules


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "absent (None)"
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list of {_describe(args[0]).removeprefix('a ')}s" if args else "a list"
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string (text)"}
    return names.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
    def check(v: Any) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return check, f"{'>' if lo_open else '>='} {_num(lo)} and {'<' if hi_open else '<='} {_num(hi)}"


def _at_least(lo: float, open_: bool = False) -> tuple[Callable, str]:
    return (lambda v: v > lo if open_ else v >= lo), f"{'>' if open_ else '>='} {_num(lo)}"


def _one_of(*choices: str) -> tuple[Callable, str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


IMAGE_SIZE_RANGE = (32, 1024)  # as model.IMAGE_SIZE_RANGE
MAX_CHANNELS = 4096
_SIZE = (lambda v: v % 16 == 0 and IMAGE_SIZE_RANGE[0] <= v <= IMAGE_SIZE_RANGE[1],
         f"a multiple of 16 between {IMAGE_SIZE_RANGE[0]} and {IMAGE_SIZE_RANGE[1]}")

#: Range of each field (checked after its type); fields not listed are only type-checked. None always passes
#: here (a field that may be None says so in its annotation).
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": ((lambda v: bool(v.strip())), "a non-empty name"),
    "model_features": ((lambda v: 1 <= len(v) <= 8 and all(1 <= f <= MAX_CHANNELS for f in v)),
                       f"a list of 1 to 8 channel counts between 1 and {MAX_CHANNELS}"),
    "model_bottleneck": _between(1, MAX_CHANNELS),
    "loss": _one_of("bce_dice", "weighted_bce_dice"),
    "pos_weight": _at_least(0, open_=True),
    "lr": _between(0, 10, lo_open=True),
    "weight_decay": _at_least(0),
    "batch_size": _between(1, 4096),
    "epochs": _between(1, 100_000),
    "steps_per_epoch": _between(1, 10_000_000),
    "scheduler": _one_of("plateau", "cosine"),
    "plateau_factor": _between(0, 1, lo_open=True, hi_open=True),
    "plateau_patience": _at_least(0),
    "warmup_steps": _at_least(0),
    "min_lr": _at_least(0),
    "image_size": _SIZE,
    "crop_size": _SIZE,
    "tumour_fraction": _between(0, 1),
    "rotate_degrees": _between(0, 180),
    "scale_min": _at_least(0, open_=True),
    "scale_max": _at_least(0, open_=True),
    "intensity": _at_least(0),
    "gamma": _between(0, 2),
    "noise": _at_least(0),
    "missing_both": _between(0, 1),
    "missing_post": _between(0, 1),
    "missing_pre": _between(0, 1),
    "model_norm": _one_of("batch", "group", "instance"),
    "val_conditions": ((lambda v: all(c in ("intact", "flair_only", "no_post", "no_pre") for c in v)),
                       "a list of 'intact', 'flair_only', 'no_post', 'no_pre'"),
    "validate_every": _between(1, 100_000),
    "seed": _between(0, 2**32 - 1),
    "val_fraction": _between(0, 1, hi_open=True),
    "test_fraction": _between(0, 1, hi_open=True),
    "device": _one_of("auto", "cpu", "cuda", "mps"),
    "precision": _one_of("auto", "bf16", "fp32"),
    "num_threads": _between(0, 4096),
    "val_batch_size": _between(1, 4096),
    "threshold": _between(0, 1, lo_open=True, hi_open=True),
}
