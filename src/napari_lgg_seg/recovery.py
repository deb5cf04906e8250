"""Crash recovery for corrected masks (Qt-free): autosave files under a per-user folder.

Files live in ``$LGG_SEG_RECOVERY_DIR`` or ``$XDG_CACHE_HOME/napari-lgg-seg/recovery`` (default
``~/.cache/napari-lgg-seg/recovery``), one ``<PATIENT>-<hash>.npz`` per patient (sanitised id + a short hash
of the exact id, so ids that sanitise alike never share a file), written atomically. The stored patient id is
checked on load: a file holding another patient is never offered.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io as _io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes, sanitize_name

ENV_VAR = "LGG_SEG_RECOVERY_DIR"


def recovery_dir() -> Path:
    """The folder holding recovery files (not created here)."""
    forced = os.environ.get(ENV_VAR)
    if forced:
        return Path(forced).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "napari-lgg-seg" / "recovery"


def recovery_path(patient_id: str) -> Path:
    """The recovery file of one patient: sanitised id + short hash of the exact id."""
    digest = hashlib.blake2b(str(patient_id).encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return recovery_dir() / f"{sanitize_name(patient_id)[:80]}-{digest}.npz"


def _legacy_path(patient_id: str) -> Path:
    """Where versions before the hashed names kept the file (``<sanitised id>.npz``)."""
    return recovery_dir() / f"{sanitize_name(patient_id)}.npz"


def _stored_id(path: Path) -> str | None:
    """The patient id stored in a recovery file (``None`` if absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["info"]).decode()).get("patient_id")
    except Exception:  # noqa: BLE001 - unreadable: the caller treats it as not this patient's
        return None


def _existing_path(patient_id: str) -> Path | None:
    """This patient's recovery file: the hashed name, else a legacy file whose stored id matches exactly."""
    path = recovery_path(patient_id)
    if path.is_file():
        return path
    legacy = _legacy_path(patient_id)
    if legacy.is_file() and _stored_id(legacy) == patient_id:
        return legacy
    return None


def mask_digest(mask: np.ndarray) -> str:
    """A short content hash of a mask (shape and tumour voxels), to tell whether it changed."""
    arr = np.ascontiguousarray(np.asarray(mask) > 0)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(np.packbits(arr).tobytes())
    return h.hexdigest()


@dataclass
class Recovery:
    """A restored autosave: the corrected mask, the AI mask if it was saved, and its description."""

    mask: np.ndarray
    ai_mask: np.ndarray | None
    info: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def saved(self) -> str:
        return str(self.info.get("saved", "unknown time"))


def save_recovery(patient_id: str, mask: np.ndarray, *, ai_mask: np.ndarray | None = None,
                  info: dict | None = None) -> Path:
    """Atomically write the recovery file of ``patient_id``; returns its path."""
    mask = np.asarray(mask)
    payload = {
        "patient_id": patient_id,
        "saved": _dt.datetime.now().isoformat(timespec="seconds"),
        "shape": list(mask.shape),
        "tumour_voxels": int(np.count_nonzero(mask)),
        **{k: v for k, v in (info or {}).items() if isinstance(v, (str, int, float, bool, list)) or v is None},
    }
    arrays = {"mask": mask.astype(np.uint8, copy=False), "info": np.frombuffer(json.dumps(payload).encode(), np.uint8)}
    if ai_mask is not None:
        arrays["ai_mask"] = np.asarray(ai_mask).astype(np.uint8, copy=False)
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = recovery_path(patient_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def has_recovery(patient_id: str) -> bool:
    """True when a recovery file of this patient exists (one readably holding another patient does not count;
    a damaged one does, so that loading it warns)."""
    path = _existing_path(patient_id)
    return path is not None and _stored_id(path) in (patient_id, None)


def load_recovery(patient_id: str) -> Recovery | None:
    """Read a patient's recovery file; ``None`` when absent, unreadable or holding another patient (the file
    is kept in both cases, with a warning)."""
    path = _existing_path(patient_id)
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            mask = np.array(data["mask"])
            ai_mask = np.array(data["ai_mask"]) if "ai_mask" in data.files else None
            info = json.loads(bytes(data["info"]).decode()) if "info" in data.files else {}
    except Exception as err:  # damaged file: say so, keep it for manual rescue
        warnings.warn(f"recovery file {path} is unreadable ({type(err).__name__}: {err}); left in place",
                      stacklevel=2)
        return None
    if info.get("patient_id") != patient_id:
        warnings.warn(f"recovery file {path} holds patient {info.get('patient_id')!r}, not {patient_id!r}; "
                      "not offered, left in place", stacklevel=2)
        return None
    return Recovery(mask=mask, ai_mask=ai_mask, info=info, path=path)


def clear_recovery(patient_id: str) -> bool:
    """Delete the patient's recovery file (never one readably holding another patient); True if one was
    removed."""
    path = _existing_path(patient_id)
    if path is None or _stored_id(path) not in (patient_id, None):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
