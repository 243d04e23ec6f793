"""Line-oriented text files in and out, on any fsspec filesystem, with exactly-once output.

:class:`FileSource` reads lines of text files and resumes mid-file from byte
offsets. :class:`FileSink` writes lines and makes them visible only when the
checkpoint covering them completes (two-phase commit over file renames). This
module does not schedule anything: the engine calls the life-cycle hooks of
:mod:`onceflow.operators.base`.

Names in a sink directory (``<n>`` is a checkpoint id)::

    part-<subtask:05d>-<n:010d><suffix>               committed output, the only visible files
    .<uid>-<subtask>-<attempt>-<seq>.inprogress       open transaction, since the last barrier
    .part-<subtask:05d>-<n:010d>.<attempt>.pending    pre-committed at barrier <n>, not yet visible
    _onceflow_sink.json                               which job and sink own the directory

Readers (and a :class:`FileSource` pointed at the directory) skip names that
start with ``.`` or ``_``, so only committed output is ever read.
"""

from __future__ import annotations

import logging
from typing import IO, Any

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile
from onceflow.operators._file_paths import (
    FILE_DONE,
    MARKER_NAME,
    resolve_input,
)
from onceflow.operators.base import (
    RestoredState,
    RuntimeContext,
    Source,
    SourceReader,
)
from onceflow.operators.errors import (
    SourceDecodeError,
    SourceError,
    SourceNotFoundError,
)
from onceflow.operators.file_sink import FileSink, FileSinkWriter, read_committed_lines

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
        return resolve_input(self.path)[1]

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
        self._batch: tuple[str, int, int] = ("", 0, 0)
        """The last batch returned: file, byte offset of its first line, number of lines."""
        self._line_mark: tuple[str, int, int] = ("", 0, 1)
        """A known line start: file, byte offset, line number; where :meth:`batch_position` counts from."""


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
        self._fs, all_files = resolve_input(self._source.path)
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
            self._batch = (path, start, len(records))
            return records
        return None

    def batch_position(self, index: int | None) -> dict[str, Any] | None:
        """Return ``{"file", "line"}`` of record ``index`` of the last batch, or ``{"file", "lines"}``.

        ``lines`` is ``[first, last]`` of the whole batch (``index`` None, when
        the caller no longer knows which line a record was). Lines count from 1.
        The reader keeps byte offsets, not line numbers, so the line of the
        batch's first byte is counted here, on the error path only, from the
        last position counted (one pass over each file however many records fail).
        """
        path, start, n = self._batch
        if not path:
            return None
        first = self._line_at(path, start)
        if index is None:
            return {"file": path, "lines": [first, first + max(n - 1, 0)]}
        return {"file": path, "line": first + index}

    def _line_at(self, path: str, offset: int) -> int:
        mark_path, mark, line = self._line_mark
        if mark_path != path or mark > offset:
            mark, line = 0, 1
        assert self._fs is not None, "called before open"
        with self._fs.open(path, "rb") as handle:
            handle.seek(mark)
            todo = offset - mark
            while todo > 0:
                block = handle.read(min(todo, 1 << 20))
                if not block:
                    break
                line += block.count(b"\n")
                todo -= len(block)
        self._line_mark = (path, offset, line)
        return line

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
