"""Training configuration (a dataclass, read from TOML files in ``training/configs``)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved with every checkpoint."""

    name: str = "run"
    # model size (U-Net channels per level and at the bottleneck; the defaults are the shipped model's)
    model_features: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    model_bottleneck: int = 512
    model_norm: str = "batch"  # "batch" or "instance" (model.NORMS)
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
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a TOML config (flat keys, as in ``training/configs``)."""
        path = Path(path)
        with open(path, "rb") as f:
            data = tomllib.load(f)
        data.setdefault("name", path.stem)
        return cls.from_dict(data)

    def validate(self) -> None:
        if self.loss not in ("bce_dice", "weighted_bce_dice"):
            raise ValueError(f"loss must be 'bce_dice' or 'weighted_bce_dice', not {self.loss!r}")
        if self.scheduler not in ("plateau", "cosine"):
            raise ValueError(f"scheduler must be 'plateau' or 'cosine', not {self.scheduler!r}")
        if self.crop_size is not None and (self.crop_size % 16 or self.crop_size < 32):
            raise ValueError("crop_size must be a multiple of 16 and at least 32")
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError("image_size must be a multiple of 16 and at least 32")
        if self.crop_size is not None and self.crop_size > self.image_size:
            raise ValueError(f"crop_size ({self.crop_size}) must not exceed image_size ({self.image_size})")
        if not self.model_features or any(int(f) < 1 for f in self.model_features) or self.model_bottleneck < 1:
            raise ValueError("model_features and model_bottleneck must be positive channel counts")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        shares = (self.missing_both, self.missing_post, self.missing_pre)
        if any(not 0 <= v <= 1 for v in shares) or sum(shares) > 1:
            raise ValueError("missing_both, missing_post and missing_pre must be shares in [0, 1] summing to at most 1")
        if min(self.gamma, self.noise, self.intensity, self.rotate_degrees) < 0 or not 0 < self.scale_min <= self.scale_max:
            raise ValueError("gamma, noise, intensity and rotate_degrees must be >= 0 and 0 < scale_min <= scale_max")
        from .transforms import MISSING_SEQUENCES

        unknown = [c for c in self.val_conditions if c not in MISSING_SEQUENCES]
        if unknown:
            raise ValueError(f"val_conditions: unknown condition(s) {unknown}; choose from {', '.join(MISSING_SEQUENCES)}")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
