"""Records into table rows for the PostgreSQL sink: dicts, tuples and Arrow batches into column runs.

Pure: no connection, no SQL. A run is ``(columns, rows)``: consecutive records
with the same column list, so each run is one ``COPY`` or one ``executemany``.
A record that cannot fit the table is a :class:`PostgresSinkError` that shows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onceflow.operators._postgres_errors import PostgresSinkError, shorten

Run = tuple[tuple[str, ...], list[Any]]
"""``(columns, rows)``: rows are tuples in the order of ``columns``."""

_COPY_LINE = re.compile(r"\bCOPY\b.*?, line (\d+)")


@dataclass(frozen=True)
class RowShape:
    """What records must look like for one sink subtask.

    Args:
        columns: the columns tuple records fill, in order.
        table_columns: every writable column of the table.
        key_columns: upsert mode: the columns every record must carry (else empty).
        where: names the sink in messages.
    """

    columns: tuple[str, ...]
    table_columns: frozenset[str]
    key_columns: tuple[str, ...]
    where: str

    def runs(self, records: Any) -> list[Run]:
        """Split records into runs of equal column lists: ``[(columns, rows)]``, in order.

        Raises:
            PostgresSinkError: a record of another type, a tuple of the wrong
                width, an unknown column, or (upsert) a missing key column.
        """
        batches = [records] if is_arrow(records) else None
        if batches is None and records and is_arrow(records[0]):
            batches = list(records)
        if batches is not None:
            return self._arrow_runs(batches)
        width = len(self.columns)
        runs: list[Run] = []
        current: tuple[str, ...] | None = None
        rows: list[Any] = []
        for record in records:
            columns: tuple[str, ...]
            if isinstance(record, dict):
                columns = tuple(record)
                if columns != current:
                    self.check_columns(columns, record)
                row: Sequence[Any] = tuple(record.values())
            elif isinstance(record, tuple | list):
                if len(record) != width:
                    msg = (
                        f"{self.where}: record {shorten(record)} has {len(record)} fields, but "
                        f"the sink writes {width} columns {list(self.columns)}; pass a dict, or "
                        f"columns=[...] to PostgresSink"
                    )
                    raise PostgresSinkError(msg)
                columns, row = self.columns, record
            else:
                msg = (
                    f"{self.where}: record {shorten(record)} of type {type(record).__name__} "
                    f"cannot be written; records must be dicts, tuples or Arrow record batches"
                )
                raise PostgresSinkError(msg)
            if columns != current:
                if rows and current is not None:
                    runs.append((current, rows))
                current, rows = columns, []
            rows.append(row)
        if rows and current is not None:
            runs.append((current, rows))
        return runs

    def _arrow_runs(self, batches: list[Any]) -> list[Run]:
        runs: list[Run] = []
        for batch in batches:
            names = tuple(batch.schema.names)
            self.check_columns(names, batch)
            rows = list(zip(*(column.to_pylist() for column in batch.columns)))
            if rows:
                runs.append((names, rows))
        return runs

    def check_columns(self, columns: tuple[str, ...], record: Any) -> None:
        """Raise unless every column exists in the table and (upsert) every key column is present."""
        unknown = [c for c in columns if c not in self.table_columns]
        if unknown or not columns:
            msg = (
                f"{self.where}: record {shorten(record)} does not fit the table: "
                f"{'no column ' + ', '.join(map(repr, unknown)) if unknown else 'no columns'} "
                f"(the table's columns are {sorted(self.table_columns)})"
            )
            raise PostgresSinkError(msg)
        missing = [k for k in self.key_columns if k not in columns]
        if missing:
            msg = (
                f"{self.where}: record {shorten(record)} lacks the key column(s) {missing} that upsert needs"
            )
            raise PostgresSinkError(msg)


class UpsertBuffer:
    """Upsert mode: the merged row of every key written since the last barrier.

    Rows are merged as sequential upserts would: later values win, column by
    column. Cost: one dict lookup and one dict update per record.
    """

    def __init__(self, key_columns: Sequence[str], where: str) -> None:
        self.key_columns = list(key_columns)
        self.where = where
        self.rows: dict[Any, dict[str, Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(self, runs: list[Run]) -> None:
        """Merge runs into the buffer, by the values of their key columns."""
        buffer = self.rows
        for columns, rows in runs:
            positions = [columns.index(k) for k in self.key_columns]
            for row in rows:
                try:
                    key = tuple(row[p] for p in positions)
                    merged = buffer.get(key)
                except TypeError as exc:
                    msg = (
                        f"{self.where}: record {shorten(dict(zip(columns, row)))} has an "
                        f"unhashable value in the key columns {self.key_columns}"
                    )
                    raise PostgresSinkError(msg) from exc
                if merged is None:
                    buffer[key] = dict(zip(columns, row))
                else:
                    merged.update(zip(columns, row))

    def take(self) -> dict[Any, dict[str, Any]]:
        """Empty the buffer; return what it held."""
        rows, self.rows = self.rows, {}
        return rows

    def put_back(self, older: dict[Any, dict[str, Any]]) -> None:
        """Put back the rows of a rolled-back transaction, under the rows written since."""
        newer, self.rows = self.rows, older
        for key, row in newer.items():
            if key in older:
                older[key].update(row)
            else:
                older[key] = row


def runs_by_columns(rows: dict[Any, dict[str, Any]]) -> list[Run]:
    """Group merged rows by their column lists: one statement per list."""
    runs: dict[tuple[str, ...], list[Any]] = {}
    for row in rows.values():
        runs.setdefault(tuple(row), []).append(tuple(row.values()))
    return list(runs.items())


def copy_line_record(exc: BaseException, rows: list[Any]) -> Any:
    """Return the row that a ``COPY`` error names by line number (1-based), if any."""
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    match = _COPY_LINE.search(context)
    if match and 0 < int(match.group(1)) <= len(rows):
        return rows[int(match.group(1)) - 1]
    return None


def is_arrow(value: Any) -> bool:
    """Tell an Arrow record batch (or table) from a list of records, without importing pyarrow."""
    module = type(value).__module__
    return module.startswith("pyarrow") and hasattr(value, "schema") and hasattr(value, "columns")
