"""``FileSourceReader``: one subtask's reader of a FileSource, with offsets a restore can reproduce.

Offsets per file: bytes of the uncompressed text (line formats; a compressed
file is decompressed again up to the offset on restore) or rows (Parquet,
read by row group). With ``watch`` the reader lists the folder every
``poll_interval`` and takes the files it has not seen; what it has seen is
its snapshot. Decoding rows is :mod:`onceflow.operators.formats`'s job.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import IO, TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from onceflow.operators._file_paths import FILE_DONE, FileIdentity, resolve_input
from onceflow.operators.bad_records import BadInput
from onceflow.operators.base import Backlog, RestoredState, RuntimeContext, SourceReader
from onceflow.operators.errors import (
    SourceChangedError,
    SourceDecodeError,
    SourceNotFoundError,
)
from onceflow.operators.formats import LineDecoder, compression_of, decode_header

if TYPE_CHECKING:
    from onceflow.operators.files import FileSource

__all__ = ["FileIdentity", "FileSourceReader"]

log = logging.getLogger("onceflow")

_SKIP_BLOCK = 1 << 20


class FileSourceReader(SourceReader):
    """One subtask's reader of a :class:`~onceflow.operators.files.FileSource`.

    Each owned uncompressed text file is read up to the size it had when the
    reader found it (on ``open``, by a watch listing, or as recorded by the
    restored checkpoint), so a file still being written never yields a torn
    line; compressed files are read to the end of their stream. The snapshot
    records each file's offset and identity; a restore refuses a started file
    that is gone or different (:class:`~onceflow.operators.errors.SourceChangedError`).

    Cost: per batch one ``read`` of about ``read_size`` bytes, one split, one
    join, one decode and one split, plus the format's decoding (see
    :class:`~onceflow.operators.formats.LineDecoder`); Parquet one row-group
    read per row group and one slice per batch. Files are opened lazily, one at
    a time, and closed when read to the end or on ``close``.
    """

    def __init__(self, source: FileSource, subtask_index: int, parallelism: int) -> None:
        self._source = source
        self._subtask_index = subtask_index
        self._parallelism = parallelism
        self._decoder = LineDecoder(source.format)
        self._fs: AbstractFileSystem | None = None
        self._files: list[str] = []
        self._listed: set[str] = set()
        """Every file of the input at the last listing, whichever subtask owns it."""
        self._offsets: dict[str, int] = {}
        """Offset of the first record not yet returned, or FILE_DONE, per owned file."""
        self._identities: dict[str, FileIdentity] = {}
        """Per owned file, what it was when found; uncompressed text reads stop at its size."""
        self._candidates: dict[str, FileIdentity] = {}
        """Watch: files seen by the last listing, taken when the next one finds them unchanged."""
        self._next_listing = 0.0
        self._cursor = 0
        self._handle: IO[bytes] | None = None
        self._handle_pos = 0
        """Position of ``_handle`` in the (uncompressed) stream, for compressed files."""
        self._tail = b""
        """Compressed files: bytes read past the last whole line, ending at ``_handle_pos``."""
        self._headers: dict[str, list[str]] = {}
        self._group: tuple[str, int, int, Any] = ("", -1, 0, None)
        """Parquet: the row group in memory: file, index, first row, table."""
        self._buffer: list[bytes] = []
        """Lines read from the current file beyond ``max_records``, returned by the next poll."""
        self._batch: tuple[str, int, int, list[int] | None] = ("", 0, 0, None)
        """The last batch: file, offset of its first record, records, line index per record (if not i)."""
        self._line_mark: tuple[str, int, int] = ("", 0, 1)
        """A known line start: file, byte offset, line number; where :meth:`batch_position` counts from."""

    @property
    def files(self) -> list[str]:
        """The files this subtask owns, in reading order; empty before ``open``."""
        return list(self._files)

    # ------------------------------------------------------------ life cycle

    def open(self, ctx: RuntimeContext) -> None:
        """List the input, take this subtask's share of the files and note what each one is.

        With ``watch`` nothing is taken here: the first poll lists the folder.

        Raises:
            SourceNotFoundError: the path matches no readable file (with
                ``watch``: the folder does not exist).
        """
        super().open(ctx)
        self._fs, all_files = resolve_input(self._source.path, allow_empty=self._source.watch)
        self._listed = set(all_files)
        if self._source.watch:
            self._files = []
        else:
            self._files = all_files[self._subtask_index :: self._parallelism]
        self._offsets = dict.fromkeys(self._files, 0)
        self._identities = {path: self._identify(path) for path in self._files}
        self._cursor = 0

    def _owns(self, path: str) -> bool:
        """Watch mode's dealing: a stable hash of the path, the same in every process and run."""
        return zlib.crc32(path.encode("utf-8")) % self._parallelism == self._subtask_index

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
        2. Refuse if a file the checkpoint had started is no longer listed
           (deleted, renamed, moved); every subtask checks, since the file may
           have been anyone's. With ``watch``, a file read to its end may be
           gone (landing folders are cleaned up) and stays done.
        3. Refuse if an owned started file differs from its recorded identity
           (size, mtime or etag), then keep reading it up to the recorded size.
           Files not started, or new since the checkpoint, start at 0 as they
           are now. With ``watch``, the checkpoint's files are this subtask's
           share of what the checkpoint had taken; later ones come by listing.

        Raises:
            SourceChangedError: a started file is missing or different; names it.
        """
        watch = self._source.watch
        # Step 1
        merged: dict[str, dict[str, Any]] = {}
        for _, state in restored.operator_states:
            for path, entry in (state or {}).items():
                merged[path] = entry if isinstance(entry, dict) else {"offset": entry}
        started = {path: entry for path, entry in merged.items() if entry["offset"] != 0}
        # Step 2
        missing = sorted(
            path
            for path, entry in started.items()
            if path not in self._listed and not (watch and entry["offset"] == FILE_DONE)
        )
        if missing:
            shown = ", ".join(repr(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
            msg = (
                f"{self._source!r}: checkpoint {restored.checkpoint_id} had started reading "
                f"{len(missing)} input file(s) that are gone now (deleted, renamed or moved): {shown}; "
                f"resuming would read their records again under another name, or lose them. Put the "
                f"files back as they were, or rerun with --fresh to start over"
            )
            raise SourceChangedError(msg)
        if watch:
            self._files = sorted(p for p in merged if self._owns(p) and (p in started or p in self._listed))
            self._identities = {
                p: (FileIdentity.from_state(merged[p]) if p in started else None) or self._identify(p)
                for p in self._files
            }
            self._candidates = {}
        # Step 3
        for path in self._files:
            recorded = FileIdentity.from_state(started[path]) if path in started else None
            if recorded is None or started[path]["offset"] == FILE_DONE and path not in self._listed:
                continue
            changed = recorded.differences(self._identify(path) if watch else self._identities[path])
            if changed:
                msg = (
                    f"{self._source!r}: input file {path!r} changed since checkpoint "
                    f"{restored.checkpoint_id} read it up to {_shown_offset(started[path])} "
                    f"({', '.join(changed)}); resuming at that offset in other content would repeat "
                    f"or skip records. Restore the file as it was, or rerun with --fresh to start over"
                )
                raise SourceChangedError(msg)
            self._identities[path] = recorded
        self._close_handle()
        self._buffer = []
        self._cursor = 0
        self._offsets = {path: merged.get(path, {"offset": 0})["offset"] for path in self._files}

    def snapshot_state(self, checkpoint_id: int) -> dict[str, dict[str, Any]]:
        """Return ``{path: {"offset", "size", "mtime", "etag"}}`` per owned file (FILE_DONE: finished).

        Plain data. The identity is the file's as found, so a restore can tell
        whether a started file is still the same. With ``watch`` these keys are
        also the files already taken.
        """
        return {
            path: {"offset": offset, **vars(self._identities[path])} for path, offset in self._offsets.items()
        }

    def backlog(self) -> Backlog:
        """Return the bytes of the owned files not yet read (source lag), from offsets held in memory.

        A started compressed or Parquet file, whose offset is not a byte
        position in the file, counts whole until it is done.
        """
        left = 0
        plain = self._source.format != "parquet"
        for path, offset in self._offsets.items():
            if offset == FILE_DONE:
                continue
            size = self._identities[path].size
            exact = plain and offset and self._compressed(path) is None
            left += max(size - offset, 0) if exact else size
        return Backlog(left, "bytes")

    # ------------------------------------------------------------ reading

    def poll_batch(self, max_records: int) -> Any:
        """Return the next records of the current file; None once every owned file is read.

        A batch holds records of one file: whole lines, about ``read_size``
        bytes and at most ``max_records`` of them, or at most ``max_records``
        Parquet rows of one row group as an Arrow record batch. With ``watch``
        it returns ``[]`` while no new file is there, and never None.

        Raises:
            BadInput: rows that do not decode (the good ones ride along).
            SourceDecodeError: the bytes do not decode; names the file and offset.
            SourceNotFoundError: a listed file disappeared before it was read.
            SourceChangedError: a file became shorter than it was when found.
        """
        while True:
            records = self._poll_files(max_records)
            if records is not None or not self._source.watch:
                return records
            now = time.monotonic()
            if now < self._next_listing:
                return []
            self._next_listing = now + self._source.poll_interval
            if not self._discover():
                return []

    def _discover(self) -> bool:
        """List the watched folder; take files seen unchanged by two listings; True if any."""
        _, listed = resolve_input(self._source.path, allow_empty=True)
        self._listed = set(listed)
        seen: dict[str, FileIdentity] = {}
        taken = False
        for path in listed:
            if path in self._offsets or not self._owns(path):
                continue
            try:
                now = self._identify(path)
            except SourceNotFoundError:
                continue  # moved away between listing and looking: not ours to read
            if self._candidates.get(path) == now:
                self._files.append(path)
                self._offsets[path] = 0
                self._identities[path] = now
                taken = True
            else:
                seen[path] = now
        self._candidates = seen
        return taken

    def _poll_files(self, max_records: int) -> Any:
        while self._cursor < len(self._files):
            path = self._files[self._cursor]
            start = self._offsets[path]
            if start == FILE_DONE:
                self._cursor += 1
                continue
            if self._source.format == "parquet":
                batch = self._read_rows(path, start, max_records)
                if batch is not None:
                    return batch
            else:
                if self._source.format == "csv" and path not in self._headers:
                    start = self._read_header(path, start)
                lines = self._buffer or self._read_lines(path, start)
                if lines:
                    return self._decode_lines(path, start, lines, max_records)
            self._offsets[path] = FILE_DONE
            self._close_handle()
            self._cursor += 1
        return None

    def _decode_lines(self, path: str, start: int, lines: list[bytes], max_records: int) -> list:
        if 0 < max_records < len(lines):
            self._buffer = lines[max_records:]
            lines = lines[:max_records]
        else:
            self._buffer = []
        chunk = b"".join(lines)
        records, bad, kept = self._decoder.decode(self._decode(path, start, chunk), self._headers.get(path))
        self._offsets[path] = start + len(chunk)
        self._batch = (path, start, len(lines), kept)
        if bad:
            first = self._line_at(path, start)
            raise BadInput(records, [(b.line, b.error, {"file": path, "line": first + b.index}) for b in bad])
        return records

    def _read_header(self, path: str, start: int) -> int:
        """Read a CSV file's header line; return where its rows start (``start`` if past it)."""
        handle = self._open(path)
        self._seek(handle, path, 0)
        line = b""
        while b"\n" not in line:  # no readline: zstd streams lack it
            piece = self._guard(path, handle.read, 4096)
            if not piece:
                break
            line += piece
        self._handle_pos = len(line)
        cut = line.find(b"\n") + 1 or len(line)
        line, self._tail = line[:cut], line[cut:]
        text = self._decode(path, 0, line)[0] if line else ""
        if not text:
            return start  # an empty file: no header, no rows
        self._headers[path] = decode_header(path, text)
        if start == 0:
            self._offsets[path] = start = len(line)
            self._line_mark = (path, start, 2)
        return start

    def _read_rows(self, path: str, start: int, max_records: int) -> Any:
        """Return the next Parquet rows of the row group holding row ``start`` as a batch; None at the end."""
        file_path, index, first, table = self._group
        if file_path != path or not first <= start < first + table.num_rows:
            parquet = self._parquet(path)
            first = 0
            for index in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(index).num_rows
                if start < first + rows:
                    break
                first += rows
            else:
                return None
            table = parquet.read_row_group(index, columns=self._source.columns)
            self._group = (path, index, first, table)
        size = max_records if max_records > 0 else table.num_rows
        part = table.slice(start - first, size).combine_chunks()
        batches = part.to_batches()
        if not batches:
            return None
        batch = batches[0]
        self._offsets[path] = start + batch.num_rows
        self._batch = (path, start, batch.num_rows, None)
        return batch

    def _parquet(self, path: str) -> Any:
        import pyarrow.parquet as pq

        handle = self._open(path)
        try:
            return pq.ParquetFile(handle)
        except Exception as exc:
            msg = f"{self._source!r}: cannot read {path!r} as Parquet: {exc}"
            raise SourceDecodeError(msg) from exc

    def _read_lines(self, path: str, start: int) -> list[bytes]:
        """Return the whole lines from ``start`` on, about ``read_size`` bytes, none past the found size.

        Cases at the end of what is read:

        1. Newlines found: the lines up to the last one; the rest comes next time.
        2. No newline up to the found size (or, compressed, the stream's end),
           and the file ends exactly there: the file's last line, which has no newline.
        3. No newline up to the found size, and the file is longer now: a line
           still being written when the file was found; left out, with a warning.
        4. The file ends before the found size: it was truncated or rewritten.
        """
        if self._compressed(path):
            return self._read_compressed_lines(path, start)
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

    def _read_compressed_lines(self, path: str, start: int) -> list[bytes]:
        """Like :meth:`_read_lines` for a compressed stream, read to its end (cases 1 and 2).

        The bytes after the last newline read stay in ``_tail`` for the next
        batch: a stream cannot seek back to them.
        """
        handle = self._open(path)
        if self._handle_pos - len(self._tail) != start:
            self._seek(handle, path, start)
            handle = self._open(path)
        block = self._tail
        while True:
            piece = self._guard(path, handle.read, self._source.read_size)
            self._handle_pos += len(piece)
            block += piece
            cut = block.rfind(b"\n")
            if cut >= 0:  # Case 1
                self._tail = block[cut + 1 :]
                return [line + b"\n" for line in block[:cut].split(b"\n")]
            if not piece:  # Case 2
                self._tail = b""
                return [block] if block else []

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

    # ------------------------------------------------------------ handles

    def _compressed(self, path: str) -> str | None:
        return compression_of(repr(self._source), path, self._source.compression)

    def _open(self, path: str) -> IO[bytes]:
        handle = self._handle
        if handle is None:
            handle = self._handle = self._open_new(path)
            self._handle_pos = 0
            self._tail = b""
        return handle

    def _open_new(self, path: str) -> IO[bytes]:
        assert self._fs is not None, "poll_batch called before open"
        try:
            return self._fs.open(path, "rb", compression=self._compressed(path))
        except FileNotFoundError as exc:
            msg = f"FileSource input file {path!r} disappeared after it was listed"
            raise SourceNotFoundError(msg) from exc

    def _seek(self, handle: IO[bytes], path: str, offset: int) -> None:
        """Move to ``offset``; a compressed stream cannot seek, so it is decompressed up to there."""
        if not self._compressed(path):
            handle.seek(offset)
            self._handle_pos = offset
            return
        self._tail = b""
        if self._handle_pos > offset:
            self._close_handle()
            handle = self._open(path)
        while self._handle_pos < offset:
            skipped = self._guard(path, handle.read, min(offset - self._handle_pos, _SKIP_BLOCK))
            if not skipped:
                msg = (
                    f"{self._source!r}: compressed input file {path!r} ends at byte "
                    f"{self._handle_pos} of its content, before offset {offset} that a checkpoint "
                    f"reached; it was rewritten. Restore it, or rerun with --fresh to start over"
                )
                raise SourceChangedError(msg)
            self._handle_pos += len(skipped)

    def _guard(self, path: str, read: Any, *args: Any) -> bytes:
        """Call ``read``; a corrupt or truncated compressed stream is a SourceDecodeError naming the file."""
        try:
            return read(*args)
        except (EOFError, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            compression = self._compressed(path)
            msg = (
                f"{self._source!r}: cannot decompress {path!r} as {compression} at byte "
                f"{self._handle_pos} of its content: {exc}; the file is corrupt, truncated or still "
                f"being written (write it under a hidden name and rename it when complete)"
            )
            raise SourceDecodeError(msg) from exc

    def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        self._handle_pos = 0
        if handle is not None:
            try:
                handle.close()
            except Exception:  # close must not raise; the file was only read
                log.debug("closing %r failed", handle, exc_info=True)

    def close(self) -> None:
        """Close the open file, if any."""
        self._close_handle()

    # ------------------------------------------------------------ positions and decoding

    def batch_position(self, index: int | None) -> dict[str, Any] | None:
        """Return ``{"file", "line"}`` of record ``index`` of the last batch, or ``{"file", "lines"}``.

        ``lines`` is ``[first, last]`` of the whole batch (``index`` None, when
        the caller no longer knows which line a record was). Lines count from 1;
        for Parquet, ``row`` (from 0) instead. The reader keeps byte offsets,
        not line numbers, so the line of the batch's first byte is counted
        here, on the error path only, from the last position counted.
        """
        path, start, n, kept = self._batch
        if not path:
            return None
        if self._source.format == "parquet":
            return (
                {"file": path, "rows": [start, start + n - 1]}
                if index is None
                else {"file": path, "row": start + index}
            )
        first = self._line_at(path, start)
        if index is None:
            return {"file": path, "lines": [first, first + max(n - 1, 0)]}
        return {"file": path, "line": first + (kept[index] if kept is not None else index)}

    def _line_at(self, path: str, offset: int) -> int:
        mark_path, mark, line = self._line_mark
        if mark_path != path or mark > offset:
            mark, line = 0, 1
        with self._open_new(path) as handle:
            if mark and not self._compressed(path):
                handle.seek(mark)
            elif mark:
                mark, line = 0, 1
            todo = offset - mark
            while todo > 0:
                block = handle.read(min(todo, _SKIP_BLOCK))
                if not block:
                    break
                line += block.count(b"\n")
                todo -= len(block)
        self._line_mark = (path, offset, line)
        return line

    def _decode(self, path: str, start: int, chunk: bytes) -> list[str]:
        try:
            text = chunk.decode(self._source.encoding)
        except UnicodeDecodeError as exc:
            msg = (
                f"cannot decode {path!r} as {self._source.encoding!r} at byte offset "
                f"{start + exc.start}: {exc.reason}; pass the file's encoding to "
                f"FileSource(..., encoding=...)"
                + ("" if self._compressed(path) else " (or compression= if the file is compressed)")
            )
            raise SourceDecodeError(msg) from exc
        if "\r" in text:
            # Only "\r\n" is a line ending; a lone "\r" is content (str.splitlines
            # would split on it, and on \x0b, \x1c, \u2028...).
            text = text.replace("\r\n", "\n")
        if text.endswith("\n"):
            text = text[:-1]
        return text.split("\n")


def _shown_offset(entry: dict[str, Any]) -> str:
    return "its end" if entry["offset"] == FILE_DONE else f"offset {entry['offset']}"
