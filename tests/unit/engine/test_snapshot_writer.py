"""The snapshot writer's incremental chains: paced compaction, bounded chains, exact restore."""

from __future__ import annotations

import random
from pathlib import Path

from onceflow.engine.checkpoint.restore import _load_chains
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.operators.base import OperatorSnapshot
from onceflow.state_backends.heap import HeapKeyedState
from onceflow.state_backends.key_groups import KeyGroupRange


def _write(writer: SnapshotWriter, checkpoint_id: int, state: HeapKeyedState) -> list:
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
