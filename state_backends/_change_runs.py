"""The changes a disk backend wrote out since its last incremental capture, kept in files, not in memory.

Every write of the database (an eviction, mostly) appends the entries it
wrote that changed since the last capture, pickled, as one Arrow record
batch to the current run file (``key``: the database key, ``value``: the
pickle, null for a delete). A capture seals the file; the delta it starts is
then read back from the file one key-group range (segment) at a time, so the
process's memory holds neither the changed keys of a whole interval nor their
values (a key written several times is in the file several times: the newest
row wins, see :func:`newest_rows`), and the delta needs no database read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

BATCH_ROWS = 1 << 16
"""Changes buffered in memory before they are appended to the file as one record batch."""
SCHEMA = pa.schema([pa.field("key", pa.large_binary(), nullable=False), pa.field("value", pa.large_binary())])

Layer: TypeAlias = "str | pa.Table"
"""One step of a delta, in the order changes apply: a sealed run file's path, or rows in memory."""


class ChangeRun:
    """The run file that collects a state's changes until the next capture seals it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sequence = 0
        self._path: str | None = None
        self._sink: pa.OSFile | None = None
        self._writer: ipc.RecordBatchStreamWriter | None = None
        self._keys: list[bytes] = []
        self._values: list[bytes | None] = []

    def append(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """Append changed entries (in any order; a later row of a key wins over an earlier one)."""
        self._keys.extend(keys)
        self._values.extend(values)
        if len(self._keys) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        keys, values = self._keys, self._values
        if not keys:
            return
        self._keys, self._values = [], []
        if self._writer is None:
            self._sequence += 1
            self._path = os.path.join(self.directory, f"changes-{self._sequence}.arrows")
            self._sink = pa.OSFile(self._path, "wb")
            self._writer = ipc.new_stream(self._sink, SCHEMA)
        batch = pa.RecordBatch.from_arrays(
            [pa.array(keys, pa.large_binary()), pa.array(values, pa.large_binary())], schema=SCHEMA
        )
        self._writer.write_batch(batch)

    def seal(self) -> str | None:
        """Close the current file and return its path (None: nothing changed); the caller owns it."""
        self._flush()
        path = self._path
        self._close()
        return path

    def discard(self) -> None:
        """Drop the changes collected so far (a full capture or a restore stands for them)."""
        self._keys, self._values = [], []
        path = self.seal()
        if path is not None:
            with contextlib.suppress(OSError):
                os.remove(path)

    def _close(self) -> None:
        writer, sink = self._writer, self._sink
        self._writer = self._sink = None
        self._path = None
        if writer is not None:
            writer.close()
        if sink is not None:
            sink.close()


def as_layer(overlay: dict[bytes, bytes | None]) -> pa.Table:
    """Rows in memory (changes pickled at a capture) as a layer."""
    return pa.table(
        [pa.array(list(overlay), pa.large_binary()), pa.array(list(overlay.values()), pa.large_binary())],
        schema=SCHEMA,
    )


def rows_in_range(layers: Sequence[Layer], start: bytes, end: bytes) -> pa.Table:
    """Return the rows of ``layers`` (in order) with a key in ``[start, end)``, a batch at a time."""
    lo = pa.scalar(start, pa.large_binary())
    hi = pa.scalar(end, pa.large_binary())
    parts: list[pa.Table] = []

    def keep(rows: pa.Table | pa.RecordBatch) -> None:
        if rows.num_rows:
            mask = pc.and_(pc.greater_equal(rows["key"], lo), pc.less(rows["key"], hi))
            kept = rows.filter(mask)
            if kept.num_rows:
                parts.append(kept if isinstance(kept, pa.Table) else pa.Table.from_batches([kept]))

    for layer in layers:
        if isinstance(layer, pa.Table):
            keep(layer)
            continue
        with pa.OSFile(layer, "rb") as source:
            for batch in ipc.open_stream(source):
                keep(batch)
    if not parts:
        return SCHEMA.empty_table()
    return pa.concat_tables(parts)


def newest_rows(rows: pa.Table) -> pa.Table:
    """Sort ``rows`` by key, keeping of each key its last row (the newest; a null value: a tombstone)."""
    count = rows.num_rows
    if count < 2:
        return rows
    rows = rows.take(pc.sort_indices(rows, sort_keys=[("key", "ascending")]))  # stable: ties stay in order
    keys = rows["key"].combine_chunks()
    last = pc.not_equal(keys.slice(0, count - 1), keys.slice(1))
    return rows.filter(pa.concat_arrays([last, pa.array([True])]))


def remove(layers: Sequence[Layer]) -> None:
    """Delete the run files among ``layers``; never raises."""
    for layer in layers:
        if isinstance(layer, str):
            with contextlib.suppress(OSError):
                os.remove(layer)
