"""Durable writes on a local disk: what ``kill -9`` never tests and a power loss needs.

A write survives ``kill -9`` as soon as it reaches the OS page cache; it
survives a power loss only once fsynced, and a new or renamed file's name only
once its directory is fsynced too. Every file a checkpoint or a commit
depends on (state files, ``_metadata``, sink files) goes through these on a
local filesystem; object stores and ``memory://`` make a written object
durable and visible at once, so nothing is needed there.
"""

from __future__ import annotations

import os
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

__all__ = ["fsync_dir", "fsync_file", "is_local"]


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether ``fs`` writes to the local disk (the only case that needs fsyncs)."""
    return isinstance(fs, LocalFileSystem)


def fsync_file(handle: Any) -> None:
    """Flush ``handle`` (an open local file, fsspec's or Python's) and fsync its data to the disk."""
    handle.flush()
    os.fsync(handle.fileno())


def fsync_dir(directory: str) -> None:
    """Make a new or renamed entry of ``directory`` durable: POSIX persists names only with the directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
