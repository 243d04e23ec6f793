"""Files in and out, on any fsspec filesystem, with exactly-once output.

:class:`FileSource` reads text lines, CSV or JSON-lines rows, or Parquet row
groups, from files that may be compressed (``.gz``, ``.zst``, ``.bz2``), and
resumes mid-file; with ``watch=True`` it follows a landing folder. Its reader
lives in :mod:`onceflow.operators.file_reader`, formats in
:mod:`onceflow.operators.formats`. :class:`FileSink` writes the same formats
and makes them visible only when the checkpoint covering them completes
(two-phase commit over file renames). This module does not schedule anything:
the engine calls the life-cycle hooks of :mod:`onceflow.operators.base`.

Names in a sink directory (``<n>`` is a checkpoint id)::

    [name=value/...]part-<subtask:05d>-<n:010d><suffix>  committed output, the only visible files
    .<uid>-<subtask>-<attempt>-<seq>.inprogress         open transaction, since the last barrier
    .part-<subtask:05d>-<n:010d>.<attempt>.pending      pre-committed at barrier <n>, not yet visible
    _onceflow_sink.json                                 which job and sink own the directory

Readers (pyarrow.dataset, DuckDB, Spark, and a :class:`FileSource` pointed at
the directory) skip names that start with ``.`` or ``_``, so only committed
output is ever read.
"""

from __future__ import annotations

import math

from onceflow.operators._file_paths import (
    FILE_DONE,
    MARKER_NAME,
    resolve_input,
)
from onceflow.operators.base import Source
from onceflow.operators.errors import SourceError
from onceflow.operators.file_reader import FileIdentity, FileSourceReader
from onceflow.operators.file_sink import FileSink, FileSinkWriter, read_committed_lines
from onceflow.operators.formats import check_format

__all__ = [
    "FILE_DONE",
    "MARKER_NAME",
    "FileIdentity",
    "FileSink",
    "FileSinkWriter",
    "FileSource",
    "FileSourceReader",
    "read_committed_lines",
]


class FileSource(Source):
    r"""Read files as text lines, CSV/JSON-lines rows (dicts) or Parquet rows (Arrow batches).

    Files are read in sorted path order and dealt to subtasks round-robin: file
    ``i`` goes to subtask ``i % parallelism`` (with ``watch``, by a stable hash
    of the path). Offsets are per file (bytes of the uncompressed text, or rows
    of a Parquet file), so a restore resumes mid-file, at any parallelism; in a
    compressed file the restore decompresses again up to the offset.

    Args:
        path: a file, a directory (every file below it whose path has no part
            starting with ``.`` or ``_``) or a glob; a local path or any fsspec URL.
        format: ``"text"`` (``str`` lines without line endings), ``"csv"``
            (a dict per row, keys from the file's header line, values ``str``),
            ``"jsonl"`` (the JSON value of each line) or ``"parquet"`` (Arrow
            record batches: rows as dicts to ``map``, the batch as is to
            ``map_batches(arrow=True)``). CSV and JSON lines hold one record per
            line (a quoted CSV field cannot span lines); blank lines are skipped.
            A row that does not decode fails the run naming the file and line,
            or with ``job.source(..., on_error="dead_letter")`` becomes a dead letter.
        compression: ``"infer"`` (by suffix: ``.gz``, ``.zst``, ``.bz2``),
            None, ``"gzip"``, ``"zstd"`` or ``"bz2"``; not for Parquet, which
            compresses inside the file.
        encoding: the text encoding; it must encode ``"\n"`` as the byte
            ``0x0A`` (UTF-8, Latin-1, ASCII...), because lines are split on bytes
            before decoding.
        read_size: about how many bytes of whole lines one batch reads.
        columns: Parquet only: read just these columns.
        watch: keep running and read every new file that appears below
            ``path`` (a directory), each exactly once across restarts; a file is
            taken once its size and modification time held still over one
            ``poll_interval`` (writers should rather write under a hidden name,
            ``.name`` or ``_name``, and rename it in). Ends with a graceful stop
            (SIGTERM/SIGINT).
        poll_interval: seconds between listings of a watched directory.

    Raises:
        SourceError: an unknown format, compression or encoding, an encoding
            that is not ASCII-compatible, or a bad ``read_size``/``poll_interval``.
    """

    bounded = True

    def __init__(
        self,
        path: str,
        *,
        format: str = "text",  # noqa: A002 - the word users expect, as in pandas and pyarrow
        compression: str | None = "infer",
        encoding: str = "utf-8",
        read_size: int = 65536,
        columns: list[str] | None = None,
        watch: bool = False,
        poll_interval: float = 1.0,
    ) -> None:
        try:
            check_format(f"FileSource({path!r})", format)
            newline = "\n".encode(encoding)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
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
        if not (poll_interval > 0 and math.isfinite(poll_interval)):
            msg = f"FileSource({path!r}): poll_interval must be positive seconds, got {poll_interval!r}"
            raise SourceError(msg)
        if format == "parquet" and compression not in ("infer", None, "none"):
            msg = (
                f"FileSource({path!r}): Parquet files compress inside the file; drop "
                f"compression={compression!r}"
            )
            raise SourceError(msg)
        if columns is not None and format != "parquet":
            msg = (
                f"FileSource({path!r}): columns= selects Parquet columns; with format={format!r} map the rows"
            )
            raise SourceError(msg)
        self.path = path
        self.format = format
        self.compression = None if format == "parquet" else compression
        self.encoding = encoding
        self.read_size = read_size
        self.columns = list(columns) if columns is not None else None
        self.watch = bool(watch)
        self.poll_interval = float(poll_interval)
        self.bounded = not self.watch

    def list_files(self) -> list[str]:
        """Return the files this source reads now, in reading order (filesystem paths)."""
        return resolve_input(self.path, allow_empty=self.watch)[1]

    def create_reader(self, subtask_index: int, parallelism: int) -> FileSourceReader:
        """Return the reader of the files dealt to ``subtask_index``; it lists them on ``open``."""
        return FileSourceReader(self, subtask_index, parallelism)

    def __repr__(self) -> str:
        shown = "" if self.format == "text" else f", format={self.format!r}"
        return f"FileSource({self.path!r}{shown}{', watch=True' if self.watch else ''})"
