"""Checkpoint storage on any fsspec filesystem: paths, metadata, retention, the run lock.

``CheckpointPaths`` is the only code that formats checkpoint file names.
``CheckpointStore`` is a narrow layer over fsspec; it does not decide which
checkpoint to restore (the runner does) and never reads state files itself.

Layout::

    <checkpoint-dir>/<job>/chk-<n>/_metadata             written last, atomically
    <checkpoint-dir>/<job>/chk-<n>/<uid>-<subtask>.arrow
    <checkpoint-dir>/<job>/_lock                         held while a runner runs
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from onceflow.engine.errors import CheckpointDirectoryError, CheckpointStorageError, ConcurrentRunError
from onceflow.engine.faults import CRASH_POINTS

log = logging.getLogger("onceflow")

METADATA_FORMAT = 1
_CHK = re.compile(r"^chk-(\d+)$")
_MEMORY_LOCKS: set[str] = set()
_MEMORY_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class CheckpointPaths:
    """Formats every path under ``<root>/<job>``."""

    root: str
    job_name: str

    @property
    def job_dir(self) -> str:
        """The directory holding this job's checkpoints."""
        return f"{self.root.rstrip('/')}/{self.job_name}"

    def checkpoint_dir(self, checkpoint_id: int) -> str:
        """``chk-<n>``."""
        return f"{self.job_dir}/chk-{checkpoint_id}"

    def metadata(self, checkpoint_id: int) -> str:
        """``chk-<n>/_metadata``."""
        return f"{self.checkpoint_dir(checkpoint_id)}/_metadata"

    @staticmethod
    def state_file_name(uid: str, subtask_index: int) -> str:
        """``<uid>-<subtask>.arrow``."""
        return f"{uid}-{subtask_index}.arrow"

    def state_file(self, checkpoint_id: int, uid: str, subtask_index: int) -> str:
        """Full path of a state file."""
        return f"{self.checkpoint_dir(checkpoint_id)}/{self.state_file_name(uid, subtask_index)}"

    @property
    def lock(self) -> str:
        """The run lock file."""
        return f"{self.job_dir}/_lock"

    @staticmethod
    def parse_checkpoint_id(name: str) -> int | None:
        """Return n for a ``chk-<n>`` directory name, else None."""
        m = _CHK.match(name.rstrip("/").rsplit("/", 1)[-1])
        return int(m.group(1)) if m else None


def retention_plan(completed: list[int], retain: int) -> list[int]:
    """Return the completed checkpoint ids to delete so that ``retain`` newest remain."""
    if retain < 1:
        msg = f"retention must keep at least one checkpoint, got {retain!r}"
        raise ValueError(msg)
    return sorted(completed)[:-retain]


def files_safe_to_delete(doomed: dict[str, Any], retained: list[dict[str, Any]]) -> list[str]:
    """Return the files of a doomed checkpoint that no retained checkpoint references.

    Handle paths are relative to the job directory (``chk-<n>/<file>``), so a
    later checkpoint may reference an earlier one's file (incremental state).
    """
    referenced = {h["path"] for meta in retained for h in meta.get("handles", [])}
    return [h["path"] for h in doomed.get("handles", []) if h["path"] not in referenced]


class CheckpointStore:
    """Reads and writes one job's checkpoints on an fsspec filesystem."""

    def __init__(self, url: str, job_name: str) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            msg = f"checkpoint directory {url!r} cannot be used: {exc}"
            raise CheckpointDirectoryError(msg) from exc
        if isinstance(self.fs, LocalFileSystem):
            root = os.path.abspath(root)
        self.url = url
        self.paths = CheckpointPaths(root, job_name)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._lock_handle: Any = None

    # -- setup -----------------------------------------------------------

    def ensure_writable(self) -> None:
        """Create the job directory and prove it is writable, or raise a clear error."""
        probe = f"{self.paths.job_dir}/.probe-{os.getpid()}"
        try:
            self.fs.makedirs(self.paths.job_dir, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except OSError as exc:
            msg = (
                f"checkpoint directory {self.url!r} is not writable ({exc.strerror or exc}); "
                "pass a writable --checkpoint-dir"
            )
            raise CheckpointDirectoryError(msg) from exc

    def acquire_lock(self) -> None:
        """Make this process the only runner on this job's checkpoints.

        Local directories use ``flock`` (released by the kernel when the holder
        dies, even by ``kill -9``); ``memory://`` uses a process-wide registry.
        Other filesystems have no lock yet and log a warning.
        """
        if self.is_local:
            self.fs.makedirs(self.paths.job_dir, exist_ok=True)
            handle = open(self.paths.lock, "a+")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                msg = (
                    f"another onceflow run (pid {holder}) is using checkpoint directory "
                    f"{self.paths.job_dir!r}; wait for it to finish or stop it first"
                )
                raise ConcurrentRunError(msg) from exc
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            self._lock_handle = handle
        elif self.fs.protocol in ("memory", ("memory",)) or "memory" in self.fs.protocol:
            key = self.paths.job_dir
            with _MEMORY_LOCKS_GUARD:
                if key in _MEMORY_LOCKS:
                    msg = f"another run in this process is using checkpoint directory {key!r}"
                    raise ConcurrentRunError(msg)
                _MEMORY_LOCKS.add(key)
            self._lock_handle = key
        else:
            log.warning(
                "checkpoint storage %s has no run lock; make sure only one runner uses it",
                self.url,
            )

    def release_lock(self) -> None:
        """Release the run lock (idempotent)."""
        handle, self._lock_handle = self._lock_handle, None
        if handle is None:
            return
        if isinstance(handle, str):
            with _MEMORY_LOCKS_GUARD:
                _MEMORY_LOCKS.discard(handle)
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    # -- listing and metadata ------------------------------------------------

    def checkpoint_ids(self) -> list[int]:
        """Every ``chk-<n>`` directory, complete or not, in ascending order."""
        self.fs.invalidate_cache(self.paths.job_dir)
        try:
            entries = self.fs.ls(self.paths.job_dir, detail=False)
        except FileNotFoundError:
            return []
        ids = (CheckpointPaths.parse_checkpoint_id(e) for e in entries)
        return sorted(i for i in ids if i is not None)

    def read_metadata(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Return a checkpoint's metadata; None when it has none (it does not exist).

        Raises ``CheckpointStorageError`` when the file exists but is unreadable,
        so the caller can fall back to an older checkpoint with a warning.
        """
        path = self.paths.metadata(checkpoint_id)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(data)
        except ValueError as exc:
            msg = f"checkpoint metadata {path!r} is corrupt: {exc}"
            raise CheckpointStorageError(msg) from exc
        if not isinstance(meta, dict) or meta.get("checkpoint_id") != checkpoint_id:
            msg = f"checkpoint metadata {path!r} is corrupt: unexpected content"
            raise CheckpointStorageError(msg)
        return meta

    def write_metadata(self, checkpoint_id: int, meta: dict[str, Any]) -> None:
        """Write ``_metadata`` atomically: after this returns the checkpoint exists.

        Local: a temp file in the same directory, fsync, ``os.replace``, fsync of
        the directory. Object stores and ``memory://``: one put of the whole file.
        """
        data = json.dumps(meta, indent=1, sort_keys=True).encode()
        path = self.paths.metadata(checkpoint_id)
        if self.is_local:
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            tmp = f"{directory}/._metadata.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            self.fs.pipe_file(path, data)

    def delete_checkpoint(self, checkpoint_id: int, keep_files: set[str] | None = None) -> None:
        """Delete a checkpoint: its metadata first (so it stops existing), then its files."""
        chk_dir = self.paths.checkpoint_dir(checkpoint_id)
        try:
            self.fs.rm_file(self.paths.metadata(checkpoint_id))
        except FileNotFoundError:
            pass
        CRASH_POINTS.hit("mid_checkpoint_delete")
        try:
            entries = self.fs.ls(chk_dir, detail=False)
        except FileNotFoundError:
            return
        keep = keep_files or set()
        for entry in entries:
            name = entry.rsplit("/", 1)[-1]
            if name not in keep:
                try:
                    self.fs.rm_file(entry)
                except FileNotFoundError:
                    pass
        if not keep:
            try:
                self.fs.rm(chk_dir, recursive=True)
            except FileNotFoundError:
                pass

    def apply_retention(self, completed: dict[int, dict[str, Any]], retain: int) -> list[int]:
        """Delete completed checkpoints beyond the newest ``retain``; return the deleted ids."""
        doomed = retention_plan(list(completed), retain)
        retained = [completed[i] for i in completed if i not in doomed]
        for cid in doomed:
            safe = set(files_safe_to_delete(completed[cid], retained))
            referenced = {h["path"] for h in completed[cid].get("handles", [])} - safe
            names = {p.rsplit("/", 1)[-1] for p in referenced if p.startswith(f"chk-{cid}/")}
            self.delete_checkpoint(cid, keep_files=names)
        return doomed
