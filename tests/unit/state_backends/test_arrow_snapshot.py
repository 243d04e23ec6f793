from __future__ import annotations

import collections
import random
import sys
import uuid

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from onceflow.state_backends import (
    CorruptStateError,
    ErrorDomain,
    IncompatibleStateError,
    KeyGroupAssigner,
    KeyGroupRange,
    StateFileHandle,
    key_group_for,
    key_group_range_for_subtask,
    read_state_file,
    write_state_file,
)
from onceflow.state_backends._state_values import _decode_keys, _encode_keys, _restored_table
from onceflow.state_backends.arrow_snapshot import BATCH_ROWS
from onceflow.state_backends.key_groups import decode_key, encode_key


@pytest.fixture(params=["file", "memory"])
def fs_and_root(request, tmp_path):
    """A real local directory and an in-memory filesystem under a unique root."""
    if request.param == "file":
        yield fsspec.filesystem("file"), str(tmp_path)
        return
    fs = fsspec.filesystem("memory")
    root = f"/test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _value_encoding(fs, path):
    with fs.open(path, "rb") as f:
        reader = ipc.open_file(pa.py_buffer(f.read()))
    return reader.schema.metadata[b"onceflow.value_encoding"].decode(), reader.schema


Point = collections.namedtuple("Point", "x y")
"""A tuple subclass: pickled, so it comes back a ``Point``, not a plain tuple."""

VALUE_CASES = {
    "int64": ({f"k{i}": i * 7 - 50 for i in range(300)}, "int64"),
    "float64": (
        {f"k{i}": i / 3 for i in range(300)} | {"neg0": -0.0, "inf": float("inf")},
        "float64",
    ),
    "string": ({i: f"v{i}-✓" for i in range(300)}, "string"),
    "binary": ({(i, "t"): bytes([i % 256]) * 3 for i in range(300)}, "binary"),
    "mixed": ({"a": 1, "b": "x", "c": None, "d": 2.5, "e": True}, "pickle"),
    "dicts": ({f"k{i}": {"n": i, "l": [i, "x"]} for i in range(50)}, "pickle"),
    "bools": ({"t": True, "f": False}, "pickle"),
    "bigint": ({"small": 1, "huge": 2**80}, "pickle"),
    "tuples": ({f"w{i}": (f"w{i}", i) for i in range(300)}, "tuple"),
    "tuples of every field type": (
        {i: (i - 150, i / 7, f"s{i}-✓", bytes([i % 256]), -0.0, 2**63 - 1) for i in range(300)},
        "tuple",
    ),
    "one-tuples": ({i: (float("inf"),) for i in range(10)}, "tuple"),
    "tuples of two lengths": ({"a": (1, 2), "b": (1, 2, 3)}, "pickle"),
    "tuples with a bool": ({"a": (1, True), "b": (1, 2)}, "pickle"),
    "tuples with None": ({"a": ("x", None), "b": ("y", 1)}, "pickle"),
    "tuples mixing int and float": ({"a": (1, 2), "b": (1, 2.5)}, "pickle"),
    "nested tuples": ({"a": (1, (2, 3))}, "pickle"),
    "namedtuples": ({"a": Point(1, 2), "b": Point(3, 4)}, "pickle"),
    "tuples with a huge int": ({"a": (1, 2**64), "b": (1, 2)}, "pickle"),
    "tuples with a lone surrogate": ({"a": ("\ud800",), "b": ("ok",)}, "pickle"),
    "empty tuples": ({"a": (), "b": ()}, "pickle"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_round_trip_for_each_value_encoding(fs_and_root, case):
    fs, root = fs_and_root
    table, encoding = VALUE_CASES[case]
    path = f"{root}/chk-1/op-0.arrow"
    handle = write_state_file(
        fs, path, keyed_state={"s": table}, operator_state=None, key_group_of=key_group_for
    )
    assert _value_encoding(fs, path)[0] == encoding
    assert handle.rows == len(table)
    assert handle.bytes == fs.size(path)

    operator_state, keyed = read_state_file(fs, handle)

    assert operator_state is None
    assert keyed == {"s": table}
    for key, value in keyed["s"].items():
        assert type(value) is type(table[key])
        if type(value) is tuple:  # every item comes back as its own type (1 stays int, 1.0 float)
            assert list(map(type, value)) == list(map(type, table[key]))


def test_tuples_are_a_struct_column_of_typed_fields_in_a_format_3_file(fs_and_root):
    """Readable by field without onceflow (DuckDB, pandas); an older onceflow refuses it by its format."""
    fs, root = fs_and_root
    path = f"{root}/op-0.arrow"
    write_state_file(
        fs, path, keyed_state={"s": {"a": ("x", 1, 0.5)}}, operator_state=None, key_group_of=key_group_for
    )
    encoding, schema = _value_encoding(fs, path)
    assert encoding == "tuple"
    assert schema.field("value").type == pa.struct(
        [("0", pa.large_string()), ("1", pa.int64()), ("2", pa.float64())]
    )
    assert schema.metadata[b"onceflow.format"] == b"3"
    write_state_file(fs, f"{root}/op-1.arrow", keyed_state={"s": {"a": 1}}, operator_state=None,
                     key_group_of=key_group_for)  # fmt: skip
    assert _value_encoding(fs, f"{root}/op-1.arrow")[1].metadata[b"onceflow.format"] == b"2"


def test_a_tuple_column_that_is_not_a_struct_of_plain_types_is_corrupt(fs_and_root):
    fs, root = fs_and_root
    path = f"{root}/op-0.arrow"
    handle = write_state_file(
        fs, path, keyed_state={"s": {"a": ("x", 1)}}, operator_state=None, key_group_of=key_group_for
    )
    table = ipc.open_file(pa.py_buffer(fs.cat_file(path))).read_all()
    nested = pa.array([{"0": [1, 2]}], pa.struct([("0", pa.list_(pa.int64()))]))
    bad = table.set_column(3, pa.field("value", nested.type), pa.chunked_array([nested]))
    bad = bad.replace_schema_metadata(table.schema.metadata)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, bad.schema) as writer:
        writer.write_table(bad)
    forged = _rewrite_and_rehandle(fs, handle, sink.getvalue().to_pybytes())
    with pytest.raises(CorruptStateError, match="struct of plain types") as info:
        read_state_file(fs, forged)
    assert path in str(info.value)


def test_several_states_and_operator_state_round_trip(fs_and_root):
    fs, root = fs_and_root
    assigner = KeyGroupAssigner()
    keyed_state = {
        "counts": {f"w{i}": i for i in range(1000)},
        "last": {f"w{i}": f"seen-{i}" for i in range(0, 1000, 3)},
        "empty": {},
    }
    operator_state = {"offsets": [1, 2, 3], "watermark": 12.5, "timers": {("a", 1): 10}}
    handle = write_state_file(
        fs,
        f"{root}/op-0.arrow",
        keyed_state=keyed_state,
        operator_state=operator_state,
        key_group_of=assigner.key_group,
    )

    restored_operator_state, keyed = read_state_file(fs, handle)

    assert restored_operator_state == operator_state
    assert keyed == {"counts": keyed_state["counts"], "last": keyed_state["last"]}


def test_handle_json_round_trip(fs_and_root):
    fs, root = fs_and_root
    handle = write_state_file(
        fs,
        f"{root}/a.arrow",
        keyed_state={"s": {"a": 1}},
        operator_state=1,
        key_group_of=key_group_for,
    )
    assert StateFileHandle.from_json(handle.to_json()) == handle
    assert handle.key_group_start == key_group_for("a")
    assert handle.key_group_end == key_group_for("a") + 1
    assert len(handle.sha256) == 64


def test_rows_are_sorted_by_key_group_in_batches(tmp_path):
    fs = fsspec.filesystem("file")
    table = {i: i for i in range(BATCH_ROWS + 10)}
    handle = write_state_file(
        fs,
        str(tmp_path / "big.arrow"),
        keyed_state={"s": table},
        operator_state=None,
        key_group_of=key_group_for,
    )
    reader = ipc.open_file(str(tmp_path / "big.arrow"))
    assert reader.num_record_batches == 2
    key_groups = reader.read_all()["key_group"].to_pylist()
    assert key_groups == sorted(key_groups)
    assert handle.key_group_start == key_groups[0]
    assert handle.key_group_end == key_groups[-1] + 1


def test_empty_state_file_round_trips(fs_and_root):
    fs, root = fs_and_root
    handle = write_state_file(
        fs,
        f"{root}/empty.arrow",
        keyed_state={},
        operator_state={"offset": 0},
        key_group_of=key_group_for,
    )
    assert handle.rows == 0
    assert handle.key_group_start is None and handle.key_group_end is None
    assert read_state_file(fs, handle) == ({"offset": 0}, {})
    assert read_state_file(fs, handle, KeyGroupRange(0, 64)) == ({"offset": 0}, {})


@pytest.mark.parametrize("new_parallelism", [1, 2, 3, 5])
def test_restore_at_new_parallelism_reassembles_original_state(fs_and_root, new_parallelism):
    fs, root = fs_and_root
    max_parallelism = 128
    old_assigner = KeyGroupAssigner(max_parallelism, parallelism=2)
    original = {
        "counts": {(f"user-{i}", i % 3): i for i in range(2000)},
        "names": {(f"user-{i}", i % 3): f"n{i}" for i in range(0, 2000, 7)},
    }
    handles = []
    for subtask in range(2):
        part = {
            name: {k: v for k, v in table.items() if old_assigner.subtask(k) == subtask}
            for name, table in original.items()
        }
        handles.append(
            write_state_file(
                fs,
                f"{root}/chk-3/op-{subtask}.arrow",
                keyed_state=part,
                operator_state=("offsets", subtask),
                key_group_of=old_assigner.key_group,
            )
        )

    union: dict[str, dict] = {"counts": {}, "names": {}}
    for subtask in range(new_parallelism):
        key_groups = key_group_range_for_subtask(max_parallelism, new_parallelism, subtask)
        operator_states = []
        for handle in handles:
            operator_state, keyed = read_state_file(fs, handle, key_groups)
            operator_states.append(operator_state)
            for name, table in keyed.items():
                for key in table:
                    assert key_group_for(key, max_parallelism) in key_groups
                    assert key not in union[name], "a key restored to two subtasks"
                union[name].update(table)
        assert operator_states == [("offsets", 0), ("offsets", 1)]
    assert union == original


def test_file_outside_requested_range_is_skipped_but_returns_operator_state(fs_and_root):
    fs, root = fs_and_root
    key = next(k for k in (f"k{i}" for i in range(1000)) if key_group_for(k) < 64)
    handle = write_state_file(
        fs,
        f"{root}/a.arrow",
        keyed_state={"s": {key: 1}},
        operator_state="op",
        key_group_of=key_group_for,
    )
    assert read_state_file(fs, handle, KeyGroupRange(64, 128)) == ("op", {})
    assert read_state_file(fs, handle, KeyGroupRange(0, 64)) == ("op", {"s": {key: 1}})


def _write_sample(fs, path):
    table = {f"user-{i}": {"n": i} for i in range(3000)}
    return write_state_file(
        fs, path, keyed_state={"s": table}, operator_state=[1, 2], key_group_of=key_group_for
    )


def _rewrite_and_rehandle(fs, handle, data):
    """Replace the file and forge a handle that matches it, to get past the checksum."""
    import hashlib

    fs.pipe_file(handle.path, data)
    return StateFileHandle(
        path=handle.path,
        rows=handle.rows,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        key_group_start=handle.key_group_start,
        key_group_end=handle.key_group_end,
    )


def test_truncation_at_random_offsets_raises_corrupt_state(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    original = fs.cat_file(handle.path)
    seed = random.randrange(2**32)
    print(f"truncation seed={seed}")
    rng = random.Random(seed)
    offsets = {0, 1, len(original) - 1, len(original) - 4, len(original) - 10}
    offsets |= {rng.randrange(len(original)) for _ in range(20)}
    for offset in sorted(offsets):
        fs.pipe_file(handle.path, original[:offset])
        with pytest.raises(CorruptStateError, match="bytes, expected") as info:
            read_state_file(fs, handle)
        assert handle.path in str(info.value), f"seed={seed} offset={offset}"
        # Even with a handle forged to match, the footer check refuses the torn file.
        forged = _rewrite_and_rehandle(fs, handle, original[:offset])
        with pytest.raises(CorruptStateError):
            read_state_file(fs, forged)


def test_flipped_byte_raises_corrupt_state(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    data = bytearray(fs.cat_file(handle.path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(handle.path, bytes(data))
    with pytest.raises(CorruptStateError, match="sha256") as info:
        read_state_file(fs, handle)
    assert handle.sha256 in str(info.value)
    assert info.value.domain is ErrorDomain.EXTERNAL


def test_wrong_size_in_handle_raises_corrupt_state(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    wrong = StateFileHandle(**{**handle.to_json(), "bytes": handle.bytes + 1})
    with pytest.raises(CorruptStateError, match=str(handle.bytes + 1)):
        read_state_file(fs, wrong)


def test_missing_file_raises_corrupt_state(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    fs.rm(handle.path)
    with pytest.raises(CorruptStateError, match="missing"):
        read_state_file(fs, handle)


def test_non_arrow_file_with_matching_checksum_raises_corrupt_state(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    forged = _rewrite_and_rehandle(fs, handle, b"not an arrow file at all" * 10)
    with pytest.raises(CorruptStateError, match="not a readable Arrow IPC file"):
        read_state_file(fs, forged)


def test_stream_format_is_refused(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    table = ipc.open_file(pa.py_buffer(fs.cat_file(handle.path))).read_all()
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    forged = _rewrite_and_rehandle(fs, handle, sink.getvalue().to_pybytes())
    with pytest.raises(CorruptStateError):
        read_state_file(fs, forged)


def test_pickles_from_another_python_version_are_refused(fs_and_root):
    fs, root = fs_and_root
    handle = _write_sample(fs, f"{root}/a.arrow")
    table = ipc.open_file(pa.py_buffer(fs.cat_file(handle.path))).read_all()
    metadata = dict(table.schema.metadata)
    metadata[b"onceflow.python"] = b"2.7"
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    forged = _rewrite_and_rehandle(fs, handle, sink.getvalue().to_pybytes())
    with pytest.raises(IncompatibleStateError, match=r"Python 2\.7") as info:
        read_state_file(fs, forged)
    assert info.value.domain is ErrorDomain.USER
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in str(info.value)


def test_writer_does_not_mutate_the_snapshot(fs_and_root):
    fs, root = fs_and_root
    keyed_state = {"s": {"a": 1, "b": 2}}
    write_state_file(
        fs,
        f"{root}/a.arrow",
        keyed_state=keyed_state,
        operator_state=None,
        key_group_of=key_group_for,
    )
    assert keyed_state == {"s": {"a": 1, "b": 2}}


@pytest.mark.parametrize(
    "keys",
    [
        ["a", "", "héllo", "x" * 300],
        ["a", "\ud800"],  # a lone surrogate: not UTF-8, encoded one by one
        [0, -1, 2**63 - 1, -(2**63)],
        [1, 2**70],  # beyond int64
        [1, True],  # a bool is not an int here
        ["x", 1, None, 1.5, b"b", ("t", 2)],
        [],
    ],
)
def test_bulk_key_encoding_equals_encode_key(keys: list) -> None:
    column, encoded = _encode_keys(list(keys))
    assert encoded == [encode_key(k) for k in keys] == column.to_pylist()


_KEY_SETS = [
    ["a", "", "héllo", "x" * 300, "日本"],
    ["a", "\ud800"],  # a lone surrogate: not UTF-8, decoded one by one
    [0, -1, 2**63 - 1, -(2**63)],
    [1, 2**70],  # beyond int64
    ["x", 1, None, 1.5, b"b", ("t", 2)],
    [("a", 1), ("b", 2)],
    [b"S", b"i"],
]


@pytest.mark.parametrize("keys", _KEY_SETS)
@pytest.mark.parametrize("key_type", [pa.large_binary(), pa.binary()])
def test_bulk_key_decoding_equals_decode_key(keys: list, key_type: pa.DataType) -> None:
    """Whole columns, sliced and filtered ones (offsets not at 0) and chunked ones decode like decode_key."""
    encoded = [encode_key(k) for k in keys * 3]
    column = pa.array(encoded, key_type)
    expected = [decode_key(e) for e in encoded]
    assert _decode_keys(column) == expected
    assert _decode_keys(pa.chunked_array([column.slice(0, 2), column.slice(2)])) == expected
    assert _decode_keys(column.slice(1)) == expected[1:]
    mask = pa.array([i % 2 == 1 for i in range(len(encoded))])
    assert _decode_keys(column.filter(mask)) == [e for e, m in zip(expected, mask.to_pylist()) if m]
    assert _decode_keys(pa.chunked_array([], key_type)) == []


def test_a_column_of_str_and_int64_chunks_decodes_each_key_as_written() -> None:
    strs, _ = _encode_keys(["a", "bc"])
    ints, _ = _encode_keys([7, -8])
    assert _decode_keys(pa.chunked_array([strs, ints, strs.slice(1)])) == ["a", "bc", 7, -8, "bc"]


@pytest.mark.parametrize(
    "bad",
    [
        b"S\x02\x00\x00\x00abc",  # a str followed by another byte
        b"S\x04\x00\x00\x00abc",  # a str shorter than its length
        b"i\x01\x00",  # a truncated int64
        b"",
    ],
)
def test_a_malformed_key_among_well_formed_ones_is_a_value_error(bad: bytes) -> None:
    good = [encode_key(k) for k in ["a", "b"]] if bad[:1] != b"i" else [encode_key(k) for k in [1, 2]]
    with pytest.raises(ValueError, match="malformed key encoding"):
        _decode_keys(pa.array([*good, bad], pa.large_binary()))


def test_a_restored_table_is_a_plain_dict_that_copies_and_changes_like_one() -> None:
    keys = [f"k{i}" for i in range(1000)]
    table = _restored_table(keys, list(range(1000)))
    assert type(table) is dict and table == dict(zip(keys, range(1000)))
    assert list(table) == keys
    live: dict = {}
    live.update(table)
    assert live == table
    del live["k3"]
    live["new"] = -1
    live[("t", 1)] = 2
    assert len(live) == 1001 and live["new"] == -1 and "k3" not in live and table["k3"] == 3
    assert _restored_table([], []) == {}
    with pytest.raises(ValueError):
        _restored_table(["a"], [])


def test_a_large_state_file_is_streamed_with_the_same_bytes_and_checksum(fs_and_root, monkeypatch):
    """Above the streaming threshold the file is hashed on its way out: same bytes, same handle."""
    import hashlib  # noqa: PLC0415

    from onceflow.state_backends import arrow_snapshot  # noqa: PLC0415

    fs, root = fs_and_root
    table = {f"key-{i}": f"value-{i:07d}-" * 4 for i in range(30_000)}
    small = write_state_file(
        fs, f"{root}/in-memory.arrow", keyed_state={"s": table}, operator_state=("op", 1), max_parallelism=128
    )
    monkeypatch.setattr(arrow_snapshot, "_STREAM_BYTES", 1)
    streamed = write_state_file(
        fs, f"{root}/streamed.arrow", keyed_state={"s": table}, operator_state=("op", 1), max_parallelism=128
    )

    in_memory = fs.cat_file(f"{root}/in-memory.arrow")
    assert fs.cat_file(f"{root}/streamed.arrow") == in_memory
    assert (streamed.sha256, streamed.bytes, streamed.rows) == (small.sha256, small.bytes, small.rows)
    assert streamed.sha256 == hashlib.sha256(in_memory).hexdigest()
    assert (streamed.key_group_start, streamed.key_group_end) == (small.key_group_start, small.key_group_end)
    assert read_state_file(fs, streamed) == (("op", 1), {"s": table})
