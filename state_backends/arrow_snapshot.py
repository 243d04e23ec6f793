"""Write one subtask's state to an Arrow IPC file and read it back, verified.

This module serializes and verifies state files on any fsspec filesystem. It does
not choose paths, write checkpoint metadata or decide what is retained: that is
``onceflow.engine.checkpoint``'s job, which records each :class:`StateFileHandle` in
``_metadata``.

File layout (Arrow IPC *file* format, one file per operator subtask)::

    key_group int32 | state dictionary<int32, string> | key large_binary | value <typed>

Rows are sorted by ``key_group`` so a restore at another parallelism reads a
contiguous run. ``key`` holds :func:`~onceflow.state_backends.key_groups.encode_key`
bytes. ``value`` is ``int64``, ``float64``, ``large_string`` or ``large_binary`` when
every value in the file has exactly that Python type, and otherwise
``large_binary`` holding one pickle per value. The variable-size columns use
Arrow's large types (64-bit offsets), so neither a subtask's state nor one value
is limited to 2 GiB. Format ``1`` (32-bit offsets) is still read; a newer format
is refused naming the version. Schema metadata records the value encoding, the Python
version (pickles are only trusted by the same major.minor) and the pickled
operator state.

Why the reader is strict (a torn file must fail loudly, never restore half a
state): only ``ipc.open_file`` checks the footer, the stream reader happily
returns the first half of a torn file. So a read checks size and SHA-256
against the handle first, opens with ``open_file`` only, and decodes everything
before returning: a caller never sees a partial result.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from onceflow.state_backends._state_values import (
    _ARROW_TYPES,
    _ENC_PICKLE,
    _ENC_TUPLE,
    _ENCODINGS,
    _decode_keys,
    _decode_tuples,
    _encode_keys,
    _pickle_operator_state,
    _restored_table,
    _unpicklable_value,
    _value_array,
)
from onceflow.state_backends.disk import DiskSnapshot
from onceflow.state_backends.errors import CorruptStateError, IncompatibleStateError
from onceflow.state_backends.key_groups import KeyGroupRange, key_groups_of_encodings

BATCH_ROWS = 64 * 1024
"""Rows per record batch: large enough to amortize per-batch overhead, small
enough that a reader could stream batches."""

_META_VALUE_ENCODING = b"onceflow.value_encoding"
_META_PYTHON = b"onceflow.python"
_META_OPERATOR_STATE = b"onceflow.operator_state"
_META_FORMAT = b"onceflow.format"
_FORMAT_VERSION = b"2"
_TUPLE_FORMAT_VERSION = b"3"
"""Format 3 is format 2 plus the ``tuple`` value encoding (a struct column): only files that use it
say 3, so an onceflow that predates it refuses them naming the format, and reads every other file."""
_READABLE_FORMATS = (b"1", b"2", b"3")
"""Format 1 had 32-bit offsets (``binary``/``string``); its files decode the same way."""
_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"

_STATE_TYPE = pa.dictionary(pa.int32(), pa.string())
_COLUMNS = ("key_group", "state", "key", "value")


@dataclass(frozen=True)
class StateFileHandle:
    """Where a state file is and what it must look like, as recorded in ``_metadata``.

    ``key_group_start``/``key_group_end`` are the smallest key group present and
    the largest plus one (None when the file holds no keyed rows), so a restore
    can skip files that hold none of its key groups without opening them.
    """

    path: str
    rows: int
    bytes: int
    sha256: str
    key_group_start: int | None
    key_group_end: int | None

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict for checkpoint metadata."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StateFileHandle:
        """Rebuild a handle from :meth:`to_json` output."""
        return cls(
            path=str(d["path"]),
            rows=int(d["rows"]),
            bytes=int(d["bytes"]),
            sha256=str(d["sha256"]),
            key_group_start=None if d.get("key_group_start") is None else int(d["key_group_start"]),
            key_group_end=None if d.get("key_group_end") is None else int(d["key_group_end"]),
        )


def _parent(path: str) -> str:
    return path.rstrip("/").rpartition("/")[0]


def write_state_file(
    fs: fsspec.AbstractFileSystem,
    path: str,
    *,
    keyed_state: dict[str, dict[Any, Any]] | DiskSnapshot,
    operator_state: Any,
    key_group_of: Callable[[Any], int] | None = None,
    max_parallelism: int | None = None,
    deleted: dict[str, list[Any]] | None = None,
) -> StateFileHandle:
    """Serialize a snapshot into one Arrow IPC file at ``path`` and describe it.

    Called on the background writer thread with a snapshot that was copied at the
    barrier; it only reads ``keyed_state`` and never touches live state. Steps:

    1. Flatten every table into columns and encode keys and key groups.
    2. Choose the value encoding and build the Arrow table, sorted by key group.
    3. Serialize the file and hash exactly its bytes (in memory when small,
       batch by batch on the way out when large).
    4. Write the bytes to ``path`` (creating the parent directory).

    Args:
        fs: Target filesystem.
        path: File path on ``fs``; overwritten if present.
        keyed_state: ``{state_name: {key: value}}``, treated as frozen; or a
            disk backend's snapshot, streamed batch by batch (bounded memory).
        operator_state: Any picklable value (may be None), stored in the schema
            metadata.
        key_group_of: Maps a key to its key group, e.g. ``KeyGroupAssigner.key_group``.
        max_parallelism: Instead of ``key_group_of``: derive key groups from the
            canonical encodings this function computes anyway (one encode per key).
        deleted: Keys deleted since the previous file of an incremental chain,
            per state name, stored as rows with a null value (tombstones).

    Returns:
        The handle to record in checkpoint metadata.

    Raises:
        KeyEncodingError: a key has no canonical encoding.
        StateSerializationError: a value or the operator state cannot be
            pickled (the message names the state, the key and the type).
    """
    if isinstance(keyed_state, DiskSnapshot):
        return _write_streamed(fs, path, keyed_state, operator_state)
    table = state_table(
        keyed_state=keyed_state,
        operator_state=operator_state,
        key_group_of=key_group_of,
        max_parallelism=max_parallelism,
        deleted=deleted,
    )
    return write_table(fs, path, table)


def state_table(
    *,
    keyed_state: dict[str, dict[Any, Any]],
    operator_state: Any,
    key_group_of: Callable[[Any], int] | None = None,
    max_parallelism: int | None = None,
    deleted: dict[str, list[Any]] | None = None,
) -> pa.Table:
    """Build steps 1 and 2 of :func:`write_state_file`: the Arrow table of a snapshot, sorted by key group."""
    # Step 1
    names: list[str] = []
    indices: list[int] = []
    keys: list[Any] = []
    values: list[Any] = []
    for name, table in keyed_state.items():
        if not table:
            continue
        indices.extend([len(names)] * len(table))
        names.append(name)
        keys.extend(table.keys())
        values.extend(table.values())
    tombstones = 0
    for name, gone in (deleted or {}).items():
        if not gone:
            continue
        if name not in names:
            names.append(name)
        indices.extend([names.index(name)] * len(gone))
        keys.extend(gone)
        tombstones += len(gone)
    encoded_keys, encoded = _encode_keys(keys)
    if max_parallelism is not None:
        groups = key_groups_of_encodings(encoded, max_parallelism)
    elif key_group_of is not None:
        groups = list(map(key_group_of, keys))
    else:
        msg = "write_state_file needs key_group_of or max_parallelism"
        raise ValueError(msg)
    key_groups = pa.array(groups, pa.int32())
    del keys, encoded, groups

    # Step 2
    try:
        encoding, value_array = _value_array(values)
    except Exception as exc:
        raise _unpicklable_value(keyed_state) from exc
    del values
    if tombstones:
        value_array = pa.concat_arrays([value_array, pa.nulls(tombstones, value_array.type)])
    state_array = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(names, pa.string()))
    schema = _schema(encoding, operator_state, value_array.type)
    table = pa.Table.from_arrays([key_groups, state_array, encoded_keys, value_array], schema=schema)
    if table.num_rows:
        table = table.take(pc.sort_indices(table["key_group"]))
    return table


_STREAM_BYTES = 16 << 20
"""A table this large is written batch by batch, hashed on its way out, not serialized into memory
first: a second copy of a compacted base of 10,000,000 keys' segment cost the disk backend ~60 MiB."""


def write_table(
    fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, *, made_dirs: set[str] | None = None
) -> StateFileHandle:
    """Run steps 3 and 4 of :func:`write_state_file`: write ``table`` (sorted by key group) to ``path``.

    A small table is serialized in memory and written with one call; a large one
    is streamed (:func:`write_batches`: its bytes never held twice).
    ``made_dirs``: folders a caller writing several files already created (each
    ``makedirs`` is two system calls, and on a snapshot writer thread every
    system call hands the GIL to processing and waits to get it back).
    """
    if table.nbytes >= _STREAM_BYTES:
        return write_batches(fs, path, table.schema, [table])
    # Step 3
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)
    data = memoryview(sink.getvalue())

    # Step 4
    parent = _parent(path)
    if parent and (made_dirs is None or parent not in made_dirs):
        fs.makedirs(parent, exist_ok=True)
        if made_dirs is not None:
            made_dirs.add(parent)
    with fs.open(path, "wb") as out:
        out.write(data)

    kg_start: int | None = None
    kg_end: int | None = None
    if table.num_rows:
        column = table["key_group"]
        kg_start = column[0].as_py()
        kg_end = column[-1].as_py() + 1
    return StateFileHandle(
        path=path,
        rows=table.num_rows,
        bytes=data.nbytes,
        sha256=hashlib.sha256(data).hexdigest(),
        key_group_start=kg_start,
        key_group_end=kg_end,
    )


def write_batches(
    fs: fsspec.AbstractFileSystem,
    path: str,
    schema: pa.Schema,
    parts: Iterable[pa.RecordBatch | pa.Table],
) -> StateFileHandle:
    """Write ``parts`` (together sorted by key group) as one state file, hashing the bytes on their way out.

    Memory holds one part at a time, never the file: for a disk backend's
    view, a compaction, or any table too large to serialize twice.
    """
    rows = 0
    kg_start: int | None = None
    kg_end: int | None = None
    parent = _parent(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as out:
        hashing = _HashingWriter(out)
        with ipc.new_file(pa.PythonFile(hashing, mode="w"), schema) as writer:
            for part in parts:
                if not part.num_rows:
                    continue
                if isinstance(part, pa.Table):
                    writer.write_table(part, max_chunksize=BATCH_ROWS)
                else:
                    writer.write_batch(part)
                rows += part.num_rows
                key_group = part.column("key_group")
                if kg_start is None:
                    kg_start = key_group[0].as_py()
                kg_end = key_group[-1].as_py() + 1
    return StateFileHandle(
        path=path,
        rows=rows,
        bytes=hashing.size,
        sha256=hashing.sha256.hexdigest(),
        key_group_start=kg_start,
        key_group_end=kg_end,
    )


class _HashingWriter:
    """A write-only file that hashes and counts what passes through to ``out``."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.out.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        self.closed = True


def _write_streamed(
    fs: fsspec.AbstractFileSystem, path: str, snapshot: DiskSnapshot, operator_state: Any
) -> StateFileHandle:
    """Write a disk backend's snapshot in the same layout, one record batch at a time, and release it."""
    try:
        return write_view(fs, path, snapshot, operator_state)
    finally:
        snapshot.release()


def write_view(
    fs: fsspec.AbstractFileSystem,
    path: str,
    snapshot: DiskSnapshot,
    operator_state: Any,
    key_groups: KeyGroupRange | None = None,
) -> StateFileHandle:
    """Write the rows of a disk backend's view in ``key_groups`` (all if None) to ``path``, streamed.

    The view yields rows already sorted by key group with values pickled (a
    delta's tombstones null), so memory stays at one batch however large the
    state is. The view is left open: the caller releases it.
    """
    schema = _schema(snapshot.value_encoding, operator_state)
    names = pa.array(snapshot.names, pa.string())
    batches = (
        pa.RecordBatch.from_arrays(
            [key_group, pa.DictionaryArray.from_arrays(ids, names), keys, values], schema=schema
        )
        for key_group, ids, keys, values in snapshot.batches(BATCH_ROWS, key_groups)
    )
    return write_batches(fs, path, schema, batches)


def _schema(encoding: str, operator_state: Any, value_type: pa.DataType | None = None) -> pa.Schema:
    """Return a state file's schema; ``value_type`` is for encodings without a fixed value type."""
    metadata = {
        _META_FORMAT: _TUPLE_FORMAT_VERSION if encoding == _ENC_TUPLE else _FORMAT_VERSION,
        _META_VALUE_ENCODING: encoding.encode(),
        _META_PYTHON: _PYTHON_VERSION.encode(),
        _META_OPERATOR_STATE: _pickle_operator_state(operator_state),
    }
    return pa.schema(
        [
            pa.field("key_group", pa.int32(), nullable=False),
            pa.field("state", _STATE_TYPE, nullable=False),
            pa.field("key", pa.large_binary(), nullable=False),
            pa.field("value", value_type if value_type is not None else _ARROW_TYPES[encoding]),
        ],
        metadata=metadata,
    )


def _read_verified(fs: fsspec.AbstractFileSystem, handle: StateFileHandle) -> bytes:
    """Return the file's bytes after checking size and SHA-256 against ``handle``."""
    try:
        data = fs.cat_file(handle.path)
    except FileNotFoundError as exc:
        msg = f"state file {handle.path!r} is missing; the checkpoint that references it is broken"
        raise CorruptStateError(msg) from exc
    if len(data) != handle.bytes:
        msg = (
            f"state file {handle.path!r} is {len(data)} bytes, expected {handle.bytes} "
            "(truncated or overwritten); restore from an earlier checkpoint"
        )
        raise CorruptStateError(msg)
    digest = hashlib.sha256(data).hexdigest()
    if digest != handle.sha256:
        msg = (
            f"state file {handle.path!r} has sha256 {digest!r}, expected {handle.sha256!r} "
            "(corrupted); restore from an earlier checkpoint"
        )
        raise CorruptStateError(msg)
    return data


def _open_table(path: str, data: bytes) -> pa.Table:
    try:
        reader = ipc.open_file(pa.py_buffer(data))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"state file {path!r} is not a readable Arrow IPC file: {exc}"
        raise CorruptStateError(msg) from exc
    if tuple(table.column_names) != _COLUMNS or table.schema.metadata is None:
        msg = f"state file {path!r} has columns {table.column_names!r}, expected {list(_COLUMNS)!r}"
        raise CorruptStateError(msg)
    version = table.schema.metadata.get(_META_FORMAT, b"1")
    if version not in _READABLE_FORMATS:
        readable = ", ".join(v.decode() for v in _READABLE_FORMATS)
        msg = (
            f"state file {path!r} has state file format {version.decode(errors='replace')}, but this "
            f"onceflow reads formats {readable}; restore with the onceflow version that wrote it"
        )
        raise IncompatibleStateError(msg)
    return table


def _load_operator_state(path: str, metadata: dict[bytes, bytes]) -> Any:
    try:
        return pickle.loads(metadata[_META_OPERATOR_STATE])
    except KeyError as exc:
        msg = f"state file {path!r} has no operator state entry in its schema metadata"
        raise CorruptStateError(msg) from exc
    except Exception as exc:
        msg = (
            f"state file {path!r}: the operator state cannot be unpickled ({exc!r}); "
            "was the job's code changed since the checkpoint?"
        )
        raise IncompatibleStateError(msg) from exc


def _value_decoder(path: str, metadata: dict[bytes, bytes]) -> Callable[[pa.ChunkedArray], list]:
    encoding = metadata.get(_META_VALUE_ENCODING, b"").decode()
    if encoding not in _ENCODINGS:
        msg = f"state file {path!r} has unknown value encoding {encoding!r}"
        raise CorruptStateError(msg)
    if encoding == _ENC_TUPLE:

        def tuples(column: pa.ChunkedArray) -> list:
            try:
                return _decode_tuples(column)
            except ValueError as exc:
                msg = f"state file {path!r}: {exc}"
                raise CorruptStateError(msg) from exc

        return tuples
    if encoding != _ENC_PICKLE:
        return pa.ChunkedArray.to_pylist
    written_by = metadata.get(_META_PYTHON, b"?").decode()
    if written_by != _PYTHON_VERSION:
        msg = (
            f"state file {path!r} holds values pickled by Python {written_by}, but this is "
            f"Python {_PYTHON_VERSION}; restore with Python {written_by}"
        )
        raise IncompatibleStateError(msg)

    def unpickle(column: pa.ChunkedArray) -> list:
        loads = pickle.loads
        try:
            return [loads(v) for v in column.to_pylist()]
        except Exception as exc:
            msg = (
                f"state file {path!r}: a value cannot be unpickled ({exc!r}); "
                "was the job's code changed since the checkpoint?"
            )
            raise IncompatibleStateError(msg) from exc

    return unpickle


def read_state_file(
    fs: fsspec.AbstractFileSystem,
    handle: StateFileHandle,
    key_groups: KeyGroupRange | None = None,
) -> tuple[Any, dict[str, dict[Any, Any]]]:
    """Read a state file and return its operator state and the keyed state in range.

    Called at restore, once per file the checkpoint lists, before any record is
    processed. Steps:

    1. Read all bytes; check size and SHA-256 against ``handle``.
    2. Open with ``ipc.open_file`` (footer-checked) and unpickle the operator state.
    3. Unless ``handle`` says no key group overlaps ``key_groups``, filter the rows
       to ``key_groups`` and decode keys and values per state name.

    Nothing is returned until every row is decoded, so a failure never leaves a
    caller with partial state.

    Args:
        fs: Filesystem holding the file.
        handle: As returned by :func:`write_state_file`.
        key_groups: Key groups to keep; None keeps all.

    Returns:
        ``(operator_state, {state_name: {key: value}})``; state names without
        keys in range are absent.

    Raises:
        CorruptStateError: missing, truncated, altered or not an Arrow file.
        IncompatibleStateError: pickles from another Python version or code.
    """
    operator_state, table = read_state_table(fs, handle, key_groups)
    if not table.num_rows:
        return operator_state, {}
    decode_values = _value_decoder(handle.path, table.schema.metadata)
    return operator_state, _decode_tables(handle.path, table, decode_values)


def read_state_table(
    fs: fsspec.AbstractFileSystem,
    handle: StateFileHandle,
    key_groups: KeyGroupRange | None = None,
) -> tuple[Any, pa.Table]:
    """Run steps 1 to 3 of :func:`read_state_file` short of decoding: the verified rows in range."""
    # Step 1
    data = _read_verified(fs, handle)

    # Step 2
    table = _open_table(handle.path, data)
    if table.num_rows != handle.rows:
        msg = f"state file {handle.path!r} has {table.num_rows} rows, expected {handle.rows}"
        raise CorruptStateError(msg)
    metadata = table.schema.metadata
    operator_state = _load_operator_state(handle.path, metadata)

    # Step 3
    if key_groups is not None:
        start, end = handle.key_group_start, handle.key_group_end
        if start is None or end is None or end <= key_groups.start or key_groups.end <= start:
            return operator_state, table.slice(0, 0)
        if not (key_groups.start <= start and end <= key_groups.end):
            column = table["key_group"]
            mask = pc.and_(pc.greater_equal(column, key_groups.start), pc.less(column, key_groups.end))
            table = table.filter(mask)
    return operator_state, table


def _decode_tables(
    path: str, table: pa.Table, decode_values: Callable[[pa.ChunkedArray], list]
) -> dict[str, dict[Any, Any]]:
    if not table.num_rows:
        return {}
    state_column = table["state"].combine_chunks()
    names = state_column.dictionary.to_pylist()
    indices = state_column.indices
    result: dict[str, dict[Any, Any]] = {}
    for index, name in enumerate(names):
        part = table if len(names) == 1 else table.filter(pc.equal(indices, index))
        if not part.num_rows:
            continue
        try:
            keys = _decode_keys(part["key"])
        except ValueError as exc:
            msg = f"state file {path!r}: state {name!r} holds a malformed key: {exc}"
            raise CorruptStateError(msg) from exc
        result[name] = _restored_table(keys, decode_values(part["value"]))
    return result


__all__ = [
    "BATCH_ROWS",
    "StateFileHandle",
    "read_state_file",
    "read_state_table",
    "state_table",
    "write_state_file",
    "write_table",
    "write_view",
]
