from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onceflow import state_backends
from onceflow.state_backends import (
    DEFAULT_MAX_PARALLELISM,
    HASH_FUNCTION_ID,
    KeyEncodingError,
    KeyGroupAssigner,
    KeyGroupRange,
    decode_key,
    encode_key,
    key_group_for,
    key_group_range_for_subtask,
    stable_hash,
    subtask_for_key_group,
)
from onceflow.state_backends.key_groups import key_groups_for

REPO_ROOT = Path(__file__).resolve().parents[3]

ROUND_TRIP_KEYS = [
    "",
    "user-42",
    "héllo wörld ✓ 🙂",
    "\ud800",  # lone surrogate
    b"",
    b"\x00\xff\x80",
    0,
    -1,
    127,
    -128,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    10**100,
    -(10**100),
    1.5,
    -2.25,
    -1e-300,
    float("inf"),
    float("-inf"),
    None,
    (),
    ("a",),
    ("a", 1, b"b", None, 2.5),
    (("nested", (1, (2, ()))), "x"),
]


def test_public_names_are_exported():
    expected = {
        "DEFAULT_MAX_PARALLELISM",
        "HASH_FUNCTION_ID",
        "KeyGroupRange",
        "KeyGroupAssigner",
        "encode_key",
        "decode_key",
        "stable_hash",
        "key_group_for",
        "key_group_range_for_subtask",
        "subtask_for_key_group",
        "HeapKeyedState",
        "DiskKeyedState",
        "StateBackendConfig",
        "STATE_BACKENDS",
        "StateFileHandle",
        "write_state_file",
        "read_state_file",
        "OnceflowError",
        "ErrorDomain",
        "CorruptStateError",
        "KeyEncodingError",
        "IncompatibleStateError",
    }
    assert set(state_backends.__all__) == expected
    for name in expected:
        assert hasattr(state_backends, name)


@pytest.mark.parametrize("key", ROUND_TRIP_KEYS, ids=repr)
def test_encoding_round_trips(key):
    data = encode_key(key)
    assert isinstance(data, bytes)
    decoded = decode_key(data)
    assert decoded == key
    assert type(decoded) is type(key)
    assert encode_key(decoded) == data


def test_equal_keys_share_encoding_and_key_group():
    assert encode_key(1) == encode_key(1.0) == encode_key(True)
    assert encode_key(0) == encode_key(0.0) == encode_key(-0.0) == encode_key(False)
    assert encode_key((1, "a")) == encode_key((True, "a")) == encode_key((1.0, "a"))
    assert encode_key(1e300) == encode_key(int(1e300))
    assert key_group_for(1) == key_group_for(1.0) == key_group_for(True)


def test_decode_returns_canonical_values():
    assert type(decode_key(encode_key(True))) is int
    assert type(decode_key(encode_key(3.0))) is int
    assert decode_key(encode_key((True, 2.0))) == (1, 2)


def test_str_and_bytes_keys_differ():
    assert encode_key("1") != encode_key(b"1")
    assert encode_key("1") != encode_key(1)
    assert encode_key(("a", "b")) != encode_key(("ab",))
    assert encode_key(("a", ("b",))) != encode_key((("a",), "b"))


@pytest.mark.parametrize(
    "key", [float("nan"), ("a", float("nan")), ((float("nan"),),)], ids=["nan", "tuple", "nested"]
)
def test_nan_key_is_rejected(key):
    with pytest.raises(KeyEncodingError, match="NaN is not a valid key"):
        encode_key(key)
    with pytest.raises(KeyEncodingError):
        key_group_for(key)


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("key", "type_name"),
    [
        ([1], "list"),
        ({"a": 1}, "dict"),
        ({1}, "set"),
        (frozenset({1}), "frozenset"),
        (_Opaque(), "_Opaque"),
        (("a", [1]), "list"),
        (bytearray(b"x"), "bytearray"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_unsupported_key_types_are_rejected_naming_the_type(key, type_name):
    with pytest.raises(KeyEncodingError, match=repr(type_name)) as info:
        encode_key(key)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match=repr(type_name)):
        KeyGroupAssigner().key_group(key)


@pytest.mark.parametrize(
    "data", [b"", b"S\x05\x00\x00\x00ab", b"i\x01", b"N\x00", b"Z", b"T\x02\x00\x00\x00N"]
)
def test_decode_rejects_malformed_bytes(data):
    with pytest.raises(ValueError, match="malformed"):
        decode_key(data)


def test_golden_values_pin_the_hash_function():
    # A change here moves every key to another key group: existing checkpoints
    # would restore state to the wrong subtasks. Bump HASH_FUNCTION_ID instead.
    assert HASH_FUNCTION_ID == "crc32-canonical-v1"
    assert encode_key("user-42").hex() == "5307000000757365722d3432"
    assert stable_hash(encode_key("user-42")) == 4183899165
    assert key_group_for("user-42") == 29
    assert key_group_for(42) == 79
    assert key_group_for(("a", 1)) == 4
    assert key_group_for(b"x") == 122
    assert key_group_for(None) == 26


def _stability_keys():
    keys = [f"user-{i}" for i in range(20)]
    keys += [f"k{i}".encode() for i in range(15)]
    keys += [("word", i, f"s{i}".encode()) for i in range(15)]
    return keys


_CHILD = """
import json, sys
from onceflow.state_backends import key_group_for
keys = [eval(line) for line in sys.stdin.read().splitlines()]
print(json.dumps([[key_group_for(k), key_group_for(k, 4096)] for k in keys]))
"""


@pytest.mark.parametrize("seed", ["1", "2", "3", "random"])
def test_key_groups_are_stable_across_processes(seed):
    keys = _stability_keys()
    expected = [[key_group_for(k), key_group_for(k, 4096)] for k in keys]
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input="\n".join(repr(k) for k in keys),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout) == expected


def test_key_group_range_rejects_bad_parallelism():
    for parallelism in (0, -1, DEFAULT_MAX_PARALLELISM + 1):
        with pytest.raises(ValueError, match="parallelism"):
            key_group_range_for_subtask(DEFAULT_MAX_PARALLELISM, parallelism, 0)
    with pytest.raises(ValueError, match="subtask_index"):
        key_group_range_for_subtask(128, 2, 2)
    with pytest.raises(ValueError, match="parallelism"):
        KeyGroupAssigner(max_parallelism=4, parallelism=5)


@pytest.mark.parametrize("max_parallelism", [1, 7, 128])
def test_ranges_partition_key_groups_and_agree_with_subtask_for_key_group(max_parallelism):
    for parallelism in range(1, max_parallelism + 1):
        ranges = [key_group_range_for_subtask(max_parallelism, parallelism, i) for i in range(parallelism)]
        assert ranges[0].start == 0
        assert ranges[-1].end == max_parallelism
        for before, after in zip(ranges, ranges[1:], strict=False):
            assert before.end == after.start
        for index, key_group_range in enumerate(ranges):
            assert len(key_group_range) >= 1
            for key_group in key_group_range:
                assert key_group in key_group_range
                assert subtask_for_key_group(max_parallelism, parallelism, key_group) == index


def test_key_group_range_is_half_open():
    key_group_range = KeyGroupRange(3, 6)
    assert list(key_group_range) == [3, 4, 5]
    assert len(key_group_range) == 3
    assert 3 in key_group_range and 5 in key_group_range
    assert 6 not in key_group_range and 2 not in key_group_range
    assert len(KeyGroupRange(4, 4)) == 0


def test_assigner_matches_uncached_function_and_subtask_formula():
    assigner = KeyGroupAssigner(max_parallelism=128, parallelism=3)
    for key in ROUND_TRIP_KEYS + _stability_keys():
        key_group = key_group_for(key, 128)
        assert assigner.key_group(key) == key_group
        assert assigner.key_group(key) == key_group  # cached hit
        assert assigner.subtask(key) == subtask_for_key_group(128, 3, key_group)
        assert key_group in key_group_range_for_subtask(128, 3, assigner.subtask(key))


@pytest.mark.parametrize(
    "keys",
    [
        list(range(-5, 300)),  # ints only: the bulk encoding
        [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 7],  # ints past int64 take the long encoding
        ROUND_TRIP_KEYS,
        [True, 1, 1.0, "1", b"1", None, (1, "a")],
    ],
)
def test_bulk_key_groups_equal_one_by_one(keys):
    assert key_groups_for(keys, 128) == [key_group_for(key, 128) for key in keys]


def test_bulk_key_groups_reject_a_key_without_encoding():
    with pytest.raises(KeyEncodingError, match="NaN"):
        key_groups_for([1, float("nan")], 128)


def test_assigner_cache_clears_past_cache_size_and_stays_correct():
    assigner = KeyGroupAssigner(max_parallelism=64, cache_size=10)
    keys = [f"k{i}" for i in range(35)]
    for key in keys:
        assert assigner.key_group(key) == key_group_for(key, 64)
        assert len(assigner._cache) <= 10
    # Cleared on inserts 11, 21 and 31, so keys 31..35 remain.
    assert len(assigner._cache) == 5
    for key in reversed(keys):
        assert assigner.key_group(key) == key_group_for(key, 64)


def test_assigner_never_caches_a_failing_key():
    assigner = KeyGroupAssigner()
    nan = float("nan")
    for _ in range(2):
        with pytest.raises(KeyEncodingError, match="NaN"):
            assigner.key_group(nan)
    assert assigner._cache == {}


def test_assigner_shares_entry_for_equal_keys():
    assigner = KeyGroupAssigner()
    assigner.key_group(1)
    assert assigner.key_group(True) == assigner.key_group(1.0) == key_group_for(1)
    assert len(assigner._cache) == 1
