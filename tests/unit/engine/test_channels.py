"""Channels and output gates: bounded FIFOs, round robin, and routing by stable key hash."""

from __future__ import annotations

import collections
import enum
import logging
from typing import Any

import pytest

from onceflow.engine.channels import BroadcastGate, ForwardGate, HashGate, RebalanceGate
from onceflow.engine.elements import END_OF_DATA, Barrier, Batch
from onceflow.engine.errors import KeyEncodingError, OperatorError
from onceflow.engine.transport.local import LocalChannel
from onceflow.state_backends.errors import ErrorDomain
from onceflow.state_backends.key_groups import key_group_for, subtask_for_key_group

MAX_PARALLELISM = 128


def channels(n: int, capacity: int = 1000) -> list[LocalChannel]:
    return [LocalChannel(capacity, f"ch{i}") for i in range(n)]


def drain(channel: LocalChannel) -> list[Any]:
    out = []
    while (element := channel.poll()) is not None:
        out.append(element)
    return out


def hash_gate(outs: list[LocalChannel], key_fn: Any = lambda r: r, **kwargs: Any) -> HashGate:
    return HashGate(
        outs,
        key_fn,
        max_parallelism=kwargs.pop("max_parallelism", MAX_PARALLELISM),
        operator_name="count",
        uid="pair",
        subtask_index=kwargs.pop("subtask_index", 0),
        **kwargs,
    )


def routed(outs: list[LocalChannel]) -> dict[Any, int]:
    """Return ``{record: channel index}`` for every record in every channel."""
    where: dict[Any, int] = {}
    for i, ch in enumerate(outs):
        for batch in drain(ch):
            for record in batch.records:
                where[record] = i
    return where


# --------------------------------------------------------------------------- LocalChannel


def test_local_channel_is_fifo_and_polls_none_when_empty() -> None:
    ch = LocalChannel(4)

    assert ch.poll() is None
    ch.put("a")
    ch.put(Barrier(1))
    ch.put("b")

    assert len(ch) == 3
    assert drain(ch) == ["a", Barrier(1), "b"]
    assert len(ch) == 0


def test_local_channel_has_room_until_capacity_is_reached() -> None:
    ch = LocalChannel(2)

    assert ch.capacity == 2
    assert ch.has_room()
    ch.put(1)
    assert ch.has_room()
    ch.put(2)
    assert not ch.has_room()
    ch.poll()
    assert ch.has_room()


def test_local_channel_put_may_overshoot_capacity_by_one_step() -> None:
    ch = LocalChannel(1)
    ch.put(1)

    ch.put(2)

    assert len(ch) == 2
    assert not ch.has_room()


# --------------------------------------------------------------------------- simple gates


def test_forward_gate_sends_the_batch_unkeyed_on_its_single_channel() -> None:
    out = channels(1)
    gate = ForwardGate(out)

    gate.emit(["a", "b"])
    gate.broadcast(END_OF_DATA)

    batch, end = drain(out[0])
    assert batch.records == ["a", "b"] and batch.keys is None
    assert end is END_OF_DATA


def test_rebalance_gate_sends_whole_batches_round_robin_from_its_start() -> None:
    out = channels(3)
    gate = RebalanceGate(out, start=1)

    for i in range(7):
        gate.emit([i])

    assert [[b.records[0] for b in drain(ch)] for ch in out] == [[2, 5], [0, 3, 6], [1, 4]]


def test_rebalance_gate_start_wraps_around() -> None:
    out = channels(2)
    gate = RebalanceGate(out, start=5)

    gate.emit(["x"])

    assert len(out[1]) == 1 and len(out[0]) == 0


def test_broadcast_gate_shares_every_batch_with_every_channel() -> None:
    out = channels(3)
    records = ["a", "b"]

    BroadcastGate(out).emit(records)

    batches = [drain(ch) for ch in out]
    assert all(len(b) == 1 and b[0].records is records for b in batches)


def test_control_elements_reach_every_channel_and_room_needs_every_channel() -> None:
    out = channels(2, capacity=1)
    gate = RebalanceGate(out)

    assert gate.has_room()
    gate.broadcast(Barrier(3))

    assert not gate.has_room()
    assert [drain(ch) for ch in out] == [[Barrier(3)], [Barrier(3)]]
    assert gate.has_room()


# --------------------------------------------------------------------------- HashGate routing


KEYS = ["apple", "banana", "cherry", 0, 1, 2, -7, 3.5, b"raw", None, ("a", 1), ("b", (2, None))] + [
    f"word-{i}" for i in range(200)
]


@pytest.mark.parametrize("parallelism", [2, 3, 7])
def test_hash_gate_matches_the_key_group_assignment(parallelism: int) -> None:
    out = channels(parallelism)

    hash_gate(out).emit(list(KEYS))

    expected = {
        k: subtask_for_key_group(MAX_PARALLELISM, parallelism, key_group_for(k, MAX_PARALLELISM))
        for k in KEYS
    }
    assert routed(out) == expected
    assert len(set(expected.values())) == parallelism


def test_hash_gate_routes_the_same_key_to_the_same_channel_every_time() -> None:
    out = channels(4)
    gate = hash_gate(out, key_fn=lambda r: r[0])
    records = [(k, i) for i in range(5) for k in ("x", "y", "z", 42)]

    for i in range(0, len(records), 3):
        gate.emit(records[i : i + 3])

    channels_of: dict[Any, set[int]] = {}
    for i, ch in enumerate(out):
        for batch in drain(ch):
            for record in batch.records:
                channels_of.setdefault(record[0], set()).add(i)
    assert all(len(found) == 1 for found in channels_of.values())
    assert set(channels_of) == {"x", "y", "z", 42}


@pytest.mark.parametrize("parallelism", [2, 3])
def test_a_key_new_to_a_batch_is_hashed_once_however_often_it_comes(parallelism: int) -> None:
    """Hot keys that appear first in a batch (new auction ids, say) must not cost a hash per record."""
    out = channels(parallelism, capacity=100)
    gate = hash_gate(out, key_fn=lambda r: r[0])
    learned: list = []
    real_learn = gate._learn
    gate._learn = lambda keys: learned.extend(keys) or real_learn(keys)  # type: ignore[method-assign]
    records = [(k, i) for i in range(50) for k in ("hot", 7, "cold")]

    gate.emit(records[:75])
    gate.emit(records[75:])

    assert sorted(learned, key=str) == [7, "cold", "hot"]
    assert len(routed(out)) == len(records)


def test_two_gates_with_fresh_caches_route_identically() -> None:
    first, second = channels(5), channels(5)

    hash_gate(first).emit(list(KEYS))
    hash_gate(second, cache_size=3).emit(list(KEYS))

    assert routed(first) == routed(second)


@pytest.mark.parametrize("parallelism", [2, 3])
def test_a_cache_cleared_by_a_batch_of_new_keys_misroutes_none_of_its_known_keys(parallelism: int) -> None:
    """Known keys in a batch whose new keys overflow the route cache keep their channel."""
    first, second = channels(parallelism), channels(parallelism)
    gate = hash_gate(second, cache_size=10)
    gate.emit(KEYS[:8])  # cached
    for ch in second:
        drain(ch)

    gate.emit(list(KEYS))  # the first 8 known, the rest new: more than the cache holds
    hash_gate(first).emit(list(KEYS))

    assert routed(second) == routed(first)


def test_keys_travel_with_the_batch_parallel_to_the_records() -> None:
    out = channels(3)
    records = [{"user": u, "n": i} for i, u in enumerate(["ann", "bob", "cy", "ann", "dee", "bob"])]

    hash_gate(out, key_fn=lambda r: r["user"]).emit(records)

    seen = []
    for ch in out:
        for batch in drain(ch):
            assert batch.keys is not None
            assert batch.keys == [r["user"] for r in batch.records]
            seen.extend(batch.records)
    assert sorted(r["n"] for r in seen) == list(range(6))


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_carried_event_times_are_split_parallel_to_the_records(parallelism: int) -> None:
    out = channels(parallelism)
    records = [(u, i) for i, u in enumerate(["ann", "bob", "cy", "ann", "dee", "bob", "eve"])]

    hash_gate(out, key_fn=lambda r: r[0]).emit(records, [r[1] + 0.5 for r in records])
    hash_gate(out, key_fn=lambda r: r[0]).emit(records)

    stamped, plain = [], []
    for ch in out:
        for batch in drain(ch):
            if batch.timestamps is None:
                plain += batch.records
            else:
                assert batch.timestamps == [r[1] + 0.5 for r in batch.records]
                stamped += batch.records
    assert sorted(stamped) == sorted(plain) == sorted(records)


def test_forward_rebalance_and_broadcast_gates_send_carried_event_times_with_the_batch() -> None:
    for gate_type in (ForwardGate, RebalanceGate, BroadcastGate):
        out = channels(1)
        gate_type(out).emit(["a", "b"], [1.0, 2.0])
        gate_type(out).emit(["c"])
        stamped, plain = drain(out[0])
        assert (stamped.records, stamped.timestamps, plain.timestamps) == (["a", "b"], [1.0, 2.0], None)


def test_hash_gate_with_one_channel_keeps_the_batch_and_its_keys() -> None:
    out = channels(1)
    records = ["b", "a", "b"]

    hash_gate(out, key_fn=str.upper).emit(records)

    (batch,) = drain(out[0])
    assert batch.records is records
    assert batch.keys == ["B", "A", "B"]


def test_equal_keys_of_different_types_go_to_the_same_channel() -> None:
    out = channels(7)

    hash_gate(out, key_fn=lambda r: r[0]).emit([(1, "int"), (1.0, "float"), (True, "bool")])

    non_empty = [i for i, ch in enumerate(out) if len(ch)]
    assert len(non_empty) == 1
    (batch,) = drain(out[non_empty[0]])
    assert [r[1] for r in batch.records] == ["int", "float", "bool"]


def test_no_empty_batches_are_sent() -> None:
    out = channels(16)

    hash_gate(out).emit(["only-one-key"] * 3)

    assert sorted(len(ch) for ch in out) == [0] * 15 + [1]


# --------------------------------------------------------------------------- HashGate errors


@pytest.mark.parametrize("parallelism", [1, 3])
@pytest.mark.parametrize(
    ("bad_key", "type_name"),
    [([1, 2], "list"), ({"a": 1}, "dict"), (object(), "object"), (("ok", [1]), "tuple")],
)
def test_unsupported_key_type_raises_operator_error_naming_operator_and_type(
    parallelism: int, bad_key: Any, type_name: str
) -> None:
    out = channels(parallelism)
    gate = hash_gate(out, key_fn=lambda r: r, subtask_index=0)

    with pytest.raises(OperatorError) as info:
        gate.emit(["fine", bad_key])

    err = info.value
    assert "'count'" in str(err)
    assert type_name in str(err)
    assert err.operator == "key_by -> count"
    assert err.uid == "pair"
    assert err.domain is ErrorDomain.USER
    assert isinstance(err.__cause__, TypeError)
    assert isinstance(err.__cause__, KeyEncodingError)
    assert all(len(ch) == 0 for ch in out)


class UnhashableStr(str):
    __hash__ = None  # type: ignore[assignment]


def test_unhashable_key_the_encoder_would_accept_is_still_a_key_encoding_error() -> None:
    out = channels(2)

    with pytest.raises(OperatorError, match="UnhashableStr.*is unhashable") as info:
        hash_gate(out).emit([UnhashableStr("k")])

    assert isinstance(info.value.__cause__, KeyEncodingError)
    assert all(len(ch) == 0 for ch in out)


def test_nan_key_is_refused() -> None:
    with pytest.raises(OperatorError, match="NaN") as info:
        hash_gate(channels(2)).emit([float("nan")])
    assert isinstance(info.value.__cause__, KeyEncodingError)


def test_key_function_that_raises_gives_operator_error_with_its_cause() -> None:
    out = channels(2)
    gate = hash_gate(out, key_fn=lambda r: r["user"], subtask_index=1)

    with pytest.raises(OperatorError, match="key_by before operator 'count' raised KeyError") as info:
        gate.emit([{"user": "ann"}, {"name": "bob"}])

    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.subtask_index == 1
    assert all(len(ch) == 0 for ch in out)


def test_batch_repr_says_whether_it_is_keyed() -> None:
    assert repr(Batch([1, 2])) == "Batch(2 records)"
    assert repr(Batch([1], ["k"])) == "Batch(1 records, keyed)"
    assert len(Batch([1, 2, 3])) == 3


class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        (True, "1 (int)"),
        (2.0, "2 (int)"),
        (Color.RED, "1 (int)"),
        (Point(1, 2), "(1, 2) (tuple)"),
        (("a", False), "('a', 0) (tuple)"),
    ],
    ids=["bool", "integral-float", "int-enum", "namedtuple", "tuple-of-bool"],
)
def test_a_key_a_restore_gives_back_as_another_type_is_warned_once_naming_the_operator(
    caplog: pytest.LogCaptureFixture, parallelism: int, key: Any, canonical: str
) -> None:
    out = channels(parallelism)
    gate = hash_gate(out, key_fn=lambda r: r)
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        gate.emit(["plain", key])
        gate.emit([key, "other"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "'count'" in warnings[0] and f"as {canonical}" in warnings[0], warnings[0]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_keys_a_restore_gives_back_as_they_are_are_not_warned(
    caplog: pytest.LogCaptureFixture, parallelism: int
) -> None:
    out = channels(parallelism)
    gate = hash_gate(out, key_fn=lambda r: r)
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        gate.emit(list(KEYS) + [2.5, ("a", 1.5, (b"x", None))])
    assert caplog.records == []
