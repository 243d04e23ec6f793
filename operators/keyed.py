"""Keyed stateful operators: running ``reduce`` and ``stateful_map``.

They run after a ``key_by``: the runtime hands them each record's key, already
checked and routed by its stable hash, so the per-record path is one dict
lookup and one user call. State lives in the run's keyed-state backend
(``ctx.state_backend``): per batch the operator asks it for a dict holding the
batch's keys (the live table on the heap; the hot cache, with the batch's keys
loaded, on disk), loops over the records with plain dict operations, and tells
the backend which keys it touched. The snapshot is a shallow copy on the heap
(with a copy of any value that could change in place: a function may update
its state object instead of returning a new one) or a read view of the local
database.

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
from onceflow.operators.event_time import frozen_values
from onceflow.state_backends.disk import DiskKeyedState
from onceflow.state_backends.heap import HeapKeyedState

_MISSING = object()
_VALUE = "value"


class _KeyedOperator(Operator):
    def __init__(self) -> None:
        self.state: HeapKeyedState | DiskKeyedState = HeapKeyedState()

    def open(self, ctx: RuntimeContext) -> None:
        """Create this subtask's keyed state in the run's backend.

        Both backends track changed keys when the run takes incremental
        checkpoints (by default: on disk, not on the heap).
        """
        super().open(ctx)
        state = ctx.state_backend.create(
            job_name=ctx.job_name,
            uid=ctx.uid,
            subtask_index=ctx.subtask_index,
            max_parallelism=ctx.max_parallelism,
        )
        state.incremental = ctx.state_backend.incremental(getattr(ctx, "incremental_checkpoints", None))
        self.state = state

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Capture a frozen copy of every key's value, or of the changed ones (incremental checkpoints).

        On the heap the capture shares the value objects with the live table;
        a value the user's function may still change in place (a list, a dict)
        is copied here, at the barrier (:func:`frozen_values`). The disk
        backend pickles what it captures, which freezes it already.
        """
        capture = self.state.capture()
        tables = capture.tables
        if isinstance(tables, dict):
            tables = {name: frozen_values(table) for name, table in tables.items()}
        return OperatorSnapshot(keyed_state=tables, keyed_kind=capture.kind, deleted=capture.deleted)

    def restore_state(self, restored: RestoredState) -> None:
        """Load the keys of this subtask's key-group range."""
        self.state.restore(restored.keyed_state)

    def close(self) -> None:
        """Release the state (the disk backend deletes its local database)."""
        self.state.close()


class ReduceOperator(_KeyedOperator):
    """Fold each key's records with ``fn(accumulated, record)``; emit the running value."""

    capabilities = Capability.NONE

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Update and emit the running value of every record's key; ``BatchFailure`` if ``fn`` raises."""
        fn = self.fn
        values = self.state.prepare(_VALUE, keys)
        get = values.get
        out: list = []
        append = out.append
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
        finally:
            self.state.done(_VALUE, keys)
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
        values = self.state.prepare(_VALUE, keys)
        get = values.get
        out: list = []
        append = out.append
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
        finally:
            self.state.done(_VALUE, keys)
        return out
