"""One job's checkpoints on any fsspec filesystem: listing, ``_metadata`` I/O, deletion, the run lock.

``CheckpointStore`` is a narrow layer over fsspec. It decides nothing: which
checkpoint to restore is :mod:`~onceflow.engine.checkpoint.restore`'s call,
what to delete is :mod:`~onceflow.engine.checkpoint.retention`'s, and the
``_metadata`` format is :mod:`~onceflow.engine.checkpoint.metadata`'s. It
never reads state files itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from onceflow.engine.checkpoint.lock import RunLock
from onceflow.engine.checkpoint.metadata import CheckpointMetadata, decode_metadata, encode_metadata
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.retention import Deletion, shared_to_delete
from onceflow.engine.errors import CheckpointDirectoryError
from onceflow.engine.faults import CRASH_POINTS
from onceflow.state_backends._durable import fsync_dir, fsync_file, sync_filesystem

__all__ = ["CheckpointStore", "list_jobs"]


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        msg = f"checkpoint directory {url!r} cannot be used: {exc}"
        raise CheckpointDirectoryError(msg) from exc
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    return fs, root


def list_jobs(url: str) -> list[str]:
    """Return the names of the jobs with a directory under checkpoint directory ``url``, sorted."""
    fs, root = _filesystem(url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in entries if fs.isdir(p))


class CheckpointStore:
    """Reads and writes one job's checkpoints on an fsspec filesystem."""

    def __init__(self, url: str, job_name: str) -> None:
        self.fs, root = _filesystem(url)
        self.url = url
        self.paths = CheckpointPaths(root, job_name)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._lock = RunLock(
            self.fs,
            url,
            self.paths.job_dir,
            self.paths.lock,
            local=self.is_local,
            lease_path=self.paths.lease,
        )

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
        """Make this process the only runner on this job's checkpoints (see :class:`RunLock`)."""
        self._lock.acquire()

    def verify_lock(self, purpose: str) -> None:
        """Raise ``ConcurrentRunError`` unless this process still holds the run lock (fencing).

        ``purpose`` completes the message ("completing checkpoint 7").
        """
        self._lock.verify(purpose)

    def release_lock(self) -> None:
        """Release the run lock (idempotent)."""
        self._lock.release()

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

    def read_metadata(self, checkpoint_id: int) -> CheckpointMetadata | None:
        """Return a checkpoint's metadata; None when it has none (it does not exist).

        The one reader of ``_metadata``. Raises ``CheckpointStorageError`` when the
        file exists but is damaged, so the caller can fall back to an older
        checkpoint with a warning (see :func:`decode_metadata`).
        """
        path = self.paths.metadata(checkpoint_id)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        return decode_metadata(data, checkpoint_id=checkpoint_id, where=path)

    def write_metadata(self, meta: CheckpointMetadata) -> None:
        """Write ``_metadata`` atomically: after this returns the checkpoint exists.

        The one writer of ``_metadata``. Local: the filesystem synced first (the
        state files it lists, see ``sync_filesystem``), then a temp file in the
        same directory, fsync, ``os.replace``, fsync of the directory. Object stores and
        ``memory://``: one put of the whole file, which they make visible at once.
        """
        path = self.paths.metadata(meta.checkpoint_id)
        if self.is_local:
            # The state files the checkpoint lists, written by every worker, reach the disk first.
            sync_filesystem(self.paths.job_dir)
        self._write_atomically(path, self.paths.metadata_temp(meta.checkpoint_id), encode_metadata(meta))

    # -- checkpoint id high-water mark ----------------------------------------------

    def read_checkpoint_id_mark(self) -> int:
        """Return the highest checkpoint id this run ever started (0 when none was, or after ``--fresh``).

        Raises:
            CheckpointDirectoryError: the mark exists but holds no checkpoint id.
        """
        path = self.paths.checkpoint_id_mark
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return 0
        text = data.decode("ascii", errors="replace").strip()
        if not text.isdigit():
            msg = (
                f"{path!r} is corrupt: expected the highest checkpoint id this run started, found "
                f"{text[:40]!r}. Delete it to let ids continue after the newest chk-<n> (a sink still "
                "refuses a restore behind what it committed), or rerun with --fresh to start over"
            )
            raise CheckpointDirectoryError(msg)
        return int(text)

    def write_checkpoint_id_mark(self, checkpoint_id: int) -> None:
        """Record ``checkpoint_id`` as the highest id started, atomically, before its sources snapshot."""
        data = f"{checkpoint_id}\n".encode("ascii")
        self._write_atomically(self.paths.checkpoint_id_mark, self.paths.checkpoint_id_mark_temp, data)

    def delete_checkpoint_id_mark(self) -> None:
        """Forget the highest id started (``--fresh``: ids start again at 1)."""
        try:
            self.fs.rm_file(self.paths.checkpoint_id_mark)
        except FileNotFoundError:
            pass

    def _write_atomically(self, path: str, tmp: str, data: bytes) -> None:
        """Local: write ``tmp``, fsync, ``os.replace`` onto ``path``, fsync the directory.

        Object stores and ``memory://``: one put of the whole file, which they make visible at once.
        """
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            fsync_file(f)
        os.replace(tmp, path)
        fsync_dir(directory)

    # -- deletion --------------------------------------------------------------

    def delete_checkpoint(self, checkpoint_id: int, keep_files: Iterable[str] = ()) -> None:
        """Delete a checkpoint: its metadata first (so it stops existing), then its files.

        ``keep_files`` are names inside ``chk-<n>`` that another checkpoint still
        references; with any kept, the directory stays too.
        """
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
        keep = set(keep_files)
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

    def delete_checkpoints(self, deletions: Iterable[Deletion]) -> None:
        """Carry out a plan of :func:`~onceflow.engine.checkpoint.retention.plan_deletions`, in order."""
        for deletion in deletions:
            self.delete_checkpoint(deletion.checkpoint_id, keep_files=deletion.keep_files)

    def collect_shared(self, referenced: frozenset[str], *, written_up_to: int | None = None) -> int:
        """Delete the shared files no surviving checkpoint references (``retention.shared_to_delete``).

        Called after :meth:`delete_checkpoints`; returns how many files went.
        """
        shared_dir = self.paths.shared_dir
        self.fs.invalidate_cache(shared_dir)
        try:
            entries = self.fs.ls(shared_dir, detail=False)
        except FileNotFoundError:
            return 0
        listed = [f"{CheckpointPaths.SHARED}/{e.rstrip('/').rsplit('/', 1)[-1]}" for e in entries]
        doomed = shared_to_delete(listed, referenced, written_up_to=written_up_to)
        for relative in doomed:
            CRASH_POINTS.hit("mid_shared_delete")
            try:
                self.fs.rm_file(self.paths.resolve(relative))
            except FileNotFoundError:
                pass
        return len(doomed)
