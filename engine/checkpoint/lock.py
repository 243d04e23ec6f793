"""The run lock: at most one runner writes a job's checkpoints at a time.

Two runners on one checkpoint directory would both pick ``chk-<n+1>`` and
overwrite each other's state files, so the runner holds this lock for the
whole run. How it is held depends on the filesystem:

- local directories: ``flock`` on ``<job>/_lock``, released by the kernel when
  the holder dies, even by ``kill -9``;
- ``memory://``: a process-wide registry (tests run several runners in one
  process);
- object stores: nothing yet, a warning. A lease (a lock object with an
  expiry the holder renews) belongs here, behind the same two methods.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from typing import IO, Any

from onceflow.engine.errors import ConcurrentRunError

__all__ = ["RunLock"]

log = logging.getLogger("onceflow")

_MEMORY_LOCKS: set[str] = set()
_MEMORY_LOCKS_GUARD = threading.Lock()


class RunLock:
    """Makes one process the only runner on ``job_dir``; ``acquire`` then ``release``."""

    def __init__(self, fs: Any, url: str, job_dir: str, lock_path: str, *, local: bool) -> None:
        self._fs = fs
        self._url = url
        self._job_dir = job_dir
        self._lock_path = lock_path
        self._local = local
        self._held: IO[str] | str | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``ConcurrentRunError`` naming the holder."""
        if self._local:
            self._acquire_flock()
        elif "memory" in self._fs.protocol:
            key = self._job_dir
            with _MEMORY_LOCKS_GUARD:
                if key in _MEMORY_LOCKS:
                    msg = f"another run in this process is using checkpoint directory {key!r}"
                    raise ConcurrentRunError(msg)
                _MEMORY_LOCKS.add(key)
            self._held = key
        else:
            log.warning(
                "checkpoint storage %s has no run lock; make sure only one runner uses it",
                self._url,
            )

    def _acquire_flock(self) -> None:
        self._fs.makedirs(self._job_dir, exist_ok=True)
        handle = open(self._lock_path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            msg = (
                f"another onceflow run (pid {holder}) is using checkpoint directory "
                f"{self._job_dir!r}; wait for it to finish or stop it first"
            )
            raise ConcurrentRunError(msg) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._held = handle

    def release(self) -> None:
        """Release the lock (idempotent)."""
        held, self._held = self._held, None
        if held is None:
            return
        if isinstance(held, str):
            with _MEMORY_LOCKS_GUARD:
                _MEMORY_LOCKS.discard(held)
            return
        try:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        finally:
            held.close()
