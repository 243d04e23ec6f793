"""State files of incremental checkpoints: segments, deltas with tombstones, compaction.

An incremental checkpoint writes only the entries changed or deleted since the
previous one. Updates hit random keys, so one percent of changed keys touches
every key group: the unit written is the entry, never the key group. Files
are still cut by key group, into *segments* of :func:`segment_width`
consecutive key groups (fixed for a job's ``max_parallelism``), so a restore
at another parallelism opens only the segments of its own range.

A file of a chain has the layout of ``arrow_snapshot``; a row whose value is
null is a tombstone (the key was deleted). Values are never null otherwise
(None is pickled). A segment's chain is one *base* (every entry, possibly
absent when the segment was empty) followed by *deltas*, applied in order;
:func:`compact` merges a chain into one new base without decoding a value,
so a restore reads a bounded number of files.

Nothing here chooses paths or decides when to compact: that is the engine's
snapshot writer (``onceflow.engine.checkpoint.writer``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from onceflow.state_backends._state_values import _ENC_PICKLE, _PICKLE_PROTOCOL
from onceflow.state_backends.arrow_snapshot import (
    _META_VALUE_ENCODING,
    _STATE_TYPE,
    StateFileHandle,
    _decode_tables,
    _value_decoder,
    read_state_table,
    state_table,
    write_table,
)
from onceflow.state_backends.key_groups import KeyGroupRange, decode_key

__all__ = [
    "SEGMENTS",
    "compact",
    "read_changes",
    "segment_width",
    "segments_of",
    "write_segments",
]

SEGMENTS = 8
"""Segments per ``max_parallelism`` key groups: few files per checkpoint, yet a
restore at parallelism up to 8 reads only its own share."""


def segment_width(max_parallelism: int) -> int:
    """Key groups per segment: ``max_parallelism // SEGMENTS`` (at least 1)."""
    return max(1, max_parallelism // SEGMENTS)


def segments_of(key_groups: KeyGroupRange, max_parallelism: int) -> list[KeyGroupRange]:
    """Cut a subtask's key-group range at segment boundaries (which every parallelism shares)."""
    width = segment_width(max_parallelism)
    cuts: list[KeyGroupRange] = []
    start = key_groups.start
    while start < key_groups.end:
        end = min(key_groups.end, (start // width + 1) * width)
        cuts.append(KeyGroupRange(start, end))
        start = end
    return cuts


def write_segments(
    fs: fsspec.AbstractFileSystem,
    path_of: Callable[[KeyGroupRange], str],
    segments: Sequence[KeyGroupRange],
    *,
    keyed_state: dict[str, dict[Any, Any]],
    deleted: dict[str, list[Any]] | None,
    operator_state: Any,
    max_parallelism: int,
    always: KeyGroupRange | None = None,
) -> dict[KeyGroupRange, StateFileHandle]:
    """Write the rows of each segment that has any to its own file; return the handles by segment.

    The table is built once (one key encoding per entry) and sliced by key
    group, since it is sorted by key group. ``always`` names the segment whose
    file is written, empty, when no segment has rows: every snapshot leaves at
    least one file, which carries the operator state.
    """
    table = state_table(
        keyed_state=keyed_state,
        operator_state=operator_state,
        max_parallelism=max_parallelism,
        deleted=deleted,
    )
    column = table["key_group"]
    written: dict[KeyGroupRange, StateFileHandle] = {}
    for segment in segments:
        lo = pc.sum(pc.less(column, segment.start)).as_py() or 0
        hi = pc.sum(pc.less(column, segment.end)).as_py() or 0
        if hi > lo:
            written[segment] = write_table(fs, path_of(segment), table.slice(lo, hi - lo))
    if not written and always is not None:
        written[always] = write_table(fs, path_of(always), table.slice(0, 0))
    return written


def read_changes(
    fs: fsspec.AbstractFileSystem,
    handle: StateFileHandle,
    key_groups: KeyGroupRange | None = None,
) -> tuple[Any, dict[str, dict[Any, Any]], dict[str, list[Any]]]:
    """Read a file of a chain: ``(operator_state, {name: {key: value}}, {name: [deleted key]})`` in range.

    Verified like any state file (size, SHA-256, footer) before anything is decoded.
    """
    operator_state, table = read_state_table(fs, handle, key_groups)
    if not table.num_rows:
        return operator_state, {}, {}
    tombstone = pc.is_null(table["value"])
    deleted: dict[str, list[Any]] = {}
    if table["value"].null_count:
        gone = table.filter(tombstone)
        table = table.filter(pc.invert(tombstone))
        names = pc.cast(gone["state"], pa.string()).to_pylist()
        for name, key in zip(names, gone["key"].to_pylist(), strict=True):
            deleted.setdefault(name, []).append(decode_key(key))
    upserts = _decode_tables(handle.path, table, _value_decoder(handle.path, table.schema.metadata))
    return operator_state, upserts, deleted


def _as_pickles(path: str, table: pa.Table, value_type: pa.DataType) -> pa.Array:
    """Return the value column of ``table`` as one pickle per value (nulls stay null), for mixed encodings."""
    metadata = table.schema.metadata
    if metadata.get(_META_VALUE_ENCODING, b"").decode() == _ENC_PICKLE:
        return pc.cast(table["value"], value_type)
    decode = _value_decoder(path, metadata)
    nulls = pc.is_null(table["value"]).to_pylist()
    values = decode(table["value"])
    return pa.array(
        [None if null else pickle.dumps(v, protocol=_PICKLE_PROTOCOL) for v, null in zip(values, nulls)],
        value_type,
    )


def compact(
    fs: fsspec.AbstractFileSystem,
    chain: Sequence[StateFileHandle],
    path: str,
) -> StateFileHandle:
    """Merge a segment's chain (base first, then deltas in order) into one base file at ``path``.

    The newest row of each (state, key) wins and tombstones drop out, all in
    Arrow (a hash group-by on state and key), so no key or value is decoded
    unless the files disagree on the value encoding (then values become
    pickles). The operator state is the newest file's.
    """
    tables = [read_state_table(fs, handle)[1] for handle in chain]
    newest = tables[-1].schema.metadata
    encodings = {t.schema.metadata.get(_META_VALUE_ENCODING) for t in tables}
    value_type = tables[-1].schema.field("value").type
    metadata = dict(newest)
    if len(encodings) > 1:
        key_type = tables[0].schema.field("key").type
        value_type = pa.binary() if pa.types.is_binary(key_type) else pa.large_binary()
        metadata[_META_VALUE_ENCODING] = _ENC_PICKLE.encode()
    parts = []
    for handle, t in zip(chain, tables, strict=True):
        values = _as_pickles(handle.path, t, value_type) if len(encodings) > 1 else t["value"]
        parts.append(
            pa.table(
                {
                    "key_group": t["key_group"],
                    "state": pc.cast(t["state"], pa.string()),
                    "key": t["key"],
                    "value": values,
                }
            )
        )
    merged = pa.concat_tables(parts, promote_options="permissive")
    merged = merged.append_column("row", pa.array(range(merged.num_rows), pa.int64()))
    last = merged.group_by(["state", "key"], use_threads=False).aggregate([("row", "max")])
    rows = last["row_max"]
    merged = merged.take(pc.take(rows, pc.sort_indices(rows)))
    merged = merged.filter(pc.is_valid(merged["value"]))
    merged = merged.take(pc.sort_indices(merged["key_group"]))
    state = pc.dictionary_encode(merged["state"]).cast(_STATE_TYPE)
    schema = pa.schema(
        [
            pa.field("key_group", pa.int32(), nullable=False),
            pa.field("state", _STATE_TYPE, nullable=False),
            pa.field("key", merged.schema.field("key").type, nullable=False),
            pa.field("value", value_type),
        ],
        metadata=metadata,
    )
    result = pa.Table.from_arrays(
        [merged["key_group"], state, merged["key"], merged["value"].cast(value_type)], schema=schema
    )
    return write_table(fs, path, result)
