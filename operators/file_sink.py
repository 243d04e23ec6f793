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
from onceflow.operators.formats import (
    ParquetPart,
    PartitionBy,
    RowEncoder,
    check_format,
    default_row_group_size,
    split_by_partition,
)
from onceflow.state_backends._durable import fsync_dir, fsync_file

__all__ = ["FileSink", "FileSinkWriter", "read_committed_lines"]

log = logging.getLogger("onceflow")


class FileSink(Sink):
    r"""Write records to files that become visible only when their checkpoint completes.

    Each subtask writes at most one file per checkpoint (and partition),
    ``[name=value/...]part-<subtask:05d>-<checkpoint_id:010d><suffix>``; a
    checkpoint in which a subtask wrote nothing creates no file. Files being
    written have hidden names (a leading ``.``), which pyarrow.dataset, DuckDB
    and Spark skip. Works on every fsspec filesystem; on the local one,
    renames are atomic and fsynced.

    The directory is claimed by a marker (``_onceflow_sink.json``) naming the
    job and sink uid: another job or sink cannot write into it, and a fresh run
    refuses to mix with an earlier run's output unless ``--fresh`` is given.

    Args:
        directory: the output directory, a local path or any fsspec URL.
        format: ``"text"`` (a line per record, by ``encoder``), ``"csv"``
            (dict records; header from ``columns`` or each file's first
            record), ``"jsonl"`` (a JSON value per line) or ``"parquet"``
            (dict records or Arrow batches, through pyarrow).
        encoder: text only: turns a record into one line of text (without ``"\n"``).
        suffix: appended to committed file names; by default ``.csv``,
            ``.jsonl``, ``.parquet`` (nothing for text).
        partition_by: Hive-style folders ``name=value/``: a list of columns of
            dict records or Arrow batches (the columns then live in the folder
            names only, as Hive readers expect), or a function ``record ->
            {name: value}``.
        columns: csv only: the columns, in order (records lacking one get an
            empty field; an extra key is an error).
        schema: parquet only: the ``pyarrow.Schema`` of the files (default:
            the fields of the first batch's records; a record lacking one gets
            null, a record with a field the schema lacks is an error).
        row_group_size: parquet only: rows per row group (default 131,072).
    """

    def __init__(
        self,
        directory: str,
        *,
        format: str = "text",  # noqa: A002 - the word users expect, as in pandas and pyarrow
        encoder: Callable[[Any], str] = str,
        suffix: str | None = None,
        partition_by: PartitionBy = None,
        columns: list[str] | None = None,
        schema: Any = None,
        row_group_size: int | None = None,
    ) -> None:
        owner = f"FileSink({directory!r})"
        check_format(owner, format)
        suffix = _SUFFIXES[format] if suffix is None else suffix
        if "/" in suffix:
            msg = f"{owner}: suffix {suffix!r} must not contain '/'"
            raise ValueError(msg)
        if partition_by is not None and not callable(partition_by):
            if isinstance(partition_by, str) or not all(isinstance(n, str) for n in partition_by):
                msg = (
                    f"{owner}: partition_by must be a list of column names or a function, "
                    f"not {partition_by!r}"
                )
                raise ValueError(msg)
            if format == "text":
                msg = (
                    f"{owner}: partition_by columns need records with columns; "
                    f"use format 'csv', 'jsonl' or 'parquet'"
                )
                raise ValueError(msg)
        self.directory = directory
        self.format = format
        self.encoder = encoder
        self.suffix = suffix
        self.partition_by = partition_by
        self.columns = list(columns) if columns else None
        self.schema = schema
        self.row_group_size = default_row_group_size(row_group_size)

    @property
    def shared_across_processes(self) -> bool:
        """False for ``memory://``: every process has its own, so worker processes cannot share it."""
        protocol, _ = fsspec.core.split_protocol(self.directory)
        return protocol != "memory"

    @property
    def shared_across_nodes(self) -> bool:
        """False for a local path (or ``memory://``): other machines cannot see it."""
        protocol, _ = fsspec.core.split_protocol(self.directory)
        return protocol not in (None, "file", "local", "memory")

    def create_writer(self, subtask_index: int, parallelism: int) -> FileSinkWriter:
        """Return the writer of one subtask."""
        return FileSinkWriter(self)

    def __repr__(self) -> str:
        return f"FileSink({self.directory!r})"


_SUFFIXES = {"text": "", "csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}


class _Part:
    """One in-progress file of a transaction: its handle and how records become its bytes."""

    __slots__ = ("folder", "handle", "parquet", "path", "rows")

    def __init__(
        self, folder: str, path: str, handle: IO[bytes], rows: RowEncoder | None, parquet: ParquetPart | None
    ) -> None:
        self.folder = folder
        self.path = path
        self.handle = handle
        self.rows = rows
        self.parquet = parquet


class FileSinkWriter(TwoPhaseCommitWriter):
    """One subtask's transactional writer of a :class:`FileSink`.

    Cost: per batch one encode-and-join and one ``write`` per partition (see
    :class:`~onceflow.operators.formats.RowEncoder`); Parquet one Arrow
    conversion per batch (none for Arrow batches) and one write per row group.
    """

    capabilities = Capability.TWO_PHASE_COMMIT | Capability.ARROW_INPUT
    """Arrow batches are taken as they are (Parquet writes them directly); text narrows it."""

    def __init__(self, sink: FileSink) -> None:
        super().__init__()
        self._sink = sink
        self._owner = repr(sink)
        if sink.format == "text":
            self.capabilities = Capability.TWO_PHASE_COMMIT
        self._fs: AbstractFileSystem = LocalFileSystem()
        self._root = ""
        self._local = False
        self._parts: dict[str, _Part] = {}
        """The open transaction's files, by partition folders ("" without partitions)."""
        self._seq = 0
        self._parquet_schema: Any = sink.schema
        """Parquet: ``schema``, or the schema the first file inferred, kept for the next files."""

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
        committed = sorted(p for p in self._list_tree() if COMMITTED_NAME.match(posixpath.basename(p)))
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
            self._fs.rm(committed)
        self.abort_leftovers([])

    def write(self, records: Any) -> None:
        """Append the records (a list, or an Arrow batch) to the in-progress file of their partition."""
        sink = self._sink
        if sink.partition_by is None:
            self._write_part("", records)
            return
        for folders, part_records in split_by_partition(self._owner, records, sink.partition_by):
            self._write_part(folders, part_records)

    def _write_part(self, folders: str, records: Any) -> None:
        part = self._parts.get(folders) or self._open_inprogress(folders)
        if part.parquet is not None:
            part.parquet.add(records)
            if self._parquet_schema is None:
                self._parquet_schema = part.parquet.schema
            return
        assert part.rows is not None
        if type(records) is not list:
            records = records.to_pylist()
        try:
            data = part.rows.encode(records)
        except TypeError as exc:
            msg = (
                f"{self._owner} cannot encode a batch with encoder "
                f"{describe_callable(self._sink.encoder)}: {exc}; the encoder must return a str"
            )
            raise TypeError(msg) from exc
        part.handle.write(data)

    def _open_inprogress(self, folders: str) -> _Part:
        ctx = self.ctx
        sink = self._sink
        folder = self._path(folders) if folders else self._root
        if folders:
            self._fs.makedirs(folder, exist_ok=True)
        name = f".{safe_name(ctx.uid)}-{ctx.subtask_index}-{safe_name(ctx.attempt_id)}-{self._seq}.inprogress"
        self._seq += 1
        path = posixpath.join(folder, name)
        handle = self._fs.open(path, "wb")
        if sink.format == "parquet":
            part = _Part(
                folder,
                path,
                handle,
                None,
                ParquetPart(self._owner, handle, self._parquet_schema, sink.row_group_size),
            )
        else:
            part = _Part(
                folder, path, handle, RowEncoder(self._owner, sink.format, sink.encoder, sink.columns), None
            )
        self._parts[folders] = part
        return part

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Close the in-progress files and rename each to a hidden pending name in its folder.

        Returns:
            ``{"pending": path, "final": path}`` for one file, ``{"files": [...]}``
            of those for several partitions, or None when nothing was written
            since the last barrier (no empty files).
        """
        parts, self._parts = self._parts, {}
        if not parts:
            return None
        stem = f"part-{self.ctx.subtask_index:05d}-{checkpoint_id:010d}"
        files = []
        for part in parts.values():
            if part.parquet is not None:
                part.parquet.close()
            part.handle.flush()
            if self._local:
                fsync_file(part.handle)
            part.handle.close()
            pending = posixpath.join(part.folder, f".{stem}.{safe_name(self.ctx.attempt_id)}.pending")
            final = posixpath.join(part.folder, stem + self._sink.suffix)
            if self._local:
                os.replace(part.path, pending)
                fsync_dir(part.folder)
            else:
                self._fs.mv(part.path, pending)
            files.append({"pending": pending, "final": final})
        self.ctx.crash_point("after_pending_rename_before_commit_rename")
        return files[0] if len(files) == 1 else {"files": files}

    def commit(self, committable: dict[str, Any]) -> bool:
        """Make the pending files of a checkpoint visible under their final names; idempotent.

        Returns True if this call made a file visible. A committable is one
        ``{"pending", "final"}`` or ``{"files": [...]}`` of them.
        """
        files = committable["files"] if "files" in committable else [committable]
        made = False
        for entry in files:
            made = self._commit_file(entry["pending"], entry["final"]) or made
        return made

    def _commit_file(self, pending: str, final: str) -> bool:
        """Make one pending file visible under its final name; idempotent; True if it did.

        The three cases:
            1. The pending file exists: move it to the final name (local: atomic
               ``os.replace`` and a directory fsync; elsewhere: copy unless the
               final file already exists, whole, from an interrupted commit, then delete).
            2. Only the final file exists: an earlier attempt committed it; nothing to do.
            3. Neither exists: the output of a completed checkpoint is gone.

        Raises:
            SinkCommitError: case 3, data loss; never skipped silently.
        """
        fs = self._fs
        if fs.exists(pending):
            # Case 1
            self.ctx.crash_point("mid_commit")
            if self._local:
                os.replace(pending, final)
                fsync_dir(posixpath.dirname(final))
            else:
                # A final file beside the pending one is an interrupted commit's copy: whole on an
                # object store (a put is all or nothing), possibly cut short elsewhere (sftp, hdfs).
                if not fs.exists(final) or fs.size(final) != fs.size(pending):
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
        kept = {
            f["pending"]
            for c in keep
            if isinstance(c, dict)
            for f in (c["files"] if "files" in c else [c])
            if "pending" in f
        }
        restored = ctx.restored_checkpoint_id
        doomed: list[str] = []
        for path in self._list_tree():
            name = posixpath.basename(path)
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
        """Close the in-progress files without committing them; a later restore aborts them."""
        parts, self._parts = self._parts, {}
        for part in parts.values():
            try:
                part.handle.close()
            except Exception:  # close must not raise; the file is uncommitted anyway
                log.debug("closing %s failed", part.path, exc_info=True)

    # ------------------------------------------------------------ helpers

    def _path(self, name: str) -> str:
        return posixpath.join(self._root, name)

    def _list_tree(self) -> list[str]:
        """Every file below the directory, hidden ones too (partition folders included)."""
        self._fs.invalidate_cache(self._root)
        try:
            return [p for p in self._fs.find(self._root) if posixpath.basename(p) != MARKER_NAME]
        except FileNotFoundError:
            return []

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
            fsync_file(handle)
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
