"""``FileSink``: lines to files that become visible only when their checkpoint completes.

Two-phase commit over file renames, on any fsspec filesystem; the naming
scheme is described in :mod:`onceflow.operators._file_paths`. The engine calls the
life-cycle hooks of :mod:`onceflow.operators.base`; this module schedules nothing.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from onceflow.operators._file_paths import (
    COMMITTED_NAME,
    MARKER_NAME,
    PENDING_NAME,
    fsync_dir,
    safe_name,
)
from onceflow.operators.base import (
    Capability,
    RuntimeContext,
    Sink,
    TwoPhaseCommitWriter,
    describe_callable,
)
from onceflow.operators.errors import (
    SinkCommitError,
    SinkOutputExistsError,
    SinkOwnershipError,
)

__all__ = ["FileSink", "FileSinkWriter", "read_committed_lines"]

log = logging.getLogger("onceflow")


class FileSink(Sink):
    r"""Write records as lines to files that become visible only when their checkpoint completes.

    Each subtask writes at most one file per checkpoint,
    ``part-<subtask:05d>-<checkpoint_id:010d><suffix>``; a checkpoint in which a
    subtask wrote nothing creates no file. Works on every fsspec filesystem; on
    the local one, renames are atomic and fsynced.

    The directory is claimed by a marker (``_onceflow_sink.json``) naming the
    job and sink uid: another job or sink cannot write into it, and a fresh run
    refuses to mix with an earlier run's output unless ``--fresh`` is given.

    Args:
        directory: the output directory, a local path or any fsspec URL.
        encoder: turns a record into one line of text (without ``"\n"``).
        suffix: appended to committed file names, e.g. ``".csv"``.
    """

    def __init__(self, directory: str, *, encoder: Callable[[Any], str] = str, suffix: str = "") -> None:
        if "/" in suffix:
            msg = f"FileSink({directory!r}): suffix {suffix!r} must not contain '/'"
            raise ValueError(msg)
        self.directory = directory
        self.encoder = encoder
        self.suffix = suffix

    @property
    def shared_across_processes(self) -> bool:
        """False for ``memory://``: every process has its own, so worker processes cannot share it."""
        protocol, _ = fsspec.core.split_protocol(self.directory)
        return protocol != "memory"

    def create_writer(self, subtask_index: int, parallelism: int) -> FileSinkWriter:
        """Return the writer of one subtask."""
        return FileSinkWriter(self)

    def __repr__(self) -> str:
        return f"FileSink({self.directory!r})"


class FileSinkWriter(TwoPhaseCommitWriter):
    """One subtask's transactional writer of a :class:`FileSink`.

    Cost: per batch one encode-and-join and one ``write``; per record one call
    of the encoder.
    """

    capabilities = Capability.TWO_PHASE_COMMIT

    def __init__(self, sink: FileSink) -> None:
        super().__init__()
        self._sink = sink
        self._fs: AbstractFileSystem = LocalFileSystem()
        self._root = ""
        self._local = False
        self._handle: IO[bytes] | None = None
        self._inprogress_path = ""
        self._seq = 0

    # ------------------------------------------------------------ life cycle

    def open(self, ctx: RuntimeContext) -> None:
        """Claim the directory, then on a fresh start clear what earlier runs left.

        Steps:
            1. Create the directory and check the ownership marker (all subtasks).
            2. Fresh start only: refuse, or with ``--fresh`` delete (subtask 0),
               an earlier run's committed output; subtask 0 aborts hidden leftovers.

        Raises:
            SinkOwnershipError: the directory belongs to another job or sink, or
                holds ``part-*`` files without a marker.
            SinkOutputExistsError: a fresh start found committed output of this
                job and sink without ``ctx.overwrite_output``.
        """
        super().open(ctx)
        self._fs, self._root = fsspec.core.url_to_fs(self._sink.directory)
        self._root = self._root.rstrip("/") or "/"
        self._local = isinstance(self._fs, LocalFileSystem)
        # Step 1
        self._fs.makedirs(self._root, exist_ok=True)
        names = self._list_names()
        self._claim_directory(names)
        # Step 2
        if ctx.restored_checkpoint_id is None:
            self._start_fresh(names)

    def _claim_directory(self, names: list[str]) -> None:
        ctx = self.ctx
        directory = self._sink.directory
        if MARKER_NAME in names:
            marker = self._path(MARKER_NAME)
            try:
                owner = json.loads(self._fs.cat_file(marker))
                found_job, found_sink = owner["job"], owner["sink"]
            except (ValueError, KeyError, TypeError) as exc:
                msg = (
                    f"FileSink directory {directory!r} has an unreadable ownership marker "
                    f"{marker!r}; write to another directory, or delete the marker if the "
                    f"directory's contents belong to this job"
                )
                raise SinkOwnershipError(msg) from exc
            if (found_job, found_sink) != (ctx.job_name, ctx.uid):
                msg = (
                    f"FileSink directory {directory!r} belongs to job {found_job!r}, sink "
                    f"{found_sink!r} (per {MARKER_NAME}), not to job {ctx.job_name!r}, sink "
                    f"{ctx.uid!r}; write to another directory (nothing was changed)"
                )
                raise SinkOwnershipError(msg)
            return
        foreign = [name for name in names if name.startswith("part-")]
        if foreign:
            msg = (
                f"FileSink directory {directory!r} already holds {len(foreign)} part-* files "
                f"(e.g. {sorted(foreign)[0]!r}) but no {MARKER_NAME}, so their owner is unknown; "
                f"write to another directory (nothing was changed)"
            )
            raise SinkOwnershipError(msg)
        if ctx.subtask_index == 0:
            marker_data = json.dumps({"job": ctx.job_name, "sink": ctx.uid}).encode()
            self._write_atomically(MARKER_NAME, marker_data)

    def _start_fresh(self, names: list[str]) -> None:
        committed = sorted(name for name in names if name.startswith("part-"))
        if committed and not self.ctx.overwrite_output:
            msg = (
                f"FileSink directory {self._sink.directory!r} already holds output from an "
                f"earlier run of job {self.ctx.job_name!r} ({len(committed)} part-* files) and "
                f"there is no checkpoint to resume from; rerun with --fresh to replace it, or "
                f"delete the directory"
            )
            raise SinkOutputExistsError(msg)
        if self.ctx.subtask_index != 0:
            return
        if committed:
            log.info(
                "FileSink %s: --fresh deletes %d part files of an earlier run",
                self._sink.directory,
                len(committed),
            )
            self._fs.rm([self._path(name) for name in committed])
        self.abort_leftovers([])

    def write(self, records: list) -> None:
        r"""Append ``encoder(record) + "\n"`` for every record to the in-progress file."""
        try:
            text = "\n".join(map(self._sink.encoder, records))
        except TypeError as exc:
            msg = (
                f"FileSink({self._sink.directory!r}) cannot encode a batch with encoder "
                f"{describe_callable(self._sink.encoder)}: {exc}; the encoder must return a str"
            )
            raise TypeError(msg) from exc
        handle = self._handle if self._handle is not None else self._open_inprogress()
        handle.write((text + "\n").encode("utf-8"))

    def _open_inprogress(self) -> IO[bytes]:
        ctx = self.ctx
        name = f".{safe_name(ctx.uid)}-{ctx.subtask_index}-{safe_name(ctx.attempt_id)}-{self._seq}.inprogress"
        self._seq += 1
        self._inprogress_path = self._path(name)
        self._handle = self._fs.open(self._inprogress_path, "wb")
        return self._handle

    def pre_commit(self, checkpoint_id: int) -> dict[str, str] | None:
        """Close the in-progress file and rename it to a hidden pending name.

        Returns:
            ``{"pending": path, "final": path}``, or None when nothing was
            written since the last barrier (no empty files).
        """
        handle = self._handle
        if handle is None:
            return None
        self._handle = None
        handle.flush()
        if self._local:
            os.fsync(handle.fileno())
        handle.close()
        stem = f"part-{self.ctx.subtask_index:05d}-{checkpoint_id:010d}"
        pending = self._path(f".{stem}.{safe_name(self.ctx.attempt_id)}.pending")
        final = self._path(stem + self._sink.suffix)
        if self._local:
            os.replace(self._inprogress_path, pending)
            fsync_dir(self._root)
        else:
            self._fs.mv(self._inprogress_path, pending)
        self.ctx.crash_point("after_pending_rename_before_commit_rename")
        return {"pending": pending, "final": final}

    def commit(self, committable: dict[str, str]) -> bool:
        """Make a pending file visible under its final name; idempotent; True if it did.

        The three cases:
            1. The pending file exists: move it to the final name (local: atomic
               ``os.replace`` and a directory fsync; elsewhere: copy unless the
               final file already exists from an interrupted commit, then delete).
            2. Only the final file exists: an earlier attempt committed it; nothing to do.
            3. Neither exists: the output of a completed checkpoint is gone.

        Raises:
            SinkCommitError: case 3, data loss; never skipped silently.
        """
        pending, final = committable["pending"], committable["final"]
        fs = self._fs
        if fs.exists(pending):
            # Case 1
            self.ctx.crash_point("mid_commit")
            if self._local:
                os.replace(pending, final)
                fsync_dir(self._root)
            else:
                if not fs.exists(final):
                    fs.copy(pending, final)
                fs.rm(pending)
            return True
        if fs.exists(final):
            # Case 2
            return False
        # Case 3
        msg = (
            f"FileSink({self._sink.directory!r}): neither the pending file {pending!r} nor the "
            f"committed file {final!r} exists, so output of a completed checkpoint was lost; "
            f"check for cleanup scripts or lifecycle rules touching the directory, then rerun "
            f"with --fresh"
        )
        raise SinkCommitError(msg)

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Delete what attempts that did not reach a completed checkpoint left behind.

        Deleted, except files of the current attempt:
            1. this sink's ``.inprogress`` files;
            2. ``.pending`` files that no committable in ``keep`` references;
            3. committed ``part-*`` files of a checkpoint newer than the restored
               one: they exist only if that checkpoint was lost and the restore
               fell back to an older one, whose replay will write them again.
        """
        ctx = self.ctx
        attempt = safe_name(ctx.attempt_id)
        inprogress = re.compile(rf"^\.{re.escape(safe_name(ctx.uid))}-\d+-(?P<attempt>.+)-\d+\.inprogress$")
        kept = {c["pending"] for c in keep if isinstance(c, dict) and "pending" in c}
        restored = ctx.restored_checkpoint_id
        doomed: list[str] = []
        for name in self._list_names():
            path = self._path(name)
            # Case 1
            match = inprogress.match(name)
            if match:
                if match["attempt"] != attempt:
                    doomed.append(path)
                continue
            # Case 2
            match = PENDING_NAME.match(name)
            if match:
                if match["attempt"] != attempt and path not in kept:
                    doomed.append(path)
                continue
            # Case 3
            match = COMMITTED_NAME.match(name)
            if match and restored is not None and int(match["checkpoint"]) > restored:
                log.warning(
                    "FileSink %s: deleting %s, committed by checkpoint %s which was lost; "
                    "the restore from checkpoint %s writes its records again",
                    self._sink.directory,
                    name,
                    int(match["checkpoint"]),
                    restored,
                )
                doomed.append(path)
        if doomed:
            self._fs.rm(doomed)

    def close(self) -> None:
        """Close the in-progress file without committing it; a later restore aborts it."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except Exception:  # close must not raise; the file is uncommitted anyway
                log.debug("closing %s failed", self._inprogress_path, exc_info=True)

    # ------------------------------------------------------------ helpers

    def _path(self, name: str) -> str:
        return posixpath.join(self._root, name)

    def _list_names(self) -> list[str]:
        self._fs.invalidate_cache(self._root)
        try:
            paths = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []  # object stores have no empty directories: an empty prefix "does not exist"
        return [posixpath.basename(p.rstrip("/")) for p in paths]

    def _write_atomically(self, name: str, data: bytes) -> None:
        """Write a small file so that readers see all of it or nothing."""
        path = self._path(name)
        if not self._local:
            self._fs.pipe_file(path, data)  # object stores publish an object at once
            return
        temp = self._path(f".{name}.{safe_name(self.ctx.attempt_id)}.tmp")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(self._root)


def read_committed_lines(directory: str) -> list[str]:
    r"""Return the lines of every committed ``part-*`` file in ``directory``, files in name order.

    Hidden files (in-progress, pending, the marker) are never read, so this is
    what a downstream reader sees. Lines are returned without their ``"\n"``.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
    """
    fs, root = fsspec.core.url_to_fs(directory)
    fs.invalidate_cache(root)
    names = sorted(
        name
        for name in (posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
        if name.startswith("part-")
    )
    lines: list[str] = []
    for name in names:
        text = fs.cat_file(posixpath.join(root, name)).decode("utf-8")
        if text:
            lines.extend(text.removesuffix("\n").split("\n"))
    return lines
