"""Line-oriented text files in and out, on any fsspec filesystem, with exactly-once output.

:class:`FileSource` reads lines of text files and resumes mid-file from byte
offsets. :class:`FileSink` writes lines and makes them visible only when the
checkpoint covering them completes (two-phase commit over file renames). This
module does not schedule anything: the engine calls the life-cycle hooks of
:mod:`operators.base`.

Names in a sink directory (``<n>`` is a checkpoint id)::

    part-<subtask:05d>-<n:010d><suffix>               committed output, the only visible files
    .<uid>-<subtask>-<attempt>-<seq>.inprogress       open transaction, since the last barrier
    .part-<subtask:05d>-<n:010d>.<attempt>.pending    pre-committed at barrier <n>, not yet visible
    _onceflow_sink.json                               which job and sink own the directory

Readers (and a :class:`FileSource` pointed at the directory) skip names that
start with ``.`` or ``_``, so only committed output is ever read.
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
from fsspec.spec import AbstractBufferedFile

from operators.base import (
    RestoredState,
    RuntimeContext,
    Sink,
    Source,
    SourceReader,
    TwoPhaseCommitWriter,
    describe_callable,
)
from operators.errors import (
    SinkCommitError,
    SinkOutputExistsError,
    SinkOwnershipError,
    SourceDecodeError,
    SourceError,
    SourceNotFoundError,
)

__all__ = [
    "FILE_DONE",
    "MARKER_NAME",
    "FileSink",
    "FileSinkWriter",
    "FileSource",
    "FileSourceReader",
    "read_committed_lines",
]

log = logging.getLogger("onceflow")

FILE_DONE = -1
"""Offset recorded for a file read to its end, so a restore never reopens it."""

MARKER_NAME = "_onceflow_sink.json"
"""The file naming the job and sink that own a :class:`FileSink` directory."""

_HIDDEN_PREFIXES = (".", "_")
_GLOB_CHARS = frozenset("*?[")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_PENDING_NAME = re.compile(
    r"^\.part-(?P<subtask>\d+)-(?P<checkpoint>\d+)\.(?P<attempt>.+)\.pending$"
)
_COMMITTED_NAME = re.compile(r"^part-(?P<subtask>\d+)-(?P<checkpoint>\d+)")


def _is_hidden(name: str) -> bool:
    return name.startswith(_HIDDEN_PREFIXES)


def _safe_name(text: str) -> str:
    """Make a uid or attempt id usable inside a file name on every filesystem."""
    return _UNSAFE_NAME_CHARS.sub("_", text)


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable: POSIX persists renames only with the directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- source


def _visible_files_below(fs: AbstractFileSystem, root: str) -> list[str]:
    """List files under ``root`` recursively, skipping any hidden name on the way down."""
    prefix = root.rstrip("/") + "/"
    found = []
    for path in fs.find(root):
        relative = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if not any(_is_hidden(part) for part in relative.split("/")):
            found.append(path)
    return found


def _resolve_input(path: str) -> tuple[AbstractFileSystem, list[str]]:
    """Expand a file, directory or glob into its readable files, sorted.

    Raises:
        SourceNotFoundError: nothing exists at ``path`` or it matches no readable file.
    """
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isfile(root):
        files = [root]
    elif fs.isdir(root):
        files = _visible_files_below(fs, root)
    elif _GLOB_CHARS.intersection(root):
        files = []
        for match, info in fs.glob(root, detail=True).items():
            if _is_hidden(posixpath.basename(match.rstrip("/"))):
                continue
            if info.get("type") == "directory":
                files.extend(_visible_files_below(fs, match))
            else:
                files.append(match)
    else:
        msg = f"FileSource input {path!r} does not exist; check the path (or the -p parameter)"
        raise SourceNotFoundError(msg)
    if not files:
        msg = (
            f"FileSource input {path!r} matches no readable file (names starting with "
            f"'.' or '_' are skipped); check the path or glob"
        )
        raise SourceNotFoundError(msg)
    return fs, sorted(set(files))


class FileSource(Source):
    r"""Read the lines of one file, a directory tree or a glob, as ``str`` without line endings.

    Files are read in sorted path order and dealt to subtasks round-robin: file
    ``i`` goes to subtask ``i % parallelism``. Offsets are byte positions per
    file, so a restore resumes mid-file, at any parallelism.

    Args:
        path: a file, a directory (every file below it whose path has no part
            starting with ``.`` or ``_``) or a glob; a local path or any fsspec URL.
        encoding: the text encoding; it must encode ``"\n"`` as the byte
            ``0x0A`` (UTF-8, Latin-1, ASCII...), because lines are split on bytes
            before decoding.
        read_size: about how many bytes of whole lines one batch reads.

    Raises:
        SourceError: ``encoding`` is unknown or not ASCII-compatible, or
            ``read_size`` is not positive.
    """

    bounded = True

    def __init__(self, path: str, *, encoding: str = "utf-8", read_size: int = 65536) -> None:
        try:
            newline = "\n".encode(encoding)
        except LookupError as exc:
            msg = f"FileSource({path!r}): unknown encoding {encoding!r}"
            raise SourceError(msg) from exc
        if not newline.endswith(b"\n"):
            msg = (
                f"FileSource({path!r}): encoding {encoding!r} does not encode a newline as the "
                f"byte 0x0A, so lines cannot be split before decoding; convert the files to UTF-8"
            )
            raise SourceError(msg)
        if read_size <= 0:
            msg = f"FileSource({path!r}): read_size must be positive, got {read_size!r}"
            raise SourceError(msg)
        self.path = path
        self.encoding = encoding
        self.read_size = read_size

    def list_files(self) -> list[str]:
        """Return the files this source reads, in reading order (filesystem paths)."""
        return _resolve_input(self.path)[1]

    def create_reader(self, subtask_index: int, parallelism: int) -> FileSourceReader:
        """Return the reader of the files dealt to ``subtask_index``; it lists them on ``open``."""
        return FileSourceReader(self, subtask_index, parallelism)

    def __repr__(self) -> str:
        return f"FileSource({self.path!r})"


class FileSourceReader(SourceReader):
    """One subtask's reader of a :class:`FileSource`.

    Cost: per batch one ``readlines``, one join, one decode and one split; per
    record only its slot in the returned list. Files are opened lazily, one at
    a time, and closed when read to the end or on ``close``.
    """

    def __init__(self, source: FileSource, subtask_index: int, parallelism: int) -> None:
        self._source = source
        self._subtask_index = subtask_index
        self._parallelism = parallelism
        self._fs: AbstractFileSystem | None = None
        self._files: list[str] = []
        self._offsets: dict[str, int] = {}
        """Byte offset of the first line not yet returned, or FILE_DONE, per owned file."""
        self._cursor = 0
        self._handle: IO[bytes] | None = None
        self._buffer: list[bytes] = []
        """Lines read from the current file beyond ``max_records``, returned by the next poll."""

    @property
    def files(self) -> list[str]:
        """The files this subtask owns, in reading order; empty before ``open``."""
        return list(self._files)

    def open(self, ctx: RuntimeContext) -> None:
        """List the input and take this subtask's share of the files.

        Raises:
            SourceNotFoundError: the path matches no readable file.
        """
        super().open(ctx)
        self._fs, all_files = _resolve_input(self._source.path)
        self._files = all_files[self._subtask_index :: self._parallelism]
        self._offsets = dict.fromkeys(self._files, 0)
        self._cursor = 0

    def restore_state(self, restored: RestoredState) -> None:
        """Seek every owned file to its restored offset; files new since the checkpoint start at 0.

        The states of all old subtasks are merged first, so the restore works
        whatever the old parallelism was: offsets are keyed by path, not by
        subtask.
        """
        merged: dict[str, int] = {}
        for _, state in restored.operator_states:
            if state:
                merged.update(state)
        self._close_handle()
        self._buffer = []
        self._cursor = 0
        self._offsets = {path: merged.get(path, 0) for path in self._files}

    def poll_batch(self, max_records: int) -> list[str] | None:
        """Return the next lines of the current file, or None once every owned file is read.

        A batch holds whole lines from one file, about ``read_size`` bytes and
        at most ``max_records`` lines.

        Raises:
            SourceDecodeError: the bytes do not decode; names the file and byte offset.
            SourceNotFoundError: a listed file disappeared before it was read.
        """
        while self._cursor < len(self._files):
            path = self._files[self._cursor]
            start = self._offsets[path]
            if start == FILE_DONE:
                self._cursor += 1
                continue
            lines = self._buffer or self._read_lines(path, start)
            if not lines:
                self._offsets[path] = FILE_DONE
                self._close_handle()
                self._cursor += 1
                continue
            if 0 < max_records < len(lines):
                self._buffer = lines[max_records:]
                lines = lines[:max_records]
            else:
                self._buffer = []
            chunk = b"".join(lines)
            records = self._decode(path, start, chunk)
            self._offsets[path] = start + len(chunk)
            return records
        return None

    def _read_lines(self, path: str, start: int) -> list[bytes]:
        handle = self._handle
        if handle is None:
            assert self._fs is not None, "poll_batch called before open"
            try:
                handle = self._handle = self._fs.open(path, "rb")
            except FileNotFoundError as exc:
                msg = f"FileSource input file {path!r} disappeared after it was listed"
                raise SourceNotFoundError(msg) from exc
        # Seek on every batch: cheap within the read buffer, and memory:// hands
        # every opener the same file object, so the position may have moved.
        handle.seek(start)
        if isinstance(handle, AbstractBufferedFile):
            # fsspec's remote files (s3://...) take no size hint in readlines()
            lines: list[bytes] = []
            size = 0
            while size < self._source.read_size:
                line = handle.readline()
                if not line:
                    break
                lines.append(line)
                size += len(line)
            return lines
        return handle.readlines(self._source.read_size)

    def _decode(self, path: str, start: int, chunk: bytes) -> list[str]:
        try:
            text = chunk.decode(self._source.encoding)
        except UnicodeDecodeError as exc:
            msg = (
                f"cannot decode {path!r} as {self._source.encoding!r} at byte offset "
                f"{start + exc.start}: {exc.reason}; pass the file's encoding to "
                f"FileSource(..., encoding=...)"
            )
            raise SourceDecodeError(msg) from exc
        if "\r" in text:
            # Only "\r\n" is a line ending; a lone "\r" is content (str.splitlines
            # would split on it, and on \x0b, \x1c, \u2028...).
            text = text.replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text[:-1]
        return text.split("\n")

    def snapshot_state(self, checkpoint_id: int) -> dict[str, int]:
        """Return ``{path: offset}`` for every owned file; FILE_DONE marks a finished file."""
        return dict(self._offsets)

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except Exception:  # close must not raise; the file was only read
                log.debug("closing %r failed", handle, exc_info=True)

    def close(self) -> None:
        """Close the open file, if any."""
        self._close_handle()


# --------------------------------------------------------------------------- sink


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

    def __init__(
        self, directory: str, *, encoder: Callable[[Any], str] = str, suffix: str = ""
    ) -> None:
        if "/" in suffix:
            msg = f"FileSink({directory!r}): suffix {suffix!r} must not contain '/'"
            raise ValueError(msg)
        self.directory = directory
        self.encoder = encoder
        self.suffix = suffix

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
        name = (
            f".{_safe_name(ctx.uid)}-{ctx.subtask_index}-{_safe_name(ctx.attempt_id)}"
            f"-{self._seq}.inprogress"
        )
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
        pending = self._path(f".{stem}.{_safe_name(self.ctx.attempt_id)}.pending")
        final = self._path(stem + self._sink.suffix)
        if self._local:
            os.replace(self._inprogress_path, pending)
            _fsync_dir(self._root)
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
                _fsync_dir(self._root)
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
        attempt = _safe_name(ctx.attempt_id)
        inprogress = re.compile(
            rf"^\.{re.escape(_safe_name(ctx.uid))}-\d+-(?P<attempt>.+)-\d+\.inprogress$"
        )
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
            match = _PENDING_NAME.match(name)
            if match:
                if match["attempt"] != attempt and path not in kept:
                    doomed.append(path)
                continue
            # Case 3
            match = _COMMITTED_NAME.match(name)
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
        temp = self._path(f".{name}.{_safe_name(self.ctx.attempt_id)}.tmp")
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_dir(self._root)


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
