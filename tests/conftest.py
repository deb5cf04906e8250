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


def make_tiny_checkpoint(path: Path, seed: int = 0, meta: dict | None = None, image_size: int | None = 64) -> Path:
    """A random-weight U-Net with very few channels, saved in the project's checkpoint format; its card says
    it was trained on ``image_size`` px slices (the phantoms' 64; None: a card without a training size)."""
    import torch

    from napari_lgg_seg.model import ModelConfig, UNet, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(path, UNet(ModelConfig.from_dict(TINY)), config={"note": "tiny test model", **({"image_size": image_size} if image_size else {})}, meta=meta or {})
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return make_tiny_checkpoint(tmp_path / "tiny.pt")


@pytest.fixture
def quiet_settings():
    """napari settings not written to the user's settings file (the reader records its preferences there)."""
    from napari.settings import get_settings

    settings = get_settings()
    saving = settings._save_on_change
    settings._save_on_change = False
    before = dict(settings.plugins.extension2reader)
    yield settings
    settings.plugins.extension2reader = before
    settings._save_on_change = saving


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch):
    """The plugin's remembered settings in a temporary folder, with automatic segmentation unticked: a root opened
    by a test does not start the shipped model in the background (tests/test_workflow.py tests it ticked)."""
    import json

    folder = tmp_path_factory.mktemp("settings")  # not in tmp_path: tests list what they wrote there
    (folder / "settings.json").write_text(json.dumps({"auto_segment": False}))
    monkeypatch.setenv("LGG_SEG_CONFIG_DIR", str(folder))


@pytest.fixture(autouse=True)
def _isolated_recovery_dir(tmp_path, monkeypatch):
    """Keep autosaved corrections of every test out of the user's real cache folder."""
    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))


@pytest.fixture(autouse=True)
def _isolated_model_choices():
    """The Segment dock's current model and the run-time model registry are process-wide: reset them after
    each test so that a dock opened later starts as it would in a fresh napari."""
    yield
    import sys

    common = sys.modules.get("napari_lgg_seg.segmentation")
    if common is not None:
        common.set_current_model_path(None)
        for _label, path in common.registered_models():
            common.unregister_model(path)


@pytest.fixture(autouse=True)
def _no_leaked_worker_threads():
    """Fail the test that leaves a napari worker running: Qt's global pool has only as many threads as
    cores, so a leaked worker would starve every later test's workers."""
    yield
    import sys

    if "qtpy" not in sys.modules:
        return
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if not pool.waitForDone(60_000):
        pytest.fail(f"{pool.activeThreadCount()} worker thread(s) still running 60 s after the test")
