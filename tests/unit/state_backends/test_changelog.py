"""Incremental state: dirty-key captures, delta files with tombstones, compaction, segments."""

from __future__ import annotations

import random

import fsspec
import pytest

from onceflow.state_backends.arrow_snapshot import StateFileHandle, read_state_table
from onceflow.state_backends.changelog import (
    compact,
    merge_changes,
    read_changes,
    segments_of,
    write_segments,
)
from onceflow.state_backends.heap import BASE, DELTA, FULL, HeapKeyedState
from onceflow.state_backends.key_groups import KeyGroupRange, key_group_for


def test_capture_is_full_unless_incremental_then_base_then_deltas() -> None:
    state = HeapKeyedState()
    state.table("v")["a"] = 1
    assert state.capture().kind == FULL
    state.incremental = True
    dirty = state.dirty_keys("v")
    assert dirty is not None
    values = state.table("v")
    values["b"] = 2
    dirty.update(["b"])
    first = state.capture()  # a state that started empty: its first delta is all it wrote
    assert first.kind == DELTA and first.tables == {"v": {"b": 2}}
    state.restore({"v": {"a": 1, "b": 2}})
    base = state.capture()  # after a restore: everything, the chain starts anew
    assert base.kind == BASE and base.tables == {"v": {"a": 1, "b": 2}}
    values["a"] = 10
    del values["b"]
    values["c"] = 3
    dirty.update(["a", "b", "c", "c"])
    delta = state.capture()
    assert delta.kind == DELTA
    assert delta.tables == {"v": {"a": 10, "c": 3}} and delta.deleted == {"v": ["b"]}
    assert not dirty  # emptied in place: the operator keeps the same set
    assert state.capture().tables == {}
    state.restore({"v": {"z": 1}})
    assert state.capture().kind == BASE


def test_delta_holds_only_changed_entries_and_compaction_merges_a_chain() -> None:
    fs = fsspec.filesystem("memory")
    rng = random.Random(7)
    segments = segments_of(KeyGroupRange(0, 128), 128)
    assert len(segments) == 8 and segments[0] == KeyGroupRange(0, 16)
    live = {f"k{i}": i for i in range(20000)}
    chains: dict[KeyGroupRange, list] = {}

    def write(n: int, tables: dict, deleted: dict | None) -> int:
        written = write_segments(
            fs,
            lambda s: f"/c/{n}-{s.start}.arrow",
            segments,
            keyed_state=tables,
            deleted=deleted,
            operator_state={"n": n},
            max_parallelism=128,
            always=segments[0],
        )
        for seg, handle in written.items():
            chains.setdefault(seg, []).append(handle)
        return sum(h.bytes for h in written.values())

    full_bytes = write(0, {"v": dict(live)}, None)
    for n in range(1, 6):
        changed = {f"k{rng.randrange(20000)}": rng.choice([n, "s", 1.5, (n,)]) for _ in range(200)}
        gone = [k for k in (f"k{rng.randrange(20000)}" for _ in range(20)) if k not in changed]
        live.update(changed)
        for k in gone:
            live.pop(k, None)
        delta_bytes = write(n, {"v": changed}, {"v": gone})
        assert delta_bytes < full_bytes * 0.06  # 1% of the entries, plus the files' own overhead
    # applying the chains in order, and compacting them, both give the live state
    applied: dict = {}
    compacted: dict = {}
    for seg, chain in chains.items():
        for handle in chain:
            _, upserts, deleted = read_changes(fs, handle)
            applied.update(upserts.get("v", {}))
            for key in deleted.get("v", []):
                applied.pop(key, None)
        merged = compact(fs, chain, f"/c/merged-{seg.start}.arrow")
        op_state, upserts, deleted = read_changes(fs, merged)
        assert not deleted and op_state == {"n": 5}
        compacted.update(upserts.get("v", {}))
    assert applied == live
    assert compacted == live
    # merged in Arrow, in the order of the files (segments interleaved as a restore sorts them)
    in_order = sorted(((n, seg.start, h) for seg, chain in chains.items() for n, h in enumerate(chain)))
    tables = [(h.path, read_state_table(fs, h)[1]) for _, _, h in in_order]
    assert merge_changes(tables) == {"v": live}
    # a restore of one key-group range reads only the rows in it
    half = KeyGroupRange(0, 64)
    _, upserts, _ = read_changes(fs, chains[segments[0]][0], half)
    assert all(key_group_for(k) in half for k in upserts["v"])


def test_a_capture_with_no_change_still_writes_the_operator_state() -> None:
    fs = fsspec.filesystem("memory")
    segments = segments_of(KeyGroupRange(0, 128), 128)
    written = write_segments(
        fs,
        lambda s: f"/e/{s.start}.arrow",
        segments,
        keyed_state={},
        deleted={},
        operator_state=42,
        max_parallelism=128,
        always=segments[0],
    )
    assert list(written) == [segments[0]]
    assert read_changes(fs, written[segments[0]]) == (42, {}, {})


@pytest.mark.parametrize(("rng", "expected"), [((0, 43), 3), ((43, 86), 4), ((86, 128), 3)])
def test_segments_of_a_subtask_range_follow_the_global_boundaries(
    rng: tuple[int, int], expected: int
) -> None:
    cuts = segments_of(KeyGroupRange(*rng), 128)
    assert len(cuts) == expected
    assert cuts[0].start == rng[0] and cuts[-1].end == rng[1]
    assert all(c.start // 16 == (c.end - 1) // 16 for c in cuts)


def _write_one_segment(
    fs: fsspec.AbstractFileSystem, path: str, changed: dict, deleted: dict, operator_state: object
) -> StateFileHandle:
    """Write one capture of every key group (one segment of ``max_parallelism`` 128) to ``path``."""
    segment = KeyGroupRange(0, 128)
    written = write_segments(
        fs,
        lambda _: path,
        [segment],
        keyed_state=changed,
        deleted=deleted,
        operator_state=operator_state,
        max_parallelism=128,
        always=segment,
    )
    return written[segment]


def test_merging_and_compacting_keep_the_newest_row_drop_tombstones_and_keep_states_apart() -> None:
    fs = fsspec.filesystem("memory")
    steps = [
        ({"a": {"x": 1, "y": 2, "z": 3}, "b": {"x": "bx"}}, {}),
        ({"a": {"x": 10}}, {"a": ["y"], "b": ["x"]}),
        ({"a": {"y": (2,)}, "b": {"w": 1.5}}, {"a": ["z"]}),  # y deleted, then back with a pickled value
        ({}, {"a": ["q"]}),  # a tombstone for a key that never existed
    ]
    tables = []
    written_handles = []
    for n, (changed, deleted) in enumerate(steps):
        handle = _write_one_segment(fs, f"/m/{n}.arrow", changed, deleted, n)
        tables.append((f"/m/{n}.arrow", read_state_table(fs, handle)[1]))
        written_handles.append(handle)
    assert merge_changes(tables) == {"a": {"x": 10, "y": (2,)}, "b": {"w": 1.5}}
    _, compacted, deleted = read_changes(fs, compact(fs, written_handles, "/m/compacted.arrow"))
    assert compacted == {"a": {"x": 10, "y": (2,)}, "b": {"w": 1.5}} and not deleted
    assert merge_changes(tables[:2]) == {"a": {"x": 10, "z": 3}}
    assert merge_changes([]) == {}


@pytest.mark.parametrize("seed", [3, 13, 31])
def test_merging_files_of_overlapping_and_disjoint_key_group_spans_equals_applying_them_in_order(
    seed: int,
) -> None:
    """Files of a chain may span one segment, several, or parts of one (another parallelism's ranges)."""
    rng = random.Random(seed)
    fs = fsspec.filesystem("memory")
    spans = [KeyGroupRange(0, 128), KeyGroupRange(0, 16), KeyGroupRange(64, 80), KeyGroupRange(40, 128)]
    universe = [f"k{i}" for i in range(3000)]
    live: dict = {}
    tables = []
    for n in range(8):
        span = spans[0] if n == 0 else rng.choice(spans)
        keys = [k for k in universe if key_group_for(k) in span]
        changed = {k: rng.choice([n, f"s{n}", (n,)]) for k in rng.sample(keys, min(len(keys), 400))}
        gone = [k for k in rng.sample(keys, min(len(keys), 60)) if k not in changed]
        live.update(changed)
        for k in gone:
            live.pop(k, None)
        written = write_segments(
            fs,
            lambda s, n=n: f"/o/{n}-{s.start}.arrow",
            [span],
            keyed_state={"v": changed},
            deleted={"v": gone} if n else None,
            operator_state=n,
            max_parallelism=128,
            always=span,
        )
        tables.append((f"/o/{n}", read_state_table(fs, written[span])[1]))
    assert merge_changes(tables) == {"v": live}, f"seed {seed}"


@pytest.mark.parametrize("slice_rows", [1, 37, 1 << 18])
def test_compaction_merged_a_slice_of_key_groups_at_a_time_equals_the_live_state(
    slice_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However the chain is cut into key-group slices, the base holds the newest live row of each key."""
    from onceflow.state_backends import changelog  # noqa: PLC0415

    monkeypatch.setattr(changelog, "_COMPACT_ROWS", slice_rows)
    fs = fsspec.filesystem("memory")
    rng = random.Random(11)
    live: dict[str, dict] = {"a": {}, "b": {}}
    chain = []
    for n in range(6):
        changed: dict[str, dict] = {"a": {}, "b": {}}
        deleted: dict[str, list] = {"a": [], "b": []}
        for _ in range(400):
            name, key = rng.choice("ab"), f"k{rng.randrange(600)}"
            if rng.random() < 0.2 and key not in changed[name]:
                deleted[name].append(key)
                live[name].pop(key, None)
            else:
                changed[name][key] = live[name][key] = n * 1000 + rng.randrange(1000) if n % 2 else (n, key)
                if key in deleted[name]:
                    deleted[name].remove(key)
        chain.append(_write_one_segment(fs, f"/s/{n}.arrow", changed, deleted, n))

    handle = compact(fs, chain, "/s/compacted.arrow")

    op_state, upserts, deleted_keys = read_changes(fs, handle)
    assert op_state == 5 and not deleted_keys
    assert upserts == {name: table for name, table in live.items() if table}
    groups = read_state_table(fs, handle)[1]["key_group"].to_pylist()
    assert groups == sorted(groups) and handle.rows == sum(map(len, live.values()))
    assert (handle.key_group_start, handle.key_group_end) == (groups[0], groups[-1] + 1)


@pytest.mark.parametrize("second", ["same struct", "other struct"])
def test_compacted_tuple_deltas_keep_their_struct_or_become_pickles_when_structs_differ(second: str) -> None:
    """Files whose tuples have different field types cannot share one column: their values become pickles."""
    fs = fsspec.filesystem("memory")
    rng = random.Random(5)
    live: dict = {}
    chain = []
    for n in range(4):
        changed: dict = {}
        deleted: list = []
        for _ in range(300):
            key = f"k{rng.randrange(400)}"
            if rng.random() < 0.2 and key not in changed:
                deleted.append(key)
                live.pop(key, None)
                continue
            count = rng.randrange(1000)
            changed[key] = live[key] = (key, count / 4 if second == "other struct" and n == 2 else count)
            if key in deleted:
                deleted.remove(key)
        chain.append(_write_one_segment(fs, f"/t/{n}.arrow", {"v": changed}, {"v": deleted}, n))

    handle = compact(fs, chain, "/t/compacted.arrow")

    metadata = read_state_table(fs, handle)[1].schema.metadata
    expected = (b"tuple", b"3") if second == "same struct" else (b"pickle", b"2")
    assert (metadata[b"onceflow.value_encoding"], metadata[b"onceflow.format"]) == expected
    op_state, upserts, deleted_keys = read_changes(fs, handle)
    assert op_state == 3 and not deleted_keys
    assert upserts == {"v": live}
    assert all(type(v[1]) is type(live[k][1]) for k, v in upserts["v"].items())
    tables = [(h.path, read_state_table(fs, h)[1]) for h in chain]
    assert merge_changes(tables) == {"v": live}
