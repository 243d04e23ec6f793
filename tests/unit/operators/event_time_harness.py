"""A test harness for event-time operators: feed batches and watermarks by hand, no engine, no threads.

Snapshots go through the real Arrow state-file writer and reader (on
``memory://``), so a test also proves the state is serializable and that
keyed state restores by key group, as the engine would do it: a restored
operator gets only the keys of its own key-group range and every old
subtask's operator state.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from onceflow.operators.base import Capability, Operator, OperatorSnapshot, RestoredState
from onceflow.state_backends import (
    key_group_for,
    key_group_range_for_subtask,
    read_state_file,
    write_state_file,
)

MAX_PARALLELISM = 128
_files = itertools.count()


class Harness:
    """One operator instance of subtask ``index`` of ``parallelism``, driven step by step."""

    def __init__(
        self,
        op: Operator,
        context_factory: Callable[..., Any],
        *,
        key_fn: Callable[[Any], Any] | None = None,
        index: int = 0,
        parallelism: int = 1,
        restored: RestoredState | None = None,
    ) -> None:
        self.op = op
        self.key_fn = key_fn
        self.index = index
        self.parallelism = parallelism
        self.ctx = context_factory(
            subtask_index=index,
            parallelism=parallelism,
            key_group_range=key_group_range_for_subtask(MAX_PARALLELISM, parallelism, index),
            restored_checkpoint_id=restored.checkpoint_id if restored else None,
        )
        op.open(self.ctx)
        if restored is not None:
            op.restore_state(restored)
        self.side: dict[str, list] = {}

    def _drain(self) -> None:
        if Capability.SIDE_OUTPUTS not in self.op.capabilities:
            return
        buffers = self.op.side_outputs
        if buffers:
            for tag, records in buffers.items():
                self.side.setdefault(tag, []).extend(records)
            buffers.clear()

    def feed(self, records: list) -> list:
        """Process one batch (keyed when the harness has a ``key_fn``); return the output."""
        if self.key_fn is None:
            out = self.op.process_batch(list(records))
        else:
            out = self.op.process_keyed_batch(list(records), [self.key_fn(r) for r in records])
        self._drain()
        return list(out)

    def watermark(self, wm: float) -> list:
        """Advance the watermark (the subtask calls this only when it increases)."""
        out = self.op.on_watermark(wm)
        self._drain()
        return list(out)

    def tick(self, now: float = 0.0) -> list:
        """A processing-time tick."""
        out = self.op.on_processing_time(now)
        self._drain()
        return list(out)

    def finish(self) -> list:
        """End of input: the end-of-time watermark, then ``finish``."""
        out = self.watermark(float("inf")) + list(self.op.finish())
        self._drain()
        return out

    def snapshot(self, checkpoint_id: int) -> OperatorSnapshot:
        """Snapshot, write it as an Arrow state file and read it back in full."""
        snap = self.op.snapshot_state(checkpoint_id)
        fs = fsspec.filesystem("memory")
        path = f"/harness-{uuid.uuid4().hex[:8]}-{next(_files)}.arrow"
        handle = write_state_file(
            fs,
            path,
            keyed_state=snap.keyed_state,
            operator_state=snap.operator_state,
            key_group_of=lambda key: key_group_for(key, MAX_PARALLELISM),
        )
        operator_state, keyed = read_state_file(fs, handle)
        fs.rm(path)
        return OperatorSnapshot(operator_state=operator_state, keyed_state=keyed)

    def notify(self, checkpoint_id: int) -> None:
        """The checkpoint completed."""
        self.op.notify_checkpoint_complete(checkpoint_id)


def restored_for(
    snapshots: list[OperatorSnapshot], checkpoint_id: int, index: int = 0, parallelism: int = 1
) -> RestoredState:
    """What subtask ``index`` of ``parallelism`` gets from the old subtasks' ``snapshots``."""
    key_groups = key_group_range_for_subtask(MAX_PARALLELISM, parallelism, index)
    keyed: dict[str, dict[Any, Any]] = {}
    for snap in snapshots:
        for name, table in snap.keyed_state.items():
            for key, value in table.items():
                if key_group_for(key, MAX_PARALLELISM) in key_groups:
                    keyed.setdefault(name, {})[key] = value
    return RestoredState(
        checkpoint_id=checkpoint_id,
        old_parallelism=len(snapshots),
        operator_states=[(i, s.operator_state) for i, s in enumerate(snapshots)],
        keyed_state=keyed,
    )
