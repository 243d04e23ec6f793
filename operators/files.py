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
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from fsspec import AbstractFileSystem

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
    SourceChangedError,
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


class FileSourceReader(SourceReader):
    """One subtask's reader of a :class:`FileSource`.

    Each owned file is read up to the size it had when the reader found it
    (on ``open``, or as recorded by the restored checkpoint), so a file still
    being written never yields a torn line. The snapshot records each file's
    offset and identity; a restore refuses a started file that is gone or
    different (:class:`~onceflow.operators.errors.SourceChangedError`).

    Cost: per batch one ``read`` of about ``read_size`` bytes, one split, one
    join, one decode and one split; per record only its slot in the returned
    list. Files are opened lazily, one at a time, and closed when read to the
    end or on ``close``.
    """

    def __init__(self, source: FileSource, subtask_index: int, parallelism: int) -> None:
        self._source = source
        self._subtask_index = subtask_index
        self._parallelism = parallelism
        self._fs: AbstractFileSystem | None = None
        self._files: list[str] = []
        self._listed: set[str] = set()
        """Every file of the input now, whichever subtask owns it."""
        self._offsets: dict[str, int] = {}
        """Byte offset of the first line not yet returned, or FILE_DONE, per owned file."""
        self._identities: dict[str, FileIdentity] = {}
        """Per owned file, what it was when found; reads stop at its size."""
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
        """List the input, take this subtask's share of the files and note what each one is.

        Raises:
            SourceNotFoundError: the path matches no readable file.
        """
        super().open(ctx)
        self._fs, all_files = resolve_input(self._source.path)
        self._listed = set(all_files)
        self._files = all_files[self._subtask_index :: self._parallelism]
        self._offsets = dict.fromkeys(self._files, 0)
        self._identities = {path: self._identify(path) for path in self._files}
        self._cursor = 0

    def _identify(self, path: str) -> FileIdentity:
        assert self._fs is not None, "called before open"
        try:
            return FileIdentity.of(self._fs.info(path))
        except FileNotFoundError as exc:
            msg = f"FileSource input file {path!r} disappeared after it was listed"
            raise SourceNotFoundError(msg) from exc

    def restore_state(self, restored: RestoredState) -> None:
        """Seek every owned file to its restored offset; refuse started files that changed.

        Steps:

        1. Merge the states of all old subtasks, so the restore works whatever
           the old parallelism was: offsets are keyed by path, not by subtask.
        2. Refuse if a file the checkpoint had started (offset not 0, or read
           to its end) is no longer listed (deleted, renamed, moved); every
           subtask checks, since the file may have been anyone's.
        3. Refuse if an owned started file differs from its recorded identity
           (size, mtime or etag), then keep reading it up to the recorded size.
           Files not started, or new since the checkpoint, start at 0 as they
           are now.

        Raises:
            SourceChangedError: a started file is missing or different; names it.
        """
        # Step 1
        merged: dict[str, dict[str, Any]] = {}
        for _, state in restored.operator_states:
            for path, entry in (state or {}).items():
                merged[path] = entry if isinstance(entry, dict) else {"offset": entry}
        started = {path: entry for path, entry in merged.items() if entry["offset"] != 0}
        # Step 2
        missing = sorted(path for path in started if path not in self._listed)
        if missing:
            shown = ", ".join(repr(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
            msg = (
                f"{self._source!r}: checkpoint {restored.checkpoint_id} had started reading "
                f"{len(missing)} input file(s) that are gone now (deleted, renamed or moved): {shown}; "
                f"resuming would read their records again under another name, or lose them. Put the "
                f"files back as they were, or rerun with --fresh to start over"
            )
            raise SourceChangedError(msg)
        # Step 3
        for path in self._files:
            recorded = FileIdentity.from_state(started[path]) if path in started else None
            if recorded is None:
                continue
            changed = recorded.differences(self._identities[path])
            if changed:
                msg = (
                    f"{self._source!r}: input file {path!r} changed since checkpoint "
                    f"{restored.checkpoint_id} read it up to byte {_shown_offset(started[path])} "
                    f"({', '.join(changed)}); resuming at that offset in other content would repeat "
                    f"or skip lines. Restore the file as it was, or rerun with --fresh to start over"
                )
                raise SourceChangedError(msg)
            self._identities[path] = recorded
        self._close_handle()
        self._buffer = []
        self._cursor = 0
        self._offsets = {path: merged.get(path, {"offset": 0})["offset"] for path in self._files}

    def poll_batch(self, max_records: int) -> list[str] | None:
        """Return the next lines of the current file, or None once every owned file is read.

        A batch holds whole lines from one file, about ``read_size`` bytes and
        at most ``max_records`` lines.

        Raises:
            SourceDecodeError: the bytes do not decode; names the file and byte offset.
            SourceNotFoundError: a listed file disappeared before it was read.
            SourceChangedError: a file became shorter than it was when found.
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
        """Return the whole lines from ``start`` on, about ``read_size`` bytes, none past the found size.

        Cases at the end of what is read:

        1. Newlines found: the lines up to the last one; the rest comes next time.
        2. No newline up to the found size, and the file ends exactly there: the
           file's last line, which has no newline.
        3. No newline up to the found size, and the file is longer now: a line
           still being written when the file was found; left out, with a warning.
        4. The file ends before the found size: it was truncated or rewritten.
        """
        size = self._identities[path].size
        if start >= size:
            return []
        handle = self._open(path)
        # Seek on every batch: cheap within the read buffer, and memory:// hands
        # every opener the same file object, so the position may have moved.
        handle.seek(start)
        block = b""
        end = min(start + self._source.read_size, size)
        while True:
            piece = handle.read(end - start - len(block))
            block += piece
            cut = block.rfind(b"\n")
            if cut >= 0:  # Case 1
                return [line + b"\n" for line in block[:cut].split(b"\n")]
            if start + len(block) >= size:
                return self._last_line(path, start, block)  # Cases 2 and 3
            if not piece:  # Case 4
                msg = (
                    f"{self._source!r}: input file {path!r} ends at byte {start + len(block)} but "
                    f"had {size} bytes when this run found it: it was truncated or rewritten while "
                    f"being read. Restore it, or rerun with --fresh to start over"
                )
                raise SourceChangedError(msg)
            end = min(end + self._source.read_size, size)  # a line longer than read_size

    def _last_line(self, path: str, start: int, tail: bytes) -> list[bytes]:
        assert self._fs is not None, "called before open"
        if self._fs.size(path) == start + len(tail):
            return [tail]
        log.warning(
            "%r: input file %r had %d bytes when this run found it, ending inside a line that was "
            "still being written; that partial line (from byte %d) is not read (a bounded run reads "
            "each file as it was when found)",
            self._source,
            path,
            start + len(tail),
            start,
        )
        return []

    def _open(self, path: str) -> IO[bytes]:
        handle = self._handle
        if handle is None:
            assert self._fs is not None, "poll_batch called before open"
            try:
                handle = self._handle = self._fs.open(path, "rb")
            except FileNotFoundError as exc:
                msg = f"FileSource input file {path!r} disappeared after it was listed"
                raise SourceNotFoundError(msg) from exc
        return handle

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

    def snapshot_state(self, checkpoint_id: int) -> dict[str, dict[str, Any]]:
        """Return ``{path: {"offset", "size", "mtime", "etag"}}`` per owned file (FILE_DONE: finished).

        Plain data. The identity is the file's as found, so a restore can tell
        whether a started file is still the same.
        """
        return {
            path: {"offset": offset, **vars(self._identities[path])} for path, offset in self._offsets.items()
        }

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


def _shown_offset(entry: dict[str, Any]) -> str:
    return "its end" if entry["offset"] == FILE_DONE else str(entry["offset"])
