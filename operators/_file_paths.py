"""Names, hidden-file rules and path helpers shared by ``FileSource`` and ``FileSink``.

Names in a sink directory (``<n>`` is a checkpoint id)::

    part-<subtask:05d>-<n:010d><suffix>               committed output, the only visible files
    .<uid>-<subtask>-<attempt>-<seq>.inprogress       open transaction, since the last barrier
    .part-<subtask:05d>-<n:010d>.<attempt>.pending    pre-committed at barrier <n>, not yet visible
    _onceflow_sink.json                               which job and sink own the directory

Readers skip names that start with ``.`` or ``_``, so only committed output is
ever read.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from onceflow.operators.errors import (
    SourceNotFoundError,
)

FILE_DONE = -1
"""Offset recorded for a file read to its end, so a restore never reopens it."""

MARKER_NAME = "_onceflow_sink.json"
"""The file naming the job and sink that own a :class:`FileSink` directory."""

HIDDEN_PREFIXES = (".", "_")
GLOB_CHARS = frozenset("*?[")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
PENDING_NAME = re.compile(r"^\.part-(?P<subtask>\d+)-(?P<checkpoint>\d+)\.(?P<attempt>.+)\.pending$")
COMMITTED_NAME = re.compile(r"^part-(?P<subtask>\d+)-(?P<checkpoint>\d+)")


def is_hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIXES)


def safe_name(text: str) -> str:
    """Make a uid or attempt id usable inside a file name on every filesystem."""
    return UNSAFE_NAME_CHARS.sub("_", text)


# --------------------------------------------------------------------------- source


def visible_files_below(fs: AbstractFileSystem, root: str) -> list[str]:
    """List files under ``root`` recursively, skipping any hidden name on the way down."""
    prefix = root.rstrip("/") + "/"
    found = []
    for path in fs.find(root):
        relative = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if not any(is_hidden(part) for part in relative.split("/")):
            found.append(path)
    return found


def resolve_input(path: str, *, allow_empty: bool = False) -> tuple[AbstractFileSystem, list[str]]:
    """Expand a file, directory or glob into its readable files, sorted.

    ``allow_empty``: a directory or glob with no file yet is fine (a watched
    landing folder); the directory must still exist.

    Raises:
        SourceNotFoundError: nothing exists at ``path`` or it matches no readable file.
    """
    fs, root = fsspec.core.url_to_fs(path)
    if allow_empty:
        fs.invalidate_cache()
    if fs.isfile(root):
        files = [root]
    elif fs.isdir(root):
        files = visible_files_below(fs, root)
    elif GLOB_CHARS.intersection(root):
        files = []
        for match, info in fs.glob(root, detail=True).items():
            if is_hidden(posixpath.basename(match.rstrip("/"))):
                continue
            if info.get("type") == "directory":
                files.extend(visible_files_below(fs, match))
            else:
                files.append(match)
    else:
        msg = f"FileSource input {path!r} does not exist; check the path (or the -p parameter)"
        raise SourceNotFoundError(msg)
    if not files and not allow_empty:
        msg = (
            f"FileSource input {path!r} matches no readable file (names starting with "
            f"'.' or '_' are skipped); check the path or glob"
        )
        raise SourceNotFoundError(msg)
    return fs, sorted(set(files))


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when a run found it: size, and modification time and etag where known.

    Local files have ``mtime``; object stores an ``ETag`` and a last-modified
    time; ``memory://`` a creation time. Two identities differ if any field
    known on both sides differs.
    """

    size: int
    mtime: float | str | None = None
    etag: str | None = None

    @classmethod
    def of(cls, info: dict[str, Any]) -> FileIdentity:
        """Return the identity in an fsspec ``info()`` dict."""
        stamp = next((info[k] for k in _MTIME_KEYS if info.get(k) is not None), None)
        if isinstance(stamp, datetime):
            stamp = stamp.isoformat()
        elif stamp is not None and not isinstance(stamp, (int, float)):
            stamp = str(stamp)
        etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k)), None)
        return cls(int(info.get("size") or 0), stamp, etag)

    @classmethod
    def from_state(cls, entry: dict[str, Any]) -> FileIdentity | None:
        """Return the identity a snapshot recorded, or None for a snapshot of offsets only."""
        if "size" not in entry:
            return None
        return cls(int(entry["size"]), entry.get("mtime"), entry.get("etag"))

    def differences(self, now: FileIdentity) -> list[str]:
        """Return how ``now`` differs from this identity, e.g. ``["size 120 -> 150"]``."""
        found = []
        for name in ("size", "mtime", "etag"):
            was, is_ = getattr(self, name), getattr(now, name)
            if was is not None and is_ is not None and was != is_:
                found.append(f"{name} {was!r} -> {is_!r}")
        return found


_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created")
_ETAG_KEYS = ("ETag", "etag", "md5Hash")
