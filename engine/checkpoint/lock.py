"""The run lock: at most one runner writes a job's checkpoints at a time.

Two runners on one checkpoint directory would both pick ``chk-<n+1>`` and
overwrite each other's state files, so the runner holds this lock for the
whole run. How it is held depends on the filesystem:

- local directories: ``flock`` on ``<job>/_lock``, released by the kernel when
  the holder dies, even by ``kill -9``;
- ``memory://``: a process-wide registry (tests run several runners in one
  process);
- object stores (``s3://`` and any other fsspec store): a lease, the object
  ``<job>/_lease`` naming its owner (a random token, host and pid) and an
  expiry that the holder renews from a background thread (see
  :class:`ObjectStoreLease`). The coordinator re-checks the lease right before
  it writes ``_metadata`` (:meth:`RunLock.verify`), so a stale runner that
  lost it (paused past its expiry, then taken over) fails instead of
  completing a checkpoint.

``ONCEFLOW_LEASE_SECONDS`` sets the lease's lifetime (default 30 s); it is
renewed every third of that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from onceflow.engine.errors import ConcurrentRunError

__all__ = ["DEFAULT_LEASE_SECONDS", "LEASE_SECONDS_ENV", "LeaseRecord", "ObjectStoreLease", "RunLock"]

log = logging.getLogger("onceflow")

_MEMORY_LOCKS: set[str] = set()
_MEMORY_LOCKS_GUARD = threading.Lock()

LEASE_SECONDS_ENV = "ONCEFLOW_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0


def lease_seconds() -> float:
    """Return the lease lifetime: ``ONCEFLOW_LEASE_SECONDS`` or :data:`DEFAULT_LEASE_SECONDS`."""
    text = os.environ.get(LEASE_SECONDS_ENV, "")
    try:
        value = float(text) if text else DEFAULT_LEASE_SECONDS
    except ValueError:
        value = 0.0
    if not value > 0:
        msg = f"{LEASE_SECONDS_ENV} must be a positive number of seconds, got {text!r}"
        raise ValueError(msg)
    return value


class RunLock:
    """Makes one process the only runner on ``job_dir``; ``acquire``, ``verify``, then ``release``."""

    def __init__(
        self,
        fs: Any,
        url: str,
        job_dir: str,
        lock_path: str,
        *,
        local: bool,
        lease_path: str,
    ) -> None:
        self._fs = fs
        self._url = url
        self._job_dir = job_dir
        self._lock_path = lock_path
        self._lease_path = lease_path
        self._local = local
        self._held: IO[str] | str | ObjectStoreLease | None = None

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
            lease = ObjectStoreLease(self._fs, self._lease_path, self._job_dir, ttl=lease_seconds())
            lease.acquire()
            self._held = lease

    def verify(self, purpose: str) -> None:
        """Raise ``ConcurrentRunError`` unless this process still holds the lock.

        Called right before ``purpose`` (e.g. "completing checkpoint 7"). A
        flock or the in-process registry cannot be lost while held; a lease can
        (see :meth:`ObjectStoreLease.confirm`).
        """
        if isinstance(self._held, ObjectStoreLease):
            self._held.confirm(purpose)

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
        if isinstance(held, ObjectStoreLease):
            held.release()
            return
        if isinstance(held, str):
            with _MEMORY_LOCKS_GUARD:
                _MEMORY_LOCKS.discard(held)
            return
        try:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        finally:
            held.close()


@dataclass(frozen=True)
class LeaseRecord:
    """The content of ``<job>/_lease``: who holds it and until when (Unix time)."""

    owner: str
    host: str
    pid: int
    expires: float

    def encode(self) -> bytes:
        """Return the object's bytes (JSON)."""
        return json.dumps(
            {"owner": self.owner, "host": self.host, "pid": self.pid, "expires": self.expires},
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        """Parse :meth:`encode` output; None for damaged content (treated as an expired lease)."""
        try:
            raw = json.loads(data)
            record = cls(str(raw["owner"]), str(raw["host"]), int(raw["pid"]), float(raw["expires"]))
        except (ValueError, TypeError, KeyError):
            return None
        return record

    @property
    def holder(self) -> str:
        """``host, pid N``: the holder as messages name it."""
        return f"{self.host}, pid {self.pid}"

    @property
    def expiry(self) -> str:
        """The expiry as an ISO 8601 UTC time, to the second."""
        return datetime.fromtimestamp(self.expires, timezone.utc).isoformat(timespec="seconds")


class _Conflict(Exception):
    """A conditional write lost: the lease object changed since it was read."""


class ObjectStoreLease:
    """A lease on a job's checkpoint directory in an object store.

    Protocol:

    - **acquire**: read ``_lease``; a live lease (not expired) of another owner
      refuses the run, unless its holder is a process of this host that no
      longer exists (a run killed with ``kill -9`` is resumed at once, not
      after the expiry). Otherwise write a new lease with this runner's
      token: on S3 conditionally (``If-None-Match: *`` when there is none,
      ``If-Match: <etag>`` of the expired one read), so of two runners racing
      for it exactly one wins; then read it back and check the token.
    - **renew**: a daemon thread rewrites the expiry every third of the
      lifetime, conditionally on the etag just read and only while the token
      is still ours. Finding another token (or none) marks the lease lost.
    - **confirm** (fencing): the coordinator calls it right before writing
      ``_metadata``: a fresh read, a renewal on the read's etag and a read-back.
      A runner that was paused past its expiry and taken over fails here
      instead of completing a checkpoint.
    - **release**: delete ``_lease`` if it is still ours.

    What remains: a write to ``_metadata`` is a separate object, so a stale
    runner that passed ``confirm`` and is then paused for longer than the
    lifetime *before* its put lands can still write one ``_metadata`` after a
    takeover; the lifetime (default 30 s) bounds how long such a pause must be.
    Stores without conditional writes (not S3) rely on write, then read back:
    two runners taking over an expired lease in the same instant may both
    read back their own token; the next renewal or ``confirm`` (before any
    ``_metadata``) finds the one that lost. Expiry compares wall clocks across
    hosts, so hosts must agree on the time to within a fraction of the lifetime.
    """

    def __init__(self, fs: Any, path: str, job_dir: str, *, ttl: float) -> None:
        self._fs = fs
        self._path = path
        self._job_dir = fs.unstrip_protocol(job_dir)
        self._where = fs.unstrip_protocol(path)
        self._ttl = ttl
        self._conditional = any(p in ("s3", "s3a") for p in _protocols(fs))
        self._token = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._guard = threading.Lock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire and release ---------------------------------------------------

    def acquire(self) -> None:
        """Take the lease or raise ``ConcurrentRunError`` naming the live holder."""
        with self._guard:
            for _ in range(5):
                current, etag, exists = self._read()
                if current is not None and current.owner != self._token and self._live(current):
                    msg = (
                        f"another onceflow run ({current.holder}) holds the lease {self._where!r} on "
                        f"checkpoint directory {self._job_dir!r}; wait for it to finish or, if it died, "
                        f"retry after {current.expiry}"
                    )
                    raise ConcurrentRunError(msg)
                if current is not None and current.owner != self._token:
                    log.warning(
                        "taking over the expired lease of checkpoint directory %r from %s",
                        self._job_dir,
                        current.holder,
                    )
                try:
                    self._write(etag if exists else None, create=not exists)
                except _Conflict:
                    continue
                mine, _, _ = self._read()
                if mine is not None and mine.owner == self._token:
                    break
            else:
                msg = (
                    f"could not take the lease {self._where!r} on checkpoint directory {self._job_dir!r}: "
                    "other runners kept changing it; make sure only one runner uses it"
                )
                raise ConcurrentRunError(msg)
        self._thread = threading.Thread(target=self._renew_loop, name="onceflow-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (best effort)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._guard:
            try:
                current, _, _ = self._read()
                if current is not None and current.owner == self._token:
                    self._fs.rm_file(self._path)
            except OSError as exc:
                log.warning("could not release the lease %r: %s; it expires by itself", self._where, exc)

    # -- renewal and fencing ---------------------------------------------------

    def confirm(self, purpose: str) -> None:
        """Raise ``ConcurrentRunError`` unless the lease is still ours; renew it on the way."""
        with self._guard:
            if self._lost is None:
                self._renew()
            if self._lost is not None:
                msg = f"{self._lost}; stopping without {purpose}"
                raise ConcurrentRunError(msg)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            with self._guard:
                if self._lost is not None:
                    return
                try:
                    self._renew()
                except OSError as exc:
                    log.warning("could not renew the lease %r: %s; retrying", self._where, exc)
            if self._lost is not None:
                log.error("%s", self._lost)
                return

    def _renew(self) -> None:
        # Caller holds self._guard.
        for _ in range(3):
            current, etag, exists = self._read()
            if current is None or current.owner != self._token:
                who = f"now held by another onceflow run ({current.holder})" if current else "it is gone"
                self._lost = (
                    f"this run lost its lease {self._where!r} on checkpoint directory {self._job_dir!r} "
                    f"({who}): another runner took over while this one was not renewing it"
                )
                return
            try:
                self._write(etag if exists else None, create=not exists)
            except _Conflict:
                continue
            return

    # -- I/O -----------------------------------------------------------------------

    def _live(self, record: LeaseRecord) -> bool:
        if record.expires <= time.time():
            return False
        if record.host == self._host:
            try:
                os.kill(record.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    def _read(self) -> tuple[LeaseRecord | None, str | None, bool]:
        """Return the lease (None if absent or damaged), its etag and whether the object exists."""
        self._fs.invalidate_cache(self._path)
        etag: str | None = None
        try:
            if self._conditional:
                etag = self._fs.info(self._path).get("ETag")
            data = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None, None, False
        return LeaseRecord.decode(data), etag, True

    def _write(self, etag: str | None, *, create: bool) -> None:
        """Write this runner's lease with a fresh expiry, conditionally where the store can."""
        record = LeaseRecord(self._token, self._host, os.getpid(), time.time() + self._ttl)
        data = record.encode()
        if not self._conditional:
            self._fs.pipe_file(self._path, data)
            return
        try:
            if create:
                self._fs.pipe_file(self._path, data, mode="create")
            else:
                self._fs.pipe_file(self._path, data, IfMatch=etag)
        except (FileExistsError, FileNotFoundError) as exc:
            raise _Conflict from exc
        except OSError as exc:
            if "pre-condition" in str(exc) or "Precondition" in str(exc):
                raise _Conflict from exc
            raise


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
