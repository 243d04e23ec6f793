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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onceflow.state_backends._state_values import (
    _ENC_PICKLE,
    _ENC_TUPLE,
    _PICKLE_PROTOCOL,
    _as_bytes,
    _decode_keys,
    _restored_table,
)
from onceflow.state_backends.arrow_snapshot import (
    _FORMAT_VERSION,
    _META_FORMAT,
    _META_VALUE_ENCODING,
    _STATE_TYPE,
    _TUPLE_FORMAT_VERSION,
    StateFileHandle,
    _decode_tables,
    _value_decoder,
    read_state_table,
    state_table,
    write_batches,
    write_table,
    write_view,
)
from onceflow.state_backends.disk import DiskSnapshot
from onceflow.state_backends.errors import CorruptStateError
from onceflow.state_backends.key_groups import KeyGroupRange, decode_key

__all__ = [
    "SEGMENTS",
    "compact",
    "merge_changes",
    "read_changes",
    "segment_width",
    "segments_of",
    "write_segments",
    "write_view_segments",
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
    # One search for every segment's rows (the table is sorted by key group): Arrow compute calls
    # per segment release and retake the GIL each, which a writer thread beside processing pays for.
    groups = table["key_group"].to_numpy()
    bounds = np.searchsorted(groups, [(s.start, s.end) for s in segments]).tolist()
    written: dict[KeyGroupRange, StateFileHandle] = {}
    made_dirs: set[str] = set()
    for segment, (lo, hi) in zip(segments, bounds, strict=True):
        if hi > lo:
            rows = table.slice(lo, hi - lo)
            written[segment] = write_table(fs, path_of(segment), rows, made_dirs=made_dirs)
    if not written and always is not None:
        written[always] = write_table(fs, path_of(always), table.slice(0, 0))
    return written


def write_view_segments(
    fs: fsspec.AbstractFileSystem,
    path_of: Callable[[KeyGroupRange], str],
    segments: Sequence[KeyGroupRange],
    *,
    view: DiskSnapshot,
    operator_state: Any,
    always: KeyGroupRange | None = None,
) -> dict[KeyGroupRange, StateFileHandle]:
    """:func:`write_segments` for a disk backend's view (every entry, or a delta): streamed per segment.

    The view is read one record batch at a time within each segment, so
    memory does not grow with the state; it is left open for the caller.
    """
    written: dict[KeyGroupRange, StateFileHandle] = {}
    for segment in segments:
        if view.has_rows(segment):
            written[segment] = write_view(fs, path_of(segment), view, operator_state, segment)
    if not written and always is not None:
        written[always] = write_view(fs, path_of(always), view, operator_state, KeyGroupRange(0, 0))
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


def merge_changes(tables: Sequence[tuple[str, pa.Table]]) -> dict[str, dict[Any, Any]]:
    """Apply the files of chains, oldest first, and decode the result: ``{name: {key: value}}``.

    ``tables`` are ``(path, rows)`` as :func:`read_state_table` returns them,
    in the order the files apply (bases before the deltas built on them).
    Which row of a key survives is decided in Arrow before anything becomes
    a Python object: the newest row per (state, key) wins and tombstones drop
    out (:func:`_newest_rows`). So
    a restore decodes each live entry once, in bulk per column, instead of
    decoding every version of it and updating dicts file by file.
    """
    parts: dict[str, list[tuple[str, pa.Table]]] = {}
    for path, table in tables:
        if not table.num_rows:
            continue
        state = table["state"].combine_chunks()
        names = state.dictionary.to_pylist()
        for index, name in enumerate(names):
            part = table if len(names) == 1 else table.filter(pc.equal(state.indices, index))
            if part.num_rows:
                parts.setdefault(name, []).append((path, part))
    result: dict[str, dict[Any, Any]] = {}
    for name, chain in parts.items():
        live: dict[Any, Any] = {}
        for path, part in _by_encoding(_newest_rows(chain)):
            try:
                keys = _decode_keys(part["key"])
            except ValueError as exc:
                msg = f"state file {path!r}: state {name!r} holds a malformed key: {exc}"
                raise CorruptStateError(msg) from exc
            values = _value_decoder(path, part.schema.metadata)(part["value"])
            if live:
                live.update(zip(keys, values, strict=True))
            else:
                live = _restored_table(keys, values)
        if live:
            result[name] = live
    return result


def _by_encoding(kept: list[tuple[str, pa.Table]]) -> list[tuple[str, pa.Table]]:
    """Concatenate the surviving rows of files that share a value encoding, so each column decodes once.

    The path named with a group (for error messages) is its first file's.
    """
    groups: dict[tuple[bytes, pa.DataType], list[tuple[str, pa.Table]]] = {}
    for path, part in kept:
        if part.num_rows:
            metadata = part.schema.metadata
            encoding = (metadata.get(_META_VALUE_ENCODING, b""), part.schema.field("value").type)
            groups.setdefault(encoding, []).append((path, part))
    merged = []
    for group in groups.values():
        path = group[0][0]
        if len(group) == 1:
            merged.append((path, group[0][1]))
            continue
        table = pa.concat_tables(
            [part.select(["key", "value"]).cast(_key_value_schema(part)) for _, part in group]
        ).replace_schema_metadata(group[-1][1].schema.metadata)
        merged.append((path, table))
    return merged


def _key_value_schema(part: pa.Table) -> pa.Schema:
    return pa.schema([pa.field("key", pa.large_binary()), pa.field("value", part.schema.field("value").type)])


def _first_occurrences(keys: pa.Array | pa.ChunkedArray) -> tuple[pa.BooleanArray, pa.Array]:
    """Return, for each row, whether its key occurs in no earlier row; and the distinct keys.

    A dictionary encoding numbers keys in order of first occurrence, so a row
    is a first occurrence exactly when its number exceeds every number before
    it (a running maximum): one hash pass, no aggregation. Its dictionary is
    the distinct keys, so a caller that needs them hashes nothing again.
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()  # one dictionary for all rows
    if not len(keys):
        return pa.array([], pa.bool_()), keys
    encoded = pc.dictionary_encode(keys)
    numbers = encoded.indices
    seen = pc.cumulative_max(numbers)
    before = pa.concat_arrays([pa.array([-1], numbers.type), seen.slice(0, len(seen) - 1)])
    return pc.greater(numbers, before), encoded.dictionary


def _newest_rows(chain: list[tuple[str, pa.Table]]) -> list[tuple[str, pa.Table]]:
    """Keep, of one state's files in order, the newest non-tombstone row of each key; keys never repeat.

    A key lives in one key group, so files whose key groups do not overlap
    (other segments, other old subtasks) never hold the same key: the files
    are cut into groups of overlapping key-group spans (:func:`_overlapping`),
    each merged on its own. Within a group the oldest file (the base, usually
    nearly all the rows) is never hashed as a whole: the newer files' keys are
    deduplicated among themselves (first occurrences, newest first, see
    :func:`_first_occurrences`, which also yields them without repeats), and
    the oldest file keeps the rows whose key none of those is (``is_in``: one
    probe per row).
    """
    kept: list[tuple[str, pa.Table]] = []
    for group in _overlapping(chain):
        oldest_path, oldest = group[0]
        newer = group[1:]
        if newer:
            newest_first = newer[::-1]
            keys = pa.chunked_array(
                [chunk for _, part in newest_first for chunk in part["key"].cast(pa.large_binary()).chunks],
                pa.large_binary(),
            )
            first, distinct = _first_occurrences(keys)
            offset = 0
            for path, part in newest_first:
                rows = part.num_rows
                newest = pc.and_(first.slice(offset, rows), pc.is_valid(part["value"]))
                kept.append((path, part.filter(newest)))
                offset += rows
            shadowed = pc.is_in(oldest["key"].cast(pa.large_binary()), value_set=distinct)
            oldest = oldest.filter(pc.and_(pc.invert(shadowed), pc.is_valid(oldest["value"])))
        else:
            oldest = oldest.filter(pc.is_valid(oldest["value"]))
        kept.append((oldest_path, oldest))
    return kept


def _overlapping(chain: list[tuple[str, pa.Table]]) -> list[list[tuple[str, pa.Table]]]:
    """Cut files (in the order they apply) into groups of overlapping key-group spans, each in that order."""
    spans = []
    for index, (_, table) in enumerate(chain):
        bounds = pc.min_max(table["key_group"]).as_py()
        spans.append((bounds["min"], bounds["max"], index))
    spans.sort()
    groups: list[list[int]] = []
    reach = -1
    for low, high, index in spans:
        if not groups or low > reach:
            groups.append([])
        groups[-1].append(index)
        reach = max(reach, high)
    return [[chain[i] for i in sorted(group)] for group in groups]


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


def _state_and_key(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    """Return what identifies an entry: the key, after the state's number (4 bytes) when there are several."""
    if len(pc.unique(table["state"])) <= 1:
        return table["key"].cast(pa.large_binary())
    encoded = pc.dictionary_encode(table["state"])
    numbers = pa.chunked_array([chunk.indices for chunk in encoded.chunks], pa.int32()).combine_chunks()
    keys = table["key"].cast(pa.large_binary()).combine_chunks()
    return pc.binary_join_element_wise(_as_bytes(numbers, 4), keys, pa.scalar(b"", pa.large_binary()))


_COMPACT_ROWS = 1 << 18
"""Rows of a chain merged at once: a compaction holds its input files and one such slice of key
groups in flight, not copies of the whole segment (at 10,000,000 keys on the disk backend, merging
a segment whole took ~400 MiB beside ~60 MiB of input)."""


def compact(
    fs: fsspec.AbstractFileSystem,
    chain: Sequence[StateFileHandle],
    path: str,
) -> StateFileHandle:
    """Merge a segment's chain (base first, then deltas in order) into one base file at ``path``.

    The newest row of each (state, key) wins and tombstones drop out, all in
    Arrow (:func:`_first_occurrences` over the files newest first), so no key or value is decoded
    unless the files disagree on the value encoding (then values become
    pickles). The operator state is the newest file's. A key lives in one key
    group, so the chain is merged a slice of key groups at a time
    (:data:`_COMPACT_ROWS`) and written as it goes.
    """
    tables = [read_state_table(fs, handle)[1] for handle in chain]
    newest = tables[-1].schema.metadata
    # tuple-encoded files agree only if their structs do: ((str, int) in one, (str, float) in another)
    encodings = {
        (enc, t.schema.field("value").type if enc == _ENC_TUPLE.encode() else None)
        for t in tables
        for enc in [t.schema.metadata.get(_META_VALUE_ENCODING)]
    }
    value_type = tables[-1].schema.field("value").type
    metadata = dict(newest)
    if len(encodings) > 1:
        key_type = tables[0].schema.field("key").type
        value_type = pa.binary() if pa.types.is_binary(key_type) else pa.large_binary()
        metadata[_META_VALUE_ENCODING] = _ENC_PICKLE.encode()
        if metadata.get(_META_FORMAT) == _TUPLE_FORMAT_VERSION:  # no tuple column left in it
            metadata[_META_FORMAT] = _FORMAT_VERSION
    # The state names: the files' dictionaries (a few strings), not their rows.
    names = pc.unique(
        pa.concat_arrays(
            [c.dictionary for t in tables for c in t["state"].chunks] or [pa.array([], pa.string())]
        )
    )
    parts = []
    for handle, t in zip(chain, tables, strict=True):
        values = _as_pickles(handle.path, t, value_type) if len(encodings) > 1 else t["value"]
        state = pc.cast(t["state"], pa.string())
        part = pa.table({"key_group": t["key_group"], "state": state, "key": t["key"], "value": values})
        if part.num_rows and not _sorted_by_key_group(part):
            part = part.take(pc.sort_indices(part["key_group"]))
        parts.append(part)
    del tables
    key_groups = [p["key_group"].to_numpy() for p in parts]  # sorted: a slice's rows by binary search
    schema = pa.schema(
        [
            pa.field("key_group", pa.int32(), nullable=False),
            pa.field("state", _STATE_TYPE, nullable=False),
            pa.field("key", parts[-1].schema.field("key").type, nullable=False),
            pa.field("value", value_type),
        ],
        metadata=metadata,
    )

    def merged_slices() -> Iterator[pa.Table]:
        for lo, hi in _key_group_slices(key_groups, _COMPACT_ROWS):
            pieces = [  # newest first
                p.slice(at, end - at)
                for p, groups in zip(reversed(parts), reversed(key_groups), strict=True)
                for at, end in [np.searchsorted(groups, (lo, hi)).tolist()]
            ]
            merged = pa.concat_tables(pieces, promote_options="permissive")
            first, _ = _first_occurrences(_state_and_key(merged))
            # The live rows, by key group, gathered in one take (filtering first would copy them twice).
            live = pc.indices_nonzero(pc.and_(first, pc.is_valid(merged["value"])))
            if hi - lo > 1:
                live = live.take(pc.sort_indices(pc.take(merged["key_group"], live)))
            merged = merged.take(live)
            ids = pc.index_in(merged["state"], names).combine_chunks()
            state = pa.DictionaryArray.from_arrays(ids, names)
            yield pa.Table.from_arrays(
                [merged["key_group"], state, merged["key"], merged["value"].cast(value_type)], schema=schema
            )

    return write_batches(fs, path, schema, merged_slices())


def _sorted_by_key_group(table: pa.Table) -> bool:
    column = table["key_group"].combine_chunks()
    return len(column) < 2 or pc.all(pc.less_equal(column[:-1], column[1:])).as_py()


def _key_group_slices(key_groups: Sequence[np.ndarray], rows: int) -> list[tuple[int, int]]:
    """Cut the key groups present in ``key_groups`` into ranges ``[lo, hi)`` of about ``rows`` rows each."""
    present = [groups for groups in key_groups if len(groups)]
    if not present:
        return []
    width = max(int(groups[-1]) for groups in present) + 1  # each sorted
    per_group = np.zeros(width, dtype=np.int64)
    for groups in present:
        per_group += np.bincount(groups, minlength=width)
    slices: list[tuple[int, int]] = []
    lo: int | None = None
    held = 0
    for group in np.flatnonzero(per_group).tolist():
        count = int(per_group[group])
        if lo is None:
            lo = group
        elif held + count > rows:
            slices.append((lo, group))
            lo, held = group, 0
        held += count
    assert lo is not None
    slices.append((lo, width))
    return slices
