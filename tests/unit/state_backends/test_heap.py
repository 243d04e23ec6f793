from __future__ import annotations

from onceflow.state_backends import HeapKeyedState


def test_table_is_created_once_and_returned_live():
    state = HeapKeyedState()
    counts = state.table("counts")
    counts["a"] = 1
    assert state.table("counts") is counts
    assert state.tables == {"counts": {"a": 1}}
    assert len(state) == 1


def test_snapshot_is_isolated_from_later_mutation():
    state = HeapKeyedState()
    counts = state.table("counts")
    counts.update({"a": 1, "b": 2})
    snapshot = state.snapshot()

    counts["a"] = 100
    counts["c"] = 3
    del counts["b"]
    state.table("other")["x"] = 1

    assert snapshot == {"counts": {"a": 1, "b": 2}}
    assert counts == {"a": 100, "c": 3}


def test_restore_replaces_contents_and_keeps_live_dicts_valid():
    state = HeapKeyedState()
    counts = state.table("counts")
    stale = state.table("stale")
    counts["old"] = 1
    stale["gone"] = 2
    restored = {"counts": {"a": 5}, "sums": {"b": 1.5}}

    state.restore(restored)

    assert state.table("counts") is counts
    assert counts == {"a": 5}
    assert stale == {}
    assert state.table("sums") == {"b": 1.5}
    assert len(state) == 2
    counts["a"] = 6
    assert restored["counts"] == {"a": 5}, "restore must not alias the caller's dicts"


def test_len_counts_keys_over_all_tables():
    state = HeapKeyedState()
    assert len(state) == 0
    state.table("a").update({1: 1, 2: 2})
    state.table("b").update({1: 1})
    assert len(state) == 3
