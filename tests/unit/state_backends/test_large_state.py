"""State file format 2: large types, old files still read, newer formats refused, > 2 GiB state."""

from __future__ import annotations

import hashlib

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from onceflow.state_backends import (
    IncompatibleStateError,
    KeyGroupRange,
    StateFileHandle,
    key_group_for,
    read_state_file,
    write_state_file,
)


def _rewrite(fs, path: str, table: pa.Table, handle: StateFileHandle) -> StateFileHandle:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    fs.pipe_file(path, data)
    return StateFileHandle(
        path,
        handle.rows,
        len(data),
        hashlib.sha256(data).hexdigest(),
        handle.key_group_start,
        handle.key_group_end,
    )


def _written(tmp_path, keyed_state):
    fs = fsspec.filesystem("file")
    handle = write_state_file(
        fs,
        f"{tmp_path}/a.arrow",
        keyed_state=keyed_state,
        operator_state={"w": 1},
        key_group_of=key_group_for,
    )
    table = ipc.open_file(pa.py_buffer(fs.cat_file(handle.path))).read_all()
    return fs, handle, table


@pytest.mark.parametrize(
    ("state", "value_type"),
    [
        ({"a": "x", "b": "yy"}, pa.large_string()),
        ({"a": b"x", "b": b"yy"}, pa.large_binary()),
        ({"a": [1], "b": None}, pa.large_binary()),
    ],
)
def test_variable_size_columns_have_64_bit_offsets(tmp_path, state, value_type):
    _, _, table = _written(tmp_path, {"s": state})
    assert table.schema.field("key").type == pa.large_binary()
    assert table.schema.field("value").type == value_type
    assert table.schema.metadata[b"onceflow.format"] == b"2"


@pytest.mark.parametrize("state", [{"a": "x", "b": "yy"}, {"a": b"x"}, {"a": [1, "z"], "b": None}])
def test_format_1_files_with_32_bit_offsets_are_still_read(tmp_path, state):
    fs, handle, table = _written(tmp_path, {"s": state})
    narrow = {pa.large_binary(): pa.binary(), pa.large_string(): pa.string()}
    fields = [pa.field(f.name, narrow.get(f.type, f.type), f.nullable) for f in table.schema]
    metadata = dict(table.schema.metadata) | {b"onceflow.format": b"1"}
    old = table.cast(pa.schema(fields, metadata=metadata))
    assert old.schema.field("key").type == pa.binary()
    old_handle = _rewrite(fs, handle.path, old, handle)
    assert read_state_file(fs, old_handle) == ({"w": 1}, {"s": state})


def test_a_newer_format_is_refused_naming_its_version(tmp_path):
    fs, handle, table = _written(tmp_path, {"s": {"a": 1}})
    newer = table.replace_schema_metadata(dict(table.schema.metadata) | {b"onceflow.format": b"7"})
    with pytest.raises(IncompatibleStateError, match=r"format 7.*reads formats 1, 2"):
        read_state_file(fs, _rewrite(fs, handle.path, newer, handle))


_GIB2 = 2**31


@pytest.mark.slow
def test_one_value_beyond_2_gib_checkpoints_and_restores(tmp_path):
    fs = fsspec.filesystem("file")
    big = b"\x01" * (_GIB2 + 7)
    handle = write_state_file(
        fs,
        f"{tmp_path}/big.arrow",
        keyed_state={"s": {"big": big, "small": b"x"}},
        operator_state=None,
        key_group_of=key_group_for,
    )
    assert handle.bytes > _GIB2
    del big
    _, tables = read_state_file(fs, handle)
    value = tables["s"]["big"]
    assert len(value) == _GIB2 + 7 and value[:1] == b"\x01" and value[-1:] == b"\x01"
    assert tables["s"]["small"] == b"x"


@pytest.mark.slow
def test_a_subtask_state_beyond_2_gib_checkpoints_and_restores_by_key_group(tmp_path):
    fs = fsspec.filesystem("file")
    # Pickled values (tuples), 3 x 760 MB: the file and the value column pass 2**31 bytes.
    state = {f"key-{i}": (i, bytes([i]) * (760 * 2**20)) for i in range(3)}
    handle = write_state_file(
        fs,
        f"{tmp_path}/many.arrow",
        keyed_state={"s": state},
        operator_state=None,
        key_group_of=key_group_for,
    )
    assert handle.bytes > _GIB2 and handle.rows == 3
    del state
    _, tables = read_state_file(fs, handle)
    assert sorted(tables["s"]) == ["key-0", "key-1", "key-2"]
    for i in range(3):
        number, payload = tables["s"][f"key-{i}"]
        assert number == i and len(payload) == 760 * 2**20 and payload[-1] == i
    del tables
    group = key_group_for("key-1")
    _, part = read_state_file(fs, handle, KeyGroupRange(group, group + 1))
    assert list(part["s"]) == ["key-1"]
