"""Qt-free helpers of the browser's correction workflow: remembered settings and each patient's state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .layers import has_unexported_edits, prediction_layers

NOT_STARTED, SEGMENTED, CORRECTED, EXPORTED = "not started", "segmented", "corrected", "exported"


def config_dir() -> Path:
    """The plugin's settings folder: ``$LGG_SEG_CONFIG_DIR`` or ``~/.config/napari-lgg-seg``."""
    env = os.environ.get("LGG_SEG_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "napari-lgg-seg"


def load_settings() -> dict:
    """The remembered settings (empty when none were saved or the file is unreadable)."""
    try:
        data = json.loads((config_dir() / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(**values) -> None:
    """Merge ``values`` into the settings file (written atomically; failures are ignored: it is a convenience)."""
    path = config_dir() / "settings.json"
    data = {**load_settings(), **values}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass


def is_exported(export_root: str | os.PathLike | None, patient_id: str) -> bool:
    """True when ``EXPORT_ROOT/<PATIENT>/`` holds exported masks (so the state survives restarts)."""
    if not export_root:
        return False
    folder = Path(export_root) / patient_id
    return folder.is_dir() and any(folder.glob(f"{patient_id}_*_mask.tif"))


def patient_state(viewer, patient_id: str, export_root=None, kept=(), segmented=()) -> str:
    """not started / segmented / corrected / exported, from the open (or ``kept``) tumour layers and the export
    root. A patient whose layer holds corrections not yet exported is "corrected" even if an older export exists."""
    layers = [*prediction_layers(viewer, patient_id), *kept]
    if any(has_unexported_edits(layer) for layer in layers):
        return CORRECTED
    if is_exported(export_root, patient_id):
        return EXPORTED
    if layers or patient_id in segmented:
        return SEGMENTED
    return NOT_STARTED
