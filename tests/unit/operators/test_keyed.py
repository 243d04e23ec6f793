"""Keyed ``reduce`` and ``stateful_map``: a snapshot holds the state as it was at the barrier.

The snapshot writer serializes a capture on a background thread while
processing goes on. A user function that changes its state object in place
(``state.append(record)``, ``acc[k] += 1``), the natural way to write it in
Python, must not leak changes made after the barrier into the checkpoint: on
restore, the records after the barrier are read again and would be applied
twice.
"""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.operators.keyed import ReduceOperator, StatefulMapOperator


def append_in_place(state: list | None, record: Any) -> tuple[list, int]:
    state = state if state is not None else []
    state.append(record)
    return state, len(state)


def merge_in_place(acc: dict, record: dict) -> dict:
    for name, n in record.items():
        acc[name] = acc.get(name, 0) + n
    return acc


def nested_in_place(state: tuple | None, record: Any) -> tuple[tuple, None]:
    # an immutable tuple holding a mutable list: the list is changed in place
    state = state if state is not None else ("seen", [])
    state[1].append(record)
    return state, None


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_stateful_map_snapshot_keeps_a_list_changed_in_place_after_the_barrier(incremental: bool) -> None:
    op = StatefulMapOperator(append_in_place)
    op.state.incremental = incremental
    assert op.process_keyed_batch(["a", "b"], ["k", "k"]) == [1, 2]

    snapshot = op.snapshot_state(1)
    op.process_keyed_batch(["c"], ["k"])

    assert snapshot.keyed_state == {"value": {"k": ["a", "b"]}}
    assert op.state.table("value") == {"k": ["a", "b", "c"]}


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
def test_reduce_snapshot_keeps_a_dict_changed_in_place_after_the_barrier(incremental: bool) -> None:
    op = ReduceOperator(merge_in_place)
    op.state.incremental = incremental
    op.process_keyed_batch([{"x": 1}, {"x": 2, "y": 1}], ["k", "k"])

    snapshot = op.snapshot_state(1)
    op.process_keyed_batch([{"x": 10}], ["k"])

    assert snapshot.keyed_state == {"value": {"k": {"x": 3, "y": 1}}}


def test_snapshot_copies_a_mutable_value_inside_a_tuple() -> None:
    op = StatefulMapOperator(nested_in_place)
    op.process_keyed_batch([1, 2], ["k", "k"])

    snapshot = op.snapshot_state(1)
    op.process_keyed_batch([3], ["k"])

    assert snapshot.keyed_state == {"value": {"k": ("seen", [1, 2])}}


def test_snapshot_shares_immutable_values_instead_of_copying_them() -> None:
    """Numbers, strings and tuples of them (the common case) are not copied: the capture stays cheap."""
    op = ReduceOperator(lambda a, b: (a[0], a[1] + b[1], a[2]))
    big = ("word", 1, ("nested", 2.5, b"bytes", None, True))
    op.process_keyed_batch([big, ("word", 1, big[2])], ["w", "w"])
    live = op.state.table("value")["w"]

    snapshot = op.snapshot_state(1)

    assert snapshot.keyed_state["value"]["w"] is live
