"""Shared fixtures: synthetic phantom datasets and tiny random-weight checkpoints (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "lgg" / "kaggle_3m"
REAL_DATA = Path(os.environ.get("LGG_DATA", REAL_DATA))

requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real LGG data not found at {REAL_DATA}")

TINY = {"features": [4, 8, 16, 32], "bottleneck": 32}


@pytest.fixture
def phantom_root(tmp_path) -> Path:
    """A dataset root with 3 small phantom patients (12 slices of 64x64)."""
    from napari_lgg_seg.sample import write_phantom_dataset

    root = tmp_path / "phantoms"
    write_phantom_dataset(root, n_patients=3, n_slices=12, size=64)
    return root


@pytest.fixture
def phantom_patient(phantom_root) -> Path:
    return sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]


def make_tiny_checkpoint(path: Path, seed: int = 0, meta: dict | None = None) -> Path:
    """A random-weight U-Net with very few channels, saved in the project's checkpoint format."""
    import torch

    from napari_lgg_seg.model import ModelConfig, UNet, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(path, UNet(ModelConfig.from_dict(TINY)), config={"note": "tiny test model"}, meta=meta or {})
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path / "tiny.pt")
