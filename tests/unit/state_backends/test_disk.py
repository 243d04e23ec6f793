"""The disk backend: a hot cache in front of a local LMDB database, snapshots in the heap's file format."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import fsspec
import pytest

from onceflow.state_backends import (
    KeyGroupRange,
    key_group_for,
    key_group_range_for_subtask,
    read_state_file,
    write_state_file,
)
from onceflow.state_backends.changelog import read_changes, segments_of, write_view_segments
from onceflow.state_backends.config import StateBackendConfig
from onceflow.state_backends.disk import DiskKeyedState
from onceflow.state_backends.errors import StateSerializationError
from onceflow.state_backends.heap import BASE, DELTA


@pytest.fixture
def make(tmp_path):
    created: list[DiskKeyedState] = []

    def make(cache_entries: int = 50, uid: str = "count", subtask: int = 0) -> DiskKeyedState:
        config = StateBackendConfig("disk", directory=str(tmp_path / "local"), cache_entries=cache_entries)
        state = config.create(job_name="job", uid=uid, subtask_index=subtask, max_parallelism=128)
        assert isinstance(state, DiskKeyedState)
        created.append(state)
        return state

    yield make
    for state in created:
        state.close()


def _apply(state, name: str, updates: dict) -> None:
    """One batch: every key of ``updates`` set (or deleted, for None), through prepare/done."""
    keys = list(updates)
    table = state.prepare(name, keys)
    for key, value in updates.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    state.done(name, keys)


def test_values_survive_eviction_and_deletes_do_not_come_back(make):
    state = make(cache_entries=10)
    reference: dict = {}
    for start in range(0, 500, 25):
        batch = {("k", i): {"n": i, "start": start} for i in range(start, start + 25)}
        _apply(state, "s", batch)
        reference.update(batch)
    deleted = {("k", i): None for i in range(0, 500, 3)}
    _apply(state, "s", deleted)
    for key in deleted:
        reference.pop(key)
    # the deleted keys are asked for again before and after they reach the database
    assert not set(state.prepare("s", list(deleted))) & set(deleted)
    state.done("s", [])
    _apply(state, "s", {("k", 999): 1})
    assert len(state.table("s").cache) <= 10 + 25
    reference[("k", 999)] = 1
    assert state.keyed_tables() == {"s": reference}
    assert len(state) == len(reference)


def test_a_snapshot_is_not_changed_by_later_writes_and_streams_into_the_heap_format(make, tmp_path):
    state = make()
    _apply(state, "value", {f"user-{i}": i for i in range(1000)})
    _apply(state, "other", {(1, "a"): [1, 2], b"x": None, 2.5: "s"})
    snapshot = state.snapshot()
    _apply(state, "value", {f"user-{i}": -1 for i in range(0, 1000, 2)} | {"user-1": None, "new": 5})
    fs = fsspec.filesystem("file")
    handle = write_state_file(
        fs, f"{tmp_path}/s.arrow", keyed_state=snapshot, operator_state={"wm": 3}, max_parallelism=128
    )
    assert handle.rows == 1002 and (handle.key_group_start, handle.key_group_end) == (0, 128)
    operator_state, tables = read_state_file(fs, handle)
    assert operator_state == {"wm": 3}
    assert tables == {"value": {f"user-{i}": i for i in range(1000)}, "other": {(1, "a"): [1, 2], 2.5: "s"}}
    # a restore at parallelism 3 reads only its key groups from the same file
    merged: dict = {}
    for index in range(3):
        rng = key_group_range_for_subtask(128, 3, index)
        _, part = read_state_file(fs, handle, rng)
        assert all(key_group_for(k) in rng for k in part.get("value", {}))
        merged.update(part.get("value", {}))
    assert merged == tables["value"]


def test_heap_checkpoint_restores_into_disk_and_back_at_other_key_group_ranges(make, tmp_path):
    fs = fsspec.filesystem("file")
    heap_state = {"value": {f"u{i}": (i, "x" * (i % 5)) for i in range(3000)}, "list:l": {7: (1, 2)}}
    heap_file = write_state_file(
        fs, f"{tmp_path}/heap.arrow", keyed_state=heap_state, operator_state=None, key_group_of=key_group_for
    )
    disk_files = []
    for index in range(2):
        rng = key_group_range_for_subtask(128, 2, index)
        _, part = read_state_file(fs, heap_file, rng)
        state = make(uid="count", subtask=index)
        state.restore(part)
        assert state.keyed_tables() == part
        _apply(state, "value", {k: None for k in list(part.get("value", {}))[:5]})
        disk_files.append(
            write_state_file(
                fs,
                f"{tmp_path}/disk-{index}.arrow",
                keyed_state=state.snapshot(),
                operator_state=None,
                max_parallelism=128,
            )
        )
    restored: dict = {}
    for handle in disk_files:
        _, part = read_state_file(fs, handle, KeyGroupRange(0, 128))
        for name, table in part.items():
            restored.setdefault(name, {}).update(table)
    assert len(restored["value"]) == 3000 - 10
    assert restored["list:l"] == {7: (1, 2)}
    assert all(heap_state["value"][k] == v for k, v in restored["value"].items())


def test_a_value_that_cannot_be_pickled_names_operator_state_key_and_type(make):
    state = make(cache_entries=1, uid="sessions")
    pattern = r"'sessions'.*state 'value', key 'k2'.*'_thread.lock'"
    with pytest.raises(StateSerializationError, match=pattern):
        for i in range(4):  # written when the cache overflows
            _apply(state, "value", {f"k{i}": threading.Lock() if i == 2 else i})
    other = make(uid="sessions", subtask=1)
    _apply(other, "value", {"k2": threading.Lock()})
    with pytest.raises(StateSerializationError, match=pattern):  # or at the latest at the checkpoint
        other.snapshot()


def test_close_waits_for_an_open_snapshot_and_removes_the_local_database(make, tmp_path):
    state = make()
    _apply(state, "value", {"a": 1})
    snapshot = state.snapshot()
    state.close()
    assert os.path.isdir(state.directory)
    assert snapshot.to_dicts() == {"value": {"a": 1}}
    snapshot.release()
    assert not os.path.exists(state.directory)


def test_a_killed_process_database_is_removed_by_the_next_subtask(tmp_path):
    base = tmp_path / "local"
    code = (
        "import os, sys\n"
        "from onceflow.state_backends.config import StateBackendConfig\n"
        f"s = StateBackendConfig('disk', directory={str(base)!r}).create("
        "job_name='j', uid='u', subtask_index=0, max_parallelism=128)\n"
        "print(s.directory, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    leftover = proc.stdout.strip()
    assert proc.returncode == -9 and os.path.isdir(leftover)
    state = StateBackendConfig("disk", directory=str(base)).create(
        job_name="j", uid="u", subtask_index=0, max_parallelism=128
    )
    try:
        assert not os.path.exists(leftover)
    finally:
        state.close()


def test_unknown_backend_and_bad_cache_size_are_refused():
    with pytest.raises(ValueError, match=r"'rocks' is unknown; choose one of heap, disk"):
        StateBackendConfig("rocks")
    with pytest.raises(ValueError, match="cache_entries must be at least 1"):
        StateBackendConfig("disk", cache_entries=0)


def _resident_kib(path: str) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            first = line.split(None, 1)[0]
            if "-" in first and all(c in "0123456789abcdef-" for c in first):
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_database_pages_read_by_lookups_and_snapshots_are_given_back(make):
    state = make(cache_entries=1000)
    state.pages.budget = 0  # this process's own files are mapped: every check gives pages back
    for start in range(0, 100_000, 1000):
        _apply(state, "value", {f"key-{i}": ("x" * 40, i) for i in range(start, start + 1000)})
    data_file = state.pages.data_file
    assert os.path.getsize(data_file) > 4 << 20
    snapshot = state.snapshot()
    assert len(snapshot.to_dicts()["value"]) == 100_000  # streams every page of the file
    assert _resident_kib(data_file) < 1024
    state.load(state.table("value"), [f"key-{i}" for i in range(0, 100_000, 7)])
    state.pages.release()
    assert _resident_kib(data_file) < 1024
    snapshot.release()


def _apply_chain(fs, chains: dict, into: dict) -> None:
    """Apply every segment's files in order (as a restore does) onto ``into``."""
    for chain in chains.values():
        for handle in chain:
            _, upserts, deleted = read_changes(fs, handle)
            for name, table in upserts.items():
                into.setdefault(name, {}).update(table)
            for name, keys in deleted.items():
                for key in keys:
                    into.get(name, {}).pop(key, None)


# changes written out (past 4 * cache_entries noted by key only, read back), or still in the cache
@pytest.mark.parametrize("cache_entries", [3, 30, 10_000])
def test_incremental_disk_captures_write_only_changes_as_heap_format_deltas(make, cache_entries):
    fs = fsspec.filesystem("memory")
    segments = segments_of(KeyGroupRange(0, 128), 128)
    rng = random.Random(11)
    state = make(cache_entries=cache_entries)
    state.incremental = True
    live: dict = {}
    chains: dict = {}

    def checkpoint(n: int, expect_kind: str) -> int:
        capture = state.capture()
        assert capture.kind == expect_kind
        written = write_view_segments(
            fs,
            lambda s: f"/d/{n}-{s.start}.arrow",
            segments,
            view=capture.tables,
            operator_state=n,
            always=segments[0],
        )
        capture.tables.release()
        if expect_kind == BASE:
            chains.clear()
        for seg, handle in written.items():
            chains.setdefault(seg, []).append(handle)
        return sum(h.rows for h in written.values())

    for n in range(1, 6):
        changes = {f"k{rng.randrange(400)}": rng.choice([n, "s", (n,), None]) for _ in range(60)}
        _apply(state, "v", changes)
        for key, value in changes.items():
            if value is None:
                live.pop(key, None)
            else:
                live[key] = value
        rows = checkpoint(n, DELTA)
        assert rows <= len(changes)  # the changed keys only (a key deleted before it was written counts too)
        applied: dict = {}
        _apply_chain(fs, chains, applied)
        assert applied.get("v", {}) == live
    assert checkpoint(6, DELTA) == 0  # nothing changed: only the operator state
    # after a restore the next capture is a base holding every entry, then deltas again
    state.restore({"v": dict(live)})
    assert checkpoint(7, BASE) == len(live)
    _apply(state, "v", {"k1": "after", "fresh": 1})
    live.update({"k1": "after", "fresh": 1})
    assert checkpoint(8, DELTA) == 2
    applied = {}
    _apply_chain(fs, chains, applied)
    assert applied == {"v": live}


@pytest.mark.parametrize("cache_entries", [5, 10_000])
@pytest.mark.parametrize("older_is_base", [False, True])
@pytest.mark.parametrize("read_once", [True, False])
def test_a_disk_capture_not_written_is_absorbed_by_the_next_one(
    make, monkeypatch, cache_entries, older_is_base, read_once
):
    from onceflow.state_backends import disk

    if not read_once:
        monkeypatch.setattr(disk, "_SMALL_DELTA", 0)
    fs = fsspec.filesystem("memory")
    segments = segments_of(KeyGroupRange(0, 128), 128)
    state = make(cache_entries=cache_entries)
    state.incremental = True
    if older_is_base:
        state.restore({"v": {"old": -1, "k3": -3}})
    _apply(state, "v", {f"k{i}": i for i in range(50)})
    first = state.capture()
    assert first.kind == (BASE if older_is_base else DELTA)
    _apply(state, "v", {"k1": None, "k2": "two", "new": 0})
    second = state.capture().tables
    second.absorb(first.tables)  # the first write failed: the next one carries its changes
    _apply(state, "v", {"k4": "later"})  # not in either capture
    written = write_view_segments(
        fs, lambda s: f"/m/{s.start}.arrow", segments, view=second, operator_state=None
    )
    second.release()
    applied: dict = {}
    _apply_chain(fs, {s: [h] for s, h in written.items()}, applied)
    expected = {f"k{i}": i for i in range(50) if i != 1} | {"k2": "two", "new": 0}
    if older_is_base:
        expected["old"] = -1
    assert applied == {"v": expected}


def test_disk_state_is_checkpointed_incrementally_unless_the_run_says_otherwise():
    assert StateBackendConfig("disk").incremental(None) is True
    assert StateBackendConfig("heap").incremental(None) is False
    assert StateBackendConfig("disk").incremental(False) is False  # --no-incremental-checkpoints
    assert StateBackendConfig("heap").incremental(True) is True


def test_the_key_filter_never_misses_an_added_key_as_it_grows_and_rules_out_most_others():
    from onceflow.state_backends._key_filter import KeyFilter

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    added = [rng.randbytes(rng.randrange(4, 24)) for _ in range(50_000)]
    others = [b"other" + rng.randbytes(8) for _ in range(50_000)]
    key_filter = KeyFilter(1000)
    for start in range(0, len(added), 1024):
        key_filter.add(added[start : start + 1024])
        key_filter.add(added[: start + 1024 : 97])  # keys added again count once
    assert key_filter.stages > 3, seed
    assert key_filter.may_contain(added) == added, seed
    false_positives = len(key_filter.may_contain(others))
    assert false_positives < 0.02 * len(others), (seed, false_positives)
    assert key_filter.nbytes < 16 * len(added), seed  # about 2 bytes per key, doubling stages
    key_filter.clear()
    assert len(key_filter.may_contain(added)) < 0.02 * len(added), seed


def _on_disk(state, name: str, keys) -> list:
    """The keys of ``keys`` that the filter lets through to a database lookup."""
    table = state.table(name)
    db_keys = {state._db_key(table.table_id, key): key for key in keys}
    return [db_keys[k] for k in state.stored.may_contain(list(db_keys))]


def test_new_keys_skip_the_database_and_the_filter_is_rebuilt_by_a_rescaled_restore(make, tmp_path):
    fs = fsspec.filesystem("file")
    state = make(cache_entries=100)
    written = {f"user-{i}": i for i in range(20_000)}
    items = list(written.items())
    for start in range(0, len(items), 500):
        _apply(state, "value", dict(items[start : start + 500]))
    _apply(state, "value", {"user-7": None})  # deleted: may stay in the filter, never comes back
    state.snapshot().release()  # every change written out
    new = [f"new-{i}" for i in range(20_000)]
    assert len(_on_disk(state, "value", new)) < 400  # about 0.5% of new keys cost a lookup
    assert set(_on_disk(state, "value", written)) >= set(written) - {"user-7"}
    table = state.prepare("value", new + ["user-7", "user-8"])
    assert "user-7" not in table and table["user-8"] == 8
    state.done("value", [])
    whole = write_state_file(
        fs, f"{tmp_path}/p1.arrow", keyed_state=state.snapshot(), operator_state=None, max_parallelism=128
    )
    # rescale p1 -> 2: each subtask's restore leaves exactly its own key groups in the filter
    for index in range(2):
        rng = key_group_range_for_subtask(128, 2, index)
        _, part = read_state_file(fs, whole, rng)
        mine = part["value"]
        theirs = [k for k in written if k not in mine and k != "user-7"]
        restored = make(cache_entries=100, subtask=index)
        _apply(restored, "value", {k: -1 for k in theirs[:3000]})  # written before the restore
        restored.restore(part)
        assert set(_on_disk(restored, "value", mine)) == set(mine)
        assert len(_on_disk(restored, "value", theirs)) < 0.02 * len(theirs)
        table = restored.prepare("value", list(written))
        assert {k: table[k] for k in written if k in table} == mine
        restored.done("value", [])


@pytest.mark.parametrize("read_once", [True, False])
def test_changes_written_out_between_captures_wait_in_a_run_file_and_the_newest_wins(
    make, monkeypatch, read_once
):
    from onceflow.state_backends import _change_runs, disk

    monkeypatch.setattr(_change_runs, "BATCH_ROWS", 3)  # several record batches in the file
    if not read_once:
        monkeypatch.setattr(disk, "_SMALL_DELTA", 0)  # read once per segment, as a large delta is
    fs = fsspec.filesystem("memory")
    segments = segments_of(KeyGroupRange(0, 128), 128)
    state = make(cache_entries=4)
    state.incremental = True
    rng = random.Random(5)
    live: dict = {}
    for step in range(40):  # a few keys rewritten and deleted many times, each write evicted
        key = f"k{rng.randrange(12)}"
        value = None if step % 7 == 3 else step
        _apply(state, "v", {key: value, f"filler{step}": step})
        live[key] = value
        live[f"filler{step}"] = step
    capture = state.capture()
    assert capture.kind == DELTA
    runs = [name for name in os.listdir(state.directory) if name.startswith("changes-")]
    assert len(runs) == 1  # the changes of the interval are in a file, not in memory
    written = write_view_segments(
        fs, lambda s: f"/r/{s.start}.arrow", segments, view=capture.tables, operator_state=0
    )
    capture.tables.release()
    assert not [name for name in os.listdir(state.directory) if name.startswith("changes-")]
    upserts: dict = {}
    deleted: set = set()
    for handle in written.values():
        _, tables, gone = read_changes(fs, handle)
        upserts.update(tables.get("v", {}))
        deleted.update(gone.get("v", []))
    assert upserts == {k: v for k, v in live.items() if v is not None}
    assert deleted <= {k for k, v in live.items() if v is None}  # a key deleted before it was written: no row
    assert not deleted & set(upserts)
