"""Fault injection shared by the tests and docs/bad_input_table.py (not used by the plugin itself)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class _DiskFullFile:
    """A file whose writes store half of what they are given, then fail as a full disk does."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


@contextlib.contextmanager
def disk_full_on_atomic_writes() -> Iterator[None]:
    """Inside the block every atomic write (``io.atomic_write``: temporary file + rename) fails half-way
    with ENOSPC, as on a full disk."""
    real_fdopen = os.fdopen
    os.fdopen = lambda fd, *a, **k: _DiskFullFile(real_fdopen(fd, *a, **k))
    try:
        yield
    finally:
        os.fdopen = real_fdopen
