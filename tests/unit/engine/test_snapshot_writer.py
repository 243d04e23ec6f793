"""The snapshot writer's incremental chains: paced compaction, bounded chains, exact restore."""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from onceflow.engine.checkpoint.restore import _load_chains
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.operators.base import OperatorSnapshot
from onceflow.state_backends.disk import DiskKeyedState
from onceflow.state_backends.heap import HeapKeyedState
from onceflow.state_backends.key_groups import KeyGroupRange


def _write(writer: SnapshotWriter, checkpoint_id: int, state: HeapKeyedState | DiskKeyedState) -> list:
    capture = state.capture()
    snap = OperatorSnapshot(
        operator_state=checkpoint_id,
        keyed_state=capture.tables,
        keyed_kind=capture.kind,
        deleted=capture.deleted,
    )
    writer.submit(checkpoint_id, (0, 0), [("op", snap)])
    ack = writer.acks.get()
    writer.outstanding -= 1
    assert ack.error is None, ack.error
    return ack.handles


def test_compaction_is_paced_one_segment_at_a_time_and_chains_stay_bounded(tmp_path: Path) -> None:
    seed = 11
    rng = random.Random(seed)
    store = CheckpointStore(str(tmp_path), "job")
    writer = SnapshotWriter(store, 128, max_deltas=16)  # 8 segments: one compaction every 2 checkpoints
    state = HeapKeyedState()
    state.incremental = True
    values = state.table("v")
    dirty = state.dirty_keys("v")
    assert dirty is not None
    names = [f"k{i}" for i in range(4000)]
    values.update(zip(names, range(len(names))))
    dirty.update(names)
    handles = _write(writer, 1, state)
    new_bases = []
    for n in range(2, 60):
        changed = rng.sample(names, 40)
        for key in changed:
            values[key] = values.get(key, 0) + 1
        gone = rng.sample(names, 5)
        for key in gone:
            values.pop(key, None)
        dirty.update(changed + gone)
        handles = _write(writer, n, state)
        by_segment: dict[int, list] = {}
        for h in handles:
            by_segment.setdefault(h.key_group_start // 16, []).append(h)
        assert all(len(files) <= 17 for files in by_segment.values()), (seed, n)
        bases = [h for h in handles if h.kind == "base" and h.created == n]
        assert len(bases) <= 1, (seed, n)  # the base a compaction made after n - 1's ack
        new_bases.append(len(bases))
        op_states, keyed = _load_chains(store, handles, KeyGroupRange(0, 128))
        assert op_states == [(0, n)], (seed, n)
        assert keyed == {"v": values}, (seed, n)
    writer.shutdown()
    # paced: once every 2 checkpoints, never a burst; every segment was rebased
    assert sum(new_bases) in range(27, 30), (seed, new_bases)
    assert all(a + b <= 1 for a, b in zip(new_bases, new_bases[1:])), (seed, new_bases)


class _FailingLocalFileSystem(LocalFileSystem):
    """The local disk, but the write of the file after the next ``allowed`` ones fails (ENOSPC)."""

    allowed: int | None = None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode and self.allowed is not None:
            if self.allowed == 0:
                self.allowed = None
                raise OSError(errno.ENOSPC, f"No space left on device (injected): {path}")
            self.allowed -= 1
        return super()._open(path, mode, **kwargs)


@pytest.mark.parametrize("backend", ["heap", "disk"])
def test_a_delta_whose_write_failed_is_carried_into_the_next_and_restores_exactly(
    tmp_path: Path, backend: str
) -> None:
    """Failed writes at random files of a delta (or of a compaction after it): the checkpoint is
    declined, and the next one written holds every change since the last one written, deletes too."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    store = CheckpointStore(str(tmp_path / "chk"), "job")
    fs = _FailingLocalFileSystem(skip_instance_cache=True)
    store.fs = fs
    writer = SnapshotWriter(store, 128, max_deltas=16)
    state: HeapKeyedState | DiskKeyedState
    if backend == "heap":
        state = HeapKeyedState()
    else:
        state = DiskKeyedState(str(tmp_path / "db"), max_parallelism=128, cache_entries=400)
    state.incremental = True
    names = [f"k{i}" for i in range(3000)]
    expected = dict(zip(names, range(len(names))))

    def change(keys: list[str], update: Any) -> None:
        table = state.prepare("v", keys)
        for key in keys:
            update(table, key)
        state.done("v", keys)

    change(names, lambda table, key: table.__setitem__(key, expected[key]))
    _write(writer, 1, state)
    failed = verified = 0
    for n in range(2, 80):
        changed = rng.sample(names, 60)
        for key in changed:
            expected[key] = expected.get(key, 0) + 1
        change(changed, lambda table, key: table.__setitem__(key, expected[key]))
        gone = rng.sample(names, 8)
        for key in gone:
            expected.pop(key, None)
        change(gone, lambda table, key: table.pop(key, None))
        if rng.random() < 0.3:
            fs.allowed = rng.randrange(0, 10)  # this delta's k-th file, or a compaction's after it
        capture = state.capture()
        snap = OperatorSnapshot(n, capture.tables, keyed_kind=capture.kind, deleted=capture.deleted)
        writer.submit(n, (0, 0), [("op", snap)])
        ack = writer.acks.get()
        writer.outstanding -= 1
        if ack.error is not None:
            assert isinstance(ack.error, OSError), (seed, n, ack.error)
            failed += 1
            continue
        op_states, keyed = _load_chains(store, ack.handles, KeyGroupRange(0, 128))
        assert op_states == [(0, n)], (seed, n)
        assert keyed == {"v": expected}, f"seed={seed}: checkpoint {n} does not restore the live state"
        verified += 1
    writer.shutdown()
    state.close()
    assert failed >= 5 and verified >= 20, (seed, failed, verified)
