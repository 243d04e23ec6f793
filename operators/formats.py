"""Record formats of files: how lines and Parquet become records, and records become files.

The one home of format encode/decode for :class:`~onceflow.operators.files.FileSource`
and :class:`~onceflow.operators.file_sink.FileSink`: compression by file
suffix, CSV/JSON-lines rows (one record per line, so a line is the unit of
offsets, positions and errors), Parquet writing by row group, and Hive-style
partition folders. Nothing here knows about checkpoints: callers keep offsets.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from typing import IO, Any
from urllib.parse import quote

from onceflow.operators.errors import SinkError, SourceDecodeError, SourceError

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "BadRow",
    "LineDecoder",
    "PartitionBy",
    "ParquetPart",
    "RowEncoder",
    "compression_of",
    "decode_header",
    "partition_folders",
    "rows_to_batch",
]

FORMATS = ("text", "csv", "jsonl", "parquet")
"""Formats a FileSource reads and a FileSink writes."""

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}
"""File suffix -> fsspec compression name, for ``compression="infer"``."""

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The folder value of a None partition value, as Hive, Spark and pyarrow write it."""

PartitionBy = list[str] | tuple[str, ...] | Callable[[Any], dict[str, Any]] | None


def check_format(owner: str, fmt: str) -> None:
    """Raise ``ValueError`` naming ``owner`` if ``fmt`` is not one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        msg = f"{owner}: format must be one of {', '.join(map(repr, FORMATS))}, got {fmt!r}"
        raise ValueError(msg)


def compression_of(owner: str, path: str, compression: str | None) -> str | None:
    """Return the fsspec compression of ``path``: by suffix for ``"infer"``, else as given.

    Raises:
        SourceError: an unknown compression, or ``zstd`` without the ``zstandard`` package.
    """
    if compression == "infer":
        suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
        compression = COMPRESSIONS.get(suffix)
    elif compression in ("none", ""):
        compression = None
    if compression is not None and compression not in COMPRESSIONS.values():
        msg = (
            f"{owner}: compression must be 'infer', None or one of "
            f"{', '.join(map(repr, COMPRESSIONS.values()))}, got {compression!r}"
        )
        raise SourceError(msg)
    if compression == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError as exc:
            msg = f"{owner}: reading {path!r} (zstd) needs the zstandard package: pip install zstandard"
            raise SourceError(msg) from exc
    return compression


# --------------------------------------------------------------------------- reading


class BadRow:
    """A line that does not decode as a record of the format: what it was, and why.

    The error is a :class:`SourceDecodeError` (user domain): the same input
    fails the same way on every attempt, so the runner does not retry it.
    """

    __slots__ = ("error", "index", "line")

    def __init__(self, index: int, line: str, error: Exception) -> None:
        self.index = index
        """Index of the line in the decoded batch."""
        self.line = line
        self.error = error


def decode_header(path: str, line: str) -> list[str]:
    """Return the column names of a CSV header line.

    Raises:
        SourceDecodeError: an empty header or a repeated name.
    """
    names = next(csv.reader([line]), [])
    if not names or len(set(names)) != len(names):
        msg = (
            f"FileSource: the CSV header of {path!r} (line 1) must name each column once, got "
            f"{line[:200]!r}; every CSV file needs a header line"
        )
        raise SourceDecodeError(msg)
    return names


class LineDecoder:
    """Turns the lines of a batch into records: ``str`` (text), dicts (csv, jsonl).

    Cost: text nothing; csv one ``csv.reader`` over the batch and one ``zip``
    per row; jsonl one ``json.loads`` per row. Blank lines of csv and jsonl
    yield no record; rows that do not decode are returned as :class:`BadRow`.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def decode(
        self, lines: list[str], header: list[str] | None
    ) -> tuple[list, list[BadRow], list[int] | None]:
        """Return ``(records, bad rows, line index of each record or None when it is its index)``."""
        if self.fmt == "text":
            return lines, [], None
        if self.fmt == "csv":
            assert header is not None, "csv needs its file's header"
            return _decode_csv(lines, header)
        return _decode_jsonl(lines)


def _decode_csv(lines: list[str], header: list[str]) -> tuple[list, list[BadRow], list[int] | None]:
    width = len(header)
    try:
        rows: list[list[str] | None] = list(csv.reader(lines, strict=True))
    except csv.Error:
        rows = []
    if len(rows) == len(lines) and all(len(row) == width for row in rows if row is not None):
        return [dict(zip(header, row, strict=True)) for row in rows if row is not None], [], None
    # Slow path, only for a batch with a bad or blank line: one reader per line,
    # so a quote left open cannot swallow the lines after it.
    records: list[dict[str, str]] = []
    bad: list[BadRow] = []
    kept: list[int] = []
    for i, line in enumerate(lines):
        try:
            row = next(csv.reader([line], strict=True), [])
        except csv.Error as exc:
            bad.append(BadRow(i, line, SourceDecodeError(f"malformed CSV row: {exc}")))
            continue
        if len(row) == width:
            kept.append(i)
            records.append(dict(zip(header, row, strict=True)))
        elif row:
            error = SourceDecodeError(
                f"CSV row has {len(row)} fields, the header has {width} ({', '.join(header)})"
            )
            bad.append(BadRow(i, line, error))
    return records, bad, kept


def _decode_jsonl(lines: list[str]) -> tuple[list, list[BadRow], list[int] | None]:
    loads = json.loads
    try:
        return [loads(line) for line in lines], [], None
    except ValueError:
        pass  # the slow path below finds which lines
    records: list[Any] = []
    bad: list[BadRow] = []
    kept: list[int] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(loads(line))
        except ValueError as exc:
            bad.append(BadRow(i, line, SourceDecodeError(f"malformed JSON: {exc}")))
            continue
        kept.append(i)
    return records, bad, kept


# --------------------------------------------------------------------------- writing


def partition_folders(owner: str, values: dict[str, Any]) -> str:
    """Return the Hive-style folders of one partition, e.g. ``"day=2024-05-01/country=NL"``.

    Values are percent-encoded as pyarrow, DuckDB and Spark decode them; None
    becomes :data:`HIVE_NULL`.

    Raises:
        SinkError: no names, or a name that is empty or holds ``/`` or ``=``.
    """
    if not isinstance(values, dict) or not values:
        msg = f"{owner}: partition_by must give a non-empty dict {{name: value}}, got {values!r}"
        raise SinkError(msg)
    parts = []
    for name, value in values.items():
        if not isinstance(name, str) or not name or "/" in name or "=" in name or name.startswith((".", "_")):
            msg = f"{owner}: partition name {name!r} must be a non-empty str without '/' or '=', not hidden"
            raise SinkError(msg)
        shown = HIVE_NULL if value is None else quote(str(value), safe="")
        parts.append(f"{name}={shown}")
    return "/".join(parts)


class RowEncoder:
    """Encodes records as the bytes of one text file (text, csv or jsonl), header included.

    One per output file: a CSV file's columns are fixed by its first record
    (or ``columns``). Cost: text one encoder call per record; csv one
    ``csv.writer`` row; jsonl one ``json.dumps``.
    """

    def __init__(
        self, owner: str, fmt: str, encoder: Callable[[Any], str], columns: list[str] | None
    ) -> None:
        self.owner = owner
        self.fmt = fmt
        self.encoder = encoder
        self.columns = list(columns) if columns else None
        self.started = False

    def encode(self, records: list) -> bytes:
        """Return the bytes of ``records``: a header first in a new CSV file."""
        if self.fmt == "text":
            text = "\n".join(map(self.encoder, records)) + "\n"
        elif self.fmt == "jsonl":
            dumps = json.dumps
            text = "".join([dumps(r, ensure_ascii=False, default=str) + "\n" for r in records])
        else:
            text = self._csv(records)
        self.started = True
        return text.encode("utf-8")

    def _csv(self, records: list) -> str:
        if self.columns is None:
            first = records[0]
            if not isinstance(first, dict):
                msg = f"{self.owner}: format='csv' writes dict records, got {type(first).__name__}: {first!r}"
                raise SinkError(msg)
            self.columns = list(first)
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, lineterminator="\n", extrasaction="raise")
        if not self.started:
            writer.writeheader()
        try:
            writer.writerows(records)
        except (ValueError, AttributeError, TypeError) as exc:
            msg = (
                f"{self.owner}: a record does not fit the CSV columns {self.columns} of this file "
                f"({exc}); give every record the same keys, or pass columns=[...]"
            )
            raise SinkError(msg) from exc
        return out.getvalue()


def rows_to_batch(records: list, schema: Any = None) -> Any:
    """Return dict ``records`` as an Arrow RecordBatch with a column for every field any record has.

    pyarrow's ``from_pylist`` takes the columns from the first record alone
    and silently drops a later record's other fields; here they get a column
    (null where a record lacks it). With ``schema``, its columns (the caller
    checks for fields it lacks). Raises what pyarrow raises for records that
    are not dicts or values that do not convert.
    """
    import pyarrow as pa

    batch = pa.RecordBatch.from_pylist(records, schema=schema)
    if schema is None and not set().union(*records).issubset(batch.schema.names):
        names = list(dict.fromkeys(name for record in records for name in record))
        batch = pa.RecordBatch.from_pydict({name: [r.get(name) for r in records] for name in names})
    return batch


class ParquetPart:
    """One Parquet file being written: rows buffered into row groups of ``row_group_size``.

    The schema is ``schema`` or the first batch's (every field any of its
    records has); later batches are cast to it. A record lacking a field gets
    null; a field the schema lacks is an error, never dropped. Cost: per
    batch one Arrow conversion (none for Arrow batches); per row group one
    ``write_table``.
    """

    def __init__(self, owner: str, handle: IO[bytes], schema: Any, row_group_size: int) -> None:
        self.owner = owner
        self.handle = handle
        self.schema = schema
        self.row_group_size = row_group_size
        self.writer: Any = None
        self.buffered: list[Any] = []
        self.rows = 0

    def add(self, records: Any) -> None:
        """Buffer a list of dicts or an Arrow batch; write full row groups."""
        import pyarrow as pa

        try:
            if type(records) is list:
                table = pa.Table.from_batches([rows_to_batch(records, self.schema)])
                # inferred, the schema has every field of the batch (rows_to_batch); given, maybe not
                extra = (
                    set().union(*records).difference(self.schema.names) if self.schema is not None else set()
                )
            else:
                table = pa.Table.from_batches([records]) if hasattr(records, "schema") else records
                extra = (
                    set(table.column_names).difference(self.schema.names)
                    if self.schema is not None
                    else set()
                )
                if self.schema is not None and table.schema != self.schema and not extra:
                    table = table.select(self.schema.names).cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError, AttributeError) as exc:
            msg = (
                f"{self.owner}: records do not convert to the Parquet schema "
                f"{self.schema if self.schema is not None else '(inferred)'}: {exc}; give every record "
                f"the same keys and types, or pass schema=pyarrow.schema([...])"
            )
            raise SinkError(msg) from exc
        if extra:
            schema = self.schema if self.schema is not None else table.schema
            msg = (
                f"{self.owner}: a record has the field(s) {sorted(extra)!r}, which the Parquet schema of "
                f"this file ({', '.join(schema.names)}) lacks; dropping them would lose data. Pass "
                f"schema=pyarrow.schema([...]) with every field (a record lacking one gets null)"
            )
            raise SinkError(msg)
        if self.schema is None:
            self.schema = table.schema
        self.buffered.append(table)
        self.rows += table.num_rows
        if self.rows >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffered:
            return
        table = pa.concat_tables(self.buffered)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.handle, self.schema)
        size = self.row_group_size
        whole = table.num_rows if final else (table.num_rows // size) * size
        if whole:
            self.writer.write_table(table.slice(0, whole), row_group_size=size)
        rest = table.slice(whole)
        self.buffered = [rest] if rest.num_rows else []
        self.rows = rest.num_rows

    def close(self) -> None:
        """Write what is buffered and the footer; the caller closes the handle."""
        self._flush(final=True)
        if self.writer is not None:
            self.writer.close()


def split_by_partition(owner: str, records: Any, partition_by: PartitionBy) -> Iterable[tuple[str, Any]]:
    """Yield ``(folders, records)`` per partition of a batch, in first-seen order.

    With a list of columns the columns are dropped from the records (the
    folders hold them, as Hive readers expect); a function's values are only
    folders. Arrow batches stay Arrow (one ``take`` per partition).
    """
    if callable(partition_by):
        rows = records if type(records) is list else records.to_pylist()
        groups: dict[str, list] = {}
        for record in rows:
            groups.setdefault(partition_folders(owner, partition_by(record)), []).append(record)
        yield from groups.items()
        return
    names = list(partition_by or ())
    if type(records) is list:
        groups = {}
        try:
            for record in records:
                folders = partition_folders(owner, {n: record[n] for n in names})
                groups.setdefault(folders, []).append({k: v for k, v in record.items() if k not in names})
        except (KeyError, TypeError) as exc:
            msg = f"{owner}: partition_by={names} needs dict records with those keys; a record lacks {exc}"
            raise SinkError(msg) from exc
        yield from groups.items()
        return
    missing = [n for n in names if n not in records.schema.names]
    if missing:
        msg = f"{owner}: partition_by columns {missing} are not in the batch's columns {records.schema.names}"
        raise SinkError(msg)
    keys = list(zip(*(records.column(n).to_pylist() for n in names), strict=True))
    indices: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        indices.setdefault(key, []).append(i)
    kept = records.select([n for n in records.schema.names if n not in names])
    for key, rows_at in indices.items():
        yield partition_folders(owner, dict(zip(names, key, strict=True))), kept.take(rows_at)


def default_row_group_size(row_group_size: int | None) -> int:
    """Return the Parquet row-group size: ``row_group_size``, else 128 Ki rows."""
    if row_group_size is None:
        return 1 << 17
    if row_group_size <= 0 or math.isinf(row_group_size):
        msg = f"row_group_size must be a positive number of rows, got {row_group_size!r}"
        raise ValueError(msg)
    return int(row_group_size)
