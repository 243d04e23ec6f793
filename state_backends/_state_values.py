"""How state values and keys become Arrow columns and come back: the encodings of a state file.

``arrow_snapshot`` (full state files) and ``changelog`` (incremental deltas)
write and read the same columns; this module is the one home of the value
encodings (typed Arrow where every value has exactly one plain type, a struct
column where every value is a flat tuple of one shape of plain types, pickle
otherwise), the messages for values that cannot be pickled, and the fast
decoding of key columns.
"""

from __future__ import annotations

import pickle
import sys
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onceflow.state_backends.errors import StateSerializationError
from onceflow.state_backends.key_groups import decode_key, encode_key

_PICKLE_PROTOCOL = 5

_ENC_INT64 = "int64"
_ENC_FLOAT64 = "float64"
_ENC_STRING = "string"
_ENC_BINARY = "binary"
_ENC_PICKLE = "pickle"
_ENC_TUPLE = "tuple"
"""Flat tuples, all of one length, each position of one plain type: a struct column of typed fields.

Keyed state is most often such tuples (a reduce's ``(word, count)``, an
aggregate's ``(sum, n)``). As a struct, 10,000 ``(str, int)`` took 42-65% of
the time of one pickle per value to write (on the writer thread, which holds
the GIL for it), about 40% to decode, and 63% of the bytes; a reader of the
file without onceflow sees their fields. The type of the column is the file's own (the
fields' types differ between states and files), not in ``_ARROW_TYPES``.
"""

_ARROW_TYPES = {
    _ENC_INT64: pa.int64(),
    _ENC_FLOAT64: pa.float64(),
    _ENC_STRING: pa.large_string(),
    _ENC_BINARY: pa.large_binary(),
    _ENC_PICKLE: pa.large_binary(),
}
_ENCODINGS = frozenset([*_ARROW_TYPES, _ENC_TUPLE])
"""Every value encoding a state file may name."""
_FIELD_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.large_string(), bytes: pa.large_binary()}
"""The plain types a position of a tuple may hold in a struct column (exact types, as for values)."""
_MAX_TUPLE_FIELDS = 64


def _value_encoding(values: list[Any]) -> str:
    """Pick the narrowest Arrow encoding that holds every value exactly.

    Exact type checks, not isinstance: a bool or an int subclass stored as int64
    would come back as a plain int, so those go through pickle.
    """
    if not values:
        return _ENC_INT64
    types = set(map(type, values))  # one C-level pass, not a Python test per value
    if len(types) == 1:
        only = types.pop()
        if only is int:
            return _ENC_INT64
        if only is float:
            return _ENC_FLOAT64
        if only is str:
            return _ENC_STRING
        if only is bytes:
            return _ENC_BINARY
        if only is tuple:
            return _ENC_TUPLE  # if every tuple has one shape of plain types (see _tuple_array)
    return _ENC_PICKLE


def _value_array(values: list[Any]) -> tuple[str, pa.Array]:
    encoding = _value_encoding(values)
    if encoding == _ENC_TUPLE:
        array = _tuple_array(values)
        if array is not None:
            return encoding, array
        encoding = _ENC_PICKLE
    if encoding == _ENC_INT64:
        try:
            return encoding, pa.array(values, pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            encoding = _ENC_PICKLE  # An int beyond int64.
    if encoding == _ENC_PICKLE:
        dumps = pickle.dumps
        return encoding, pa.array([dumps(v, protocol=_PICKLE_PROTOCOL) for v in values], pa.large_binary())
    return encoding, pa.array(values, _ARROW_TYPES[encoding])


def _tuple_array(values: list[tuple]) -> pa.StructArray | None:
    """Flat tuples as a struct column (field ``"i"`` for position ``i``); None if they do not fit one.

    They fit when every tuple has the same length (1 to 64) and each position
    holds one exact type of int (within int64), float, str (valid UTF-8) or
    bytes, so every value comes back equal and of the same types. One C-level
    pass per position checks the types; anything else (a bool, None, a nested
    tuple, a namedtuple, a huge int) is left to pickle.
    """
    lengths = set(map(len, values))
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    if not 0 < n <= _MAX_TUPLE_FIELDS:
        return None
    fields = []
    for i in range(n):
        items = list(map(itemgetter(i), values))
        types = set(map(type, items))
        arrow_type = _FIELD_TYPES.get(types.pop()) if len(types) == 1 else None
        if arrow_type is None:
            return None
        try:
            fields.append(pa.array(items, arrow_type))
        except (OverflowError, UnicodeError, pa.ArrowInvalid):  # beyond int64, a lone surrogate
            return None
    return pa.StructArray.from_arrays(fields, names=[str(i) for i in range(n)])


def _decode_tuples(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """Decode a struct column of :data:`_ENC_TUPLE` back into tuples (a null row, a tombstone, is None)."""
    out: list[Any] = []
    for chunk in _chunks(column):
        if (
            not pa.types.is_struct(chunk.type)
            or not chunk.type.num_fields
            or not all(
                chunk.type.field(i).type in _FIELD_TYPES.values() for i in range(chunk.type.num_fields)
            )
        ):
            msg = f"a tuple-encoded value column must be a struct of plain types, not {chunk.type}"
            raise ValueError(msg)
        rows: list[Any] = list(zip(*(chunk.field(i).to_pylist() for i in range(chunk.type.num_fields))))
        if chunk.null_count:
            for i in np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False)).tolist():
                rows[i] = None
        out += rows
    return out


_PICKLE_HINT = (
    "keep plain data in state (numbers, strings, tuples, lists, dicts, dataclasses), not locks, "
    "open files, connections, generators or lambdas"
)


def _unpicklable_value(keyed_state: dict[str, dict[Any, Any]]) -> StateSerializationError:
    """Find the first value that cannot be pickled (the error path only) and describe it."""
    for name, table in keyed_state.items():
        for key, value in table.items():
            try:
                pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - any pickling failure is described the same way
                msg = (
                    f"state {name!r}, key {key!r}: a value of type {type(value).__qualname__!r} cannot be "
                    f"pickled ({type(exc).__name__}: {exc}); {_PICKLE_HINT}"
                )
                return StateSerializationError(msg)
    return StateSerializationError(f"a state value cannot be pickled; {_PICKLE_HINT}")


def _pickle_operator_state(operator_state: Any) -> bytes:
    try:
        return pickle.dumps(operator_state, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:
        msg = (
            f"the operator state, of type {type(operator_state).__qualname__!r}, cannot be pickled "
            f"({type(exc).__name__}: {exc}); {_PICKLE_HINT}"
        )
        raise StateSerializationError(msg) from exc


_STR_TAG = ord("S")
_INT_TAG = ord("i")


def _decode_keys(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """Decode a key column: in bulk when every key is a str or every key an int64, else one by one.

    Restoring millions of keys is dominated by decoding them; the two common
    shapes of :func:`~onceflow.state_backends.key_groups.encode_key` (``S`` +
    4-byte little-endian length + UTF-8, ``i`` + 8 bytes) are recognised from
    the column's offsets and bytes in NumPy (:func:`_key_shape`, one gather
    per check, no Arrow array per check) and cut out as whole columns: a str
    column is sliced past its headers and cast to UTF-8 strings by Arrow (the
    cast validates the UTF-8), an int64 column is read in place. Anything
    else, including a str that is not valid UTF-8 (a lone surrogate), goes
    through ``decode_key``, which also names what is malformed.
    """
    chunks = [chunk for chunk in _chunks(column) if len(chunk)]
    shapes = [_key_shape(chunk) for chunk in chunks]
    tags = {tag for tag, _ in shapes}
    if tags == {_STR_TAG}:
        longest = max(length for _, length in shapes)  # an explicit stop: a sliced chunk needs one
        bodies = pc.binary_slice(column, 5, longest)
        try:
            strings = bodies.cast(pa.large_string())
        except pa.ArrowInvalid:
            pass  # not UTF-8: a lone surrogate, decoded with surrogatepass below
        else:
            return strings.to_pylist()
    elif tags == {_INT_TAG}:
        if len(chunks) == 1:
            return _int64_keys(chunks[0]).tolist()
        return np.concatenate([_int64_keys(chunk) for chunk in chunks]).tolist()
    return list(map(decode_key, column.to_pylist()))


def _chunks(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def _offsets(chunk: pa.Array) -> np.ndarray:
    """Return the chunk's ``len + 1`` offsets into its data buffer, without a copy."""
    dtype = np.dtype("<i8") if pa.types.is_large_binary(chunk.type) else np.dtype("<i4")
    return np.frombuffer(chunk.buffers()[1], dtype, len(chunk) + 1, chunk.offset * dtype.itemsize)


def _key_shape(chunk: pa.Array) -> tuple[int, int]:
    """Return the shape of every key of a (non-empty) chunk, and the longest key's length.

    The shape is :data:`_STR_TAG` when every key is one whole encoded str,
    :data:`_INT_TAG` when every key is an encoded int64, else 0.

    A str key is ``S``, its UTF-8 length as 4 bytes, then exactly that many
    bytes (a str followed by more bytes fails the length check); an
    int64 key is ``i`` and 8 bytes. Only the offsets and the bytes at them
    are read.
    """
    if chunk.null_count or not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
        return 0, 0
    offsets = _offsets(chunk)
    lengths = np.diff(offsets)
    data = chunk.buffers()[2]
    shortest, longest = int(lengths.min()), int(lengths.max())
    if data is None or shortest < 1:
        return 0, longest
    starts = offsets[:-1]
    tags = np.frombuffer(data, np.uint8)[starts]
    if shortest == longest == 9 and (tags == _INT_TAG).all():
        return _INT_TAG, longest
    if shortest < 5 or not (tags == _STR_TAG).all():
        return 0, longest
    # Every key has 5 bytes from its start, so a 4-byte read at start + 1 stays inside the data.
    words = np.ndarray((data.size - 3,), np.dtype("<u4"), data, strides=(1,))
    declared = words[starts + 1]
    return (_STR_TAG if (declared == lengths - 5).all() else 0), longest


def _int64_keys(chunk: pa.Array) -> np.ndarray:
    """Return the numbers of a chunk of :data:`_INT_TAG` keys (9 bytes each, back to back), in place."""
    start = int(_offsets(chunk)[0]) + 1
    return np.ndarray((len(chunk),), np.dtype("<i8"), chunk.buffers()[2], start, strides=(9,))


def _restored_table(keys: list[Any], values: list[Any]) -> dict[Any, Any]:
    """Build the dict of a restored state from its decoded keys and values, in that order.

    A restore inserts millions of new keys, and that is bound by memory
    accesses. CPython lays out a dict whose keys are all str without their
    hashes, so each probe that meets another key, and each re-insert when
    the dict grows, reads that key's str object for its hash: a cache miss.
    A dict that once held another key keeps the general layout, each hash
    beside its key; seeded with one key that is removed before the first
    growth drops it, it builds 10,000,000 str keys in about 3.3 CPU s
    instead of 4.8 (24 bytes per entry instead of 16). Lookups on the
    per-record path are no slower, and copies (``dict(table)``, a restore
    into the live table) keep the layout. It is a plain dict either way.
    """
    table: dict[Any, Any] = {None: None}
    del table[None]
    table.update(zip(keys, values, strict=True))
    return table


def _encode_keys(keys: list[Any]) -> tuple[pa.Array, list[bytes]]:
    """Encode keys as :func:`~onceflow.state_backends.key_groups.encode_key` does: the column and the bytes.

    Serializing a snapshot runs on a background thread but holds the GIL for
    every Python step, taking it from processing; so the two common shapes
    (every key a str, every key an int64) are built as whole Arrow columns
    (``S`` + 4-byte little-endian length + UTF-8, ``i`` + 8 bytes) and only
    the bytes for hashing are made per key. Anything else, including a str
    that is not valid UTF-8 (a lone surrogate), goes through ``encode_key``.
    """
    if keys and sys.byteorder == "little":
        types = set(map(type, keys))
        only = types.pop() if len(types) == 1 else None
        column: pa.Array | None = None
        if only is str:
            try:
                data = pa.array(keys, pa.large_string()).cast(pa.large_binary())
            except UnicodeEncodeError:
                data = None
            if data is not None:
                lengths = pc.binary_length(data).cast(pa.uint32())
                column = _join(b"S", _as_bytes(lengths, 4), data)
        elif only is int:
            try:
                numbers = pa.array(keys, pa.int64())
            except (OverflowError, pa.ArrowInvalid):
                numbers = None
            if numbers is not None:
                column = _join(b"i", _as_bytes(numbers, 8))
        if column is not None:
            return column, column.to_pylist()
    encoded = list(map(encode_key, keys))
    return pa.array(encoded, pa.large_binary()), encoded


def _as_bytes(numbers: pa.Array, width: int) -> pa.Array:
    """Each fixed-width number's bytes (its buffer reinterpreted, no copy per row) as large_binary."""
    view = pa.Array.from_buffers(
        pa.binary(width), len(numbers), [None, numbers.buffers()[1]], offset=numbers.offset
    )
    return view.cast(pa.large_binary())


def _join(tag: bytes, *parts: pa.Array) -> pa.Array:
    """``tag`` followed by the parts, row by row."""
    empty = pa.scalar(b"", pa.large_binary())
    return pc.binary_join_element_wise(pa.scalar(tag, pa.large_binary()), *parts, empty)
