"""What the command line and the demo share (no import between them): the model for inference, its card's
post-processing settings, progress lines on stderr and the user-facing error type."""

from __future__ import annotations

import sys
from pathlib import Path


class CLIError(Exception):
    """An error with a message for the user (printed without traceback, exit code 2)."""


def progress_line(text: str) -> None:
    """A progress line on stderr: rewritten in place on a terminal, one line each otherwise."""
    stream = sys.stderr
    if stream.isatty():
        stream.write("\r" + text[:120].ljust(120))
    else:
        stream.write(text + "\n")
    stream.flush()


def line_break() -> str:
    """A newline that ends a carriage-return progress line on a terminal; nothing otherwise."""
    return "\n" if sys.stderr.isatty() else ""


def load_inference_model(weights: str | None, device: str = "auto"):
    """(LoadedModel, torch device, path) for ``--weights`` or the installed default model."""
    from .inference import resolve_device
    from .model import load_model_or_default

    loaded = load_model_or_default(weights)
    return loaded, resolve_device(device), Path(loaded.path)


def inference_settings(loaded, threshold: float | None = None, tta: bool | None = None):
    """``(PostProcessing, tta)`` from the checkpoint card's inference defaults, with overrides."""
    from .inference import card_settings

    if threshold is not None and not 0.0 < threshold < 1.0:
        raise CLIError(f"--threshold must be between 0 and 1 (exclusive); got {threshold}.")
    return card_settings(loaded, tta, None if threshold is None else {"threshold": float(threshold)})
