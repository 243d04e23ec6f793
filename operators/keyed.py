"""Keyed stateful operators: running ``reduce`` and ``stateful_map``.

They run after a ``key_by``: the runtime hands them each record's key, already
checked and routed by its stable hash, so the per-record path is one dict
lookup and one user call. State lives in ``HeapKeyedState`` tables keyed by
the user's key; the snapshot is a shallow copy (values are immutable by
contract), partitioned into key groups when written.

When the user function raises for a record, the loop stops there: the records
before it were applied once (state and output), the failing one changed
nothing (the function raised before any write), and the operator raises a
:class:`~onceflow.operators.bad_records.BatchFailure` saying which; the runtime
passes the rest of the batch in again, so no record is ever applied twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onceflow.operators.bad_records import failure_at
from onceflow.operators.base import Capability, Operator, OperatorSnapshot, RestoredState, RuntimeContext
from onceflow.state_backends.heap import HeapKeyedState

_MISSING = object()
_VALUE = "value"


class _KeyedOperator(Operator):
    def __init__(self) -> None:
        self.state = HeapKeyedState()
        self.values = self.state.table(_VALUE)
        self.dirty: set | None = None
        """Keys of the batches since the last snapshot (incremental checkpoints), else None."""

    def open(self, ctx: RuntimeContext) -> None:
        """Track changed keys when the run takes incremental checkpoints."""
        super().open(ctx)
        self.state.incremental = bool(getattr(ctx, "incremental_checkpoints", False))
        self.dirty = self.state.dirty_keys(_VALUE)

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Capture a frozen copy of every key's value, or of the changed ones (incremental)."""
        capture = self.state.capture()
        return OperatorSnapshot(keyed_state=capture.tables, keyed_kind=capture.kind, deleted=capture.deleted)

    def restore_state(self, restored: RestoredState) -> None:
        """Load the keys of this subtask's key-group range."""
        self.state.restore(restored.keyed_state)
        self.values = self.state.table(_VALUE)


class ReduceOperator(_KeyedOperator):
    """Fold each key's records with ``fn(accumulated, record)``; emit the running value."""

    capabilities = Capability.NONE

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Update and emit the running value of every record's key; ``BatchFailure`` if ``fn`` raises."""
        fn = self.fn
        values = self.values
        get = values.get
        out: list = []
        append = out.append
        if self.dirty is not None:
            self.dirty.update(keys)
        remaining = iter(records)
        try:
            for record, key in zip(remaining, keys):
                previous = get(key, _MISSING)
                if previous is not _MISSING:
                    record = fn(previous, record)
                values[key] = record
                append(record)
        except Exception as exc:
            raise failure_at(records, remaining, exc, out) from None
        return out


class StatefulMapOperator(_KeyedOperator):
    """Call ``fn(state_or_None, record) -> (new_state_or_None, output_or_None)`` per record.

    A None new state deletes the key; a None output emits nothing.
    """

    capabilities = Capability.NONE

    def __init__(self, fn: Callable[[Any, Any], tuple[Any, Any]]) -> None:
        super().__init__()
        self.fn = fn

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Run the user function against each key's state; ``BatchFailure`` if ``fn`` raises."""
        fn = self.fn
        values = self.values
        get = values.get
        out: list = []
        append = out.append
        if self.dirty is not None:
            self.dirty.update(keys)
        remaining = iter(records)
        try:
            for record, key in zip(remaining, keys):
                new_state, output = fn(get(key), record)
                if new_state is None:
                    values.pop(key, None)
                else:
                    values[key] = new_state
                if output is not None:
                    append(output)
        except Exception as exc:
            raise failure_at(records, remaining, exc, out) from None
        return out
