"""The operator life cycle: the hooks the runtime calls, and the context it hands over.

This module defines contracts only. It does not schedule, checkpoint or move data:
``engine`` does that and calls these hooks. An operator reaches the runtime only
through the :class:`RuntimeContext` it receives in ``open``.

Life cycle of one operator instance (one per subtask per attempt)::

    open(ctx) -> restore_state(...)? -> { process_batch | process_keyed_batch
              | on_watermark | on_processing_time | snapshot_state
              | notify_checkpoint_complete | notify_checkpoint_aborted }*
              -> finish() -> ... -> close()

What an operator does beyond the hooks every operator has is declared, not
guessed: its :class:`Capability` flags (``Operator.capabilities``). The runtime
reads them once, when it compiles a subtask's chain, and from then on calls
``on_processing_time``, reads ``emitted_watermark``/``emitted_idle`` or drains
``side_outputs`` only for operators that declared the matching flag.

``restore_state`` is called before any record when the attempt resumes from a
checkpoint. ``finish`` is called once all inputs have ended, before the final
checkpoint, so whatever it returns is covered by that checkpoint. ``close`` is
called on every exit path, including failure, and must not raise.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from onceflow.operators.errors import SinkAheadOfCheckpointError
from onceflow.state_backends.config import StateBackendConfig
from onceflow.state_backends.disk import DiskSnapshot
from onceflow.state_backends.key_groups import KeyGroupRange

log = logging.getLogger("onceflow")


class RuntimeContext(Protocol):
    """What the runtime tells an operator about where and how it runs."""

    job_name: str
    operator_name: str
    uid: str
    subtask_index: int
    parallelism: int
    max_parallelism: int
    key_group_range: KeyGroupRange
    attempt_id: str
    """Unique per attempt of a run; names files that a later attempt may abort."""
    restored_checkpoint_id: int | None
    """The checkpoint this attempt restored from, or None for a fresh start."""
    overwrite_output: bool
    """True when the user asked to start over (``--fresh``): sinks may replace their old output."""
    incremental_checkpoints: bool | None
    """True when checkpoints write only the keyed entries changed since the previous one; None when
    the run leaves it to the state backend (``state_backend.incremental``)."""
    state_backend: StateBackendConfig
    """Where keyed operators keep their state (``--state-backend``); they create it in ``open``."""

    def crash_point(self, label: str) -> None:
        """Kill the process here if the fault-injection setting names ``label``."""


@dataclass(frozen=True, slots=True)
class OperatorSnapshot:
    """State captured synchronously at a barrier.

    ``operator_state`` is a picklable value restored to every subtask of the
    next attempt (union semantics, so parallelism may change). ``keyed_state``
    maps a state name to a ``{key: value}`` dict that the caller must treat as
    frozen, or is the disk backend's read view of its states (every entry, or
    for a delta the keys changed since the previous snapshot, read from the
    view); the runtime partitions it by key group when writing.

    ``keyed_kind`` says what ``keyed_state`` holds (``HeapKeyedState.capture``):
    every entry (``"full"``, the default; ``"base"`` starts a chain of
    incremental checkpoints), or only the entries changed since the previous
    snapshot (``"delta"``), with ``deleted`` naming the keys deleted since.
    """

    operator_state: Any = None
    keyed_state: dict[str, dict[Any, Any]] | DiskSnapshot = field(default_factory=dict)
    keyed_kind: str = "full"
    deleted: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What a subtask gets back on restore.

    ``operator_states`` holds ``(old_subtask_index, state)`` for every subtask
    of the checkpointed run, so an operator can pick its share after a rescale.
    ``keyed_state`` holds only the keys in this subtask's key-group range.
    """

    checkpoint_id: int
    old_parallelism: int
    operator_states: list[tuple[int, Any]]
    keyed_state: dict[str, dict[Any, Any]]


class Capability(enum.Flag):
    """What an operator does beyond the hooks every operator has, declared in ``Operator.capabilities``.

    The runtime reads the flags once per subtask when it compiles the chain, so
    an operator that leaves a flag out is never asked for that behaviour (and
    pays nothing for it); one that declares a flag must honour the matching
    part of the contract below.
    """

    NONE = 0
    EMITS_WATERMARKS = enum.auto()
    """Defines event time anew (a timestamp assigner): the runtime reads ``emitted_watermark`` and
    ``emitted_idle`` after every batch and tick, and stops upstream watermarks at this operator."""
    PROCESSING_TIME = enum.auto()
    """Reacts to the clock: the runtime calls ``on_processing_time`` on its ticks."""
    SIDE_OUTPUTS = enum.auto()
    """Emits to tagged side outputs: owns a ``side_outputs`` dict that the runtime drains after every hook."""
    ARROW_INPUT = enum.auto()
    """``process_batch`` takes an Arrow RecordBatch as is; other operators get a list of rows."""
    TWO_PHASE_COMMIT = enum.auto()
    """A :class:`TwoPhaseCommitWriter`: output becomes visible on checkpoint completion; it reports
    ``recommitted``."""
    TIMESTAMPED_OUTPUT = enum.auto()
    """Stamps its outputs with event times: after every hook that returns records, ``output_timestamps``
    is a list parallel to them. The runtime sends them with the batch when the operator ends its
    chain (its consumers read them as ``input_timestamps``)."""
    HOLDS_RECORDS = enum.auto()
    """Holds records back and emits them later (a window's pre-aggregating combiner): the runtime calls
    ``prepare_snapshot_pre_barrier`` before every barrier, and before this subtask's output goes idle,
    and pushes what it returns down the chain, so the operator keeps nothing at a barrier (no state)
    and nothing it holds is late downstream once that output no longer holds the watermark back."""
    TWO_INPUTS = enum.auto()
    """Reads two keyed inputs (``connect``, the joins): the runtime hands the first input's batches to
    ``process_keyed_batch`` and the second's to ``process_keyed_batch2``. Only a task's head has it."""


class Operator:
    """Base of every operator; each hook has a do-nothing default.

    Who calls what: the subtask that owns the operator calls every hook from one
    thread, never concurrently, in the order of the module docstring. Hooks that
    return records (``process_batch``, ``on_watermark``, ``on_processing_time``,
    ``finish``) hand them to the next operator of the chain.

    Cost: ``process_batch`` is called once per batch, never per record; the
    per-record work is whatever the operator's own loop does.
    """

    capabilities: Capability = Capability.NONE
    """What this operator does beyond the common hooks; each concrete class declares it.

    An instance may narrow its class's flags in ``__init__`` (a window without a
    late-records tag has no side outputs), never after: the runtime reads this
    once, before ``open``.
    """

    emitted_watermark: float = -math.inf
    """``EMITS_WATERMARKS`` only: the watermark this operator defines (never decreases)."""

    emitted_idle: bool = False
    """``EMITS_WATERMARKS`` only: no record came for a while, downstream should not wait for this input."""

    side_outputs: dict[str, list[Any]]
    """``SIDE_OUTPUTS`` only: records per side-output tag, created in ``__init__``, appended to by the
    operator and drained (then cleared) by the runtime after every hook call. Never rebound."""

    output_timestamps: list | None = None
    """``TIMESTAMPED_OUTPUT`` only: the event time of each record the last hook returned."""

    input_timestamps: list | None = None
    """Set by the runtime before ``process_keyed_batch``/``2``: the event times the batch's records
    carry (from an operator with ``TIMESTAMPED_OUTPUT``), or None."""

    ctx: RuntimeContext

    def open(self, ctx: RuntimeContext) -> None:
        """Prepare to run; called once per attempt before anything else."""
        self.ctx = ctx

    def process_batch(self, records: list) -> list:
        """Transform one batch and return the output records (possibly empty)."""
        return records

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Like ``process_batch`` for operators after ``key_by``; ``keys[i]`` is the key of ``records[i]``."""
        return self.process_batch(records)

    def process_keyed_batch2(self, records: list, keys: list) -> list:
        """``TWO_INPUTS`` only: like ``process_keyed_batch``, for the batches of the second input."""
        msg = f"{type(self).__name__} takes one input; it does not declare Capability.TWO_INPUTS"
        raise NotImplementedError(msg)

    def on_watermark(self, watermark: float) -> list:
        """React to the task's watermark advancing; return records to emit.

        Called only with a watermark above the previous one of this attempt (the
        last one, at the end of input, is ``math.inf``). After a restore the
        attempt's watermarks start again from minus infinity, so an operator that
        restored its own watermark ignores the ones that do not pass it.
        """
        return []

    def on_processing_time(self, now: float) -> list:
        """``PROCESSING_TIME`` only: fire what the clock has passed; return records to emit.

        Called every few milliseconds while the subtask runs; ``now`` is the
        runtime's monotonic clock. Must be cheap when there is nothing to do.
        """
        return []

    def prepare_snapshot_pre_barrier(self) -> list:
        """``HOLDS_RECORDS`` only: return every record held back; called before a barrier or idleness.

        The records go down the chain (and out) before the barrier, so the
        checkpoint covers them in the operators downstream (Flink's
        ``prepareSnapshotPreBarrier``).
        """
        return []

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot | None:
        """Capture state for checkpoint ``checkpoint_id``; None when stateless.

        Called at the barrier, between two batches. Must copy or freeze what it
        returns: processing resumes while the snapshot is written.
        """
        return None

    def restore_state(self, restored: RestoredState) -> None:
        """Load state from a completed checkpoint; called after ``open``."""

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is durable. May be skipped; a later one subsumes it."""

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` will never complete."""

    def finish(self) -> list:
        """All inputs ended: return the records still owed (timers, windows)."""
        return []

    def close(self) -> None:
        """Release resources. Called on every exit path; must not raise."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """How far a source reader is behind its input: ``amount`` of ``unit`` not yet read."""

    amount: int
    unit: str
    """``"bytes"`` (files) or ``"entries"`` (log streams)."""


class SourceReader:
    """One subtask's reader of a source.

    The runtime calls ``poll_batch`` repeatedly; between two calls it may call
    ``snapshot_state`` and then emit a barrier, so the offsets a snapshot
    returns must cover exactly the records already returned.
    """

    output_timestamps: list | None = None
    """``TIMESTAMPED_OUTPUT`` only: the event time of each record the last hook returned."""

    input_timestamps: list | None = None
    """Set by the runtime before ``process_keyed_batch``/``2``: the event times the batch's records
    carry (from an operator with ``TIMESTAMPED_OUTPUT``), or None."""

    ctx: RuntimeContext

    def open(self, ctx: RuntimeContext) -> None:
        """Prepare to read; called once per attempt before ``restore_state``."""
        self.ctx = ctx

    def restore_state(self, restored: RestoredState) -> None:
        """Seek to the offsets of a completed checkpoint."""

    def poll_batch(self, max_records: int) -> list | None:
        """Return up to about ``max_records`` records, ``[]`` if none are ready now, None at the end."""
        raise NotImplementedError

    def snapshot_state(self, checkpoint_id: int) -> Any:
        """Return the offsets reached (a picklable value)."""
        return None

    def batch_position(self, index: int | None) -> dict[str, Any] | None:
        """Say where record ``index`` of the last polled batch came from, or (None) the whole batch.

        Called on the error path only, right after the batch failed in the
        operators chained to this reader, to name a bad record's origin in an
        error or a dead letter (e.g. ``{"file": ..., "line": ...}``). A JSON-able
        dict, or None when the reader cannot tell (the default). Must be cheap
        to support: ``poll_batch`` may remember a reference, never build
        anything per record.
        """
        return None

    def backlog(self) -> Backlog | None:
        """Say how much input is left to read (source lag); None when the reader cannot tell (the default).

        Called by the metrics path every second or so, never per record, from
        the thread that polls; must not raise and must be cheap: at most one
        small round trip, better none (offsets the reader already holds).
        """
        return None

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is durable (a log source may acknowledge upstream)."""

    def close(self) -> None:
        """Release resources; must not raise."""


class Source:
    """A description of where records come from; creates one reader per subtask.

    A ``Source`` is built by the job's ``build()`` and must hold configuration
    only, so every worker can rebuild it from the job file.
    """

    bounded: bool = True

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        """Return the reader for one subtask."""
        raise NotImplementedError


class Sink:
    """A description of where records go; creates one writer operator per subtask."""

    @property
    def shared_across_processes(self) -> bool:
        """Whether writers of this sink in different processes reach the same storage.

        The process executor refuses, at start, a sink that says no: each worker
        would write into storage only it can see (``memory://``), lost when it
        exits. True by default (a database, a stream, a shared filesystem).
        """
        return True

    @property
    def shared_across_nodes(self) -> bool:
        """Whether writers of this sink on different machines reach the same storage.

        The ray executor refuses, on a cluster of several nodes, a sink that
        says no (a local path). True by default (a database, a stream, s3://).
        """
        return True

    def create_writer(self, subtask_index: int, parallelism: int) -> Operator:
        """Return the writer operator for one subtask."""
        raise NotImplementedError


class TwoPhaseCommitWriter(Operator):
    """A sink writer whose output becomes visible only once a checkpoint completes.

    Subclasses implement ``write``, ``pre_commit``, ``commit`` and
    ``abort_leftovers``; this base owns the bookkeeping:

    1. Records go to ``write`` into the open transaction.
    2. At barrier ``n``, ``pre_commit(n)`` makes them durable but invisible and
       returns a committable (or None when there was nothing to write).
    3. The snapshot holds every committable not yet committed, so a restore can
       finish them.
    4. ``notify_checkpoint_complete(n)`` commits every pending committable with
       id <= n, in checkpoint order. A lost notification is subsumed by a later
       one; a late one for an already committed id is a no-op.
    5. ``restore_state`` re-commits the restored committables (``commit`` must be
       idempotent), then ``abort_leftovers`` removes what later attempts left.

    A restore never goes behind the sink: a subclass that records the
    checkpoint id of each commit with the commit reports the newest one in
    ``last_committed_checkpoint``, and ``restore_state`` refuses
    (:class:`~onceflow.operators.errors.SinkAheadOfCheckpointError`) a restore
    of an older checkpoint, before anything is committed or aborted. Checkpoint
    ids are never reused, so a newer commit means newer checkpoints were lost.
    """

    capabilities = Capability.TWO_PHASE_COMMIT

    recommitted: int = 0
    """Committables that ``restore_state`` made visible (output a crash left uncommitted)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that declares capabilities without ``TWO_PHASE_COMMIT``."""
        super().__init_subclass__(**kwargs)
        if Capability.TWO_PHASE_COMMIT not in cls.capabilities:
            msg = (
                f"{cls.__qualname__} is a TwoPhaseCommitWriter but declares capabilities "
                f"{cls.capabilities!r}; keep the flag: capabilities = Capability.TWO_PHASE_COMMIT | ..."
            )
            raise TypeError(msg)

    def __init__(self) -> None:
        self._pending: dict[int, Any] = {}

    def write(self, records: list) -> None:
        """Append records to the open transaction."""
        raise NotImplementedError

    def pre_commit(self, checkpoint_id: int) -> Any:
        """Make the open transaction durable and invisible; return its committable or None."""
        raise NotImplementedError

    def commit(self, committable: Any) -> bool | None:
        """Make a committable's records visible. Idempotent: committing twice changes nothing.

        Returns True when this call made records visible, False when they
        already were (None when the sink cannot tell).
        """
        raise NotImplementedError

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Remove this sink's uncommitted output except ``keep`` (committables still owed)."""

    def last_committed_checkpoint(self) -> int | None:
        """Return the newest checkpoint id this sink committed in this run, by any subtask; None if unknown.

        Called once per restore, after ``open``. Counts every subtask of the
        checkpointed run (old subtasks too, after a rescale) and every earlier
        attempt, but not a ``--fresh`` start's predecessors. None (the default)
        skips the check: a sink that can take back committed output (FileSink
        deletes part files newer than the restored checkpoint) needs none.
        """
        return None

    def owns_committable(self, old_subtask_index: int, old_parallelism: int) -> bool:
        """Decide which restored subtask's committables this subtask re-commits."""
        return old_subtask_index % self.ctx.parallelism == self.ctx.subtask_index

    def process_batch(self, records: list) -> list:
        """Write the batch; sinks emit nothing."""
        if records:
            self.write(records)
        return []

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Pre-commit the open transaction and snapshot every uncommitted committable."""
        committable = self.pre_commit(checkpoint_id)
        if committable is not None:
            self._pending[checkpoint_id] = committable
        return OperatorSnapshot(operator_state=sorted(self._pending.items()))

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Commit every pending committable covered by ``checkpoint_id``, oldest first."""
        for n in sorted(self._pending):
            if n > checkpoint_id:
                break
            self.commit(self._pending.pop(n))

    def restore_state(self, restored: RestoredState) -> None:
        """Refuse a restore behind the sink, re-commit the restored checkpoint's committables, abort the rest.

        Raises:
            SinkAheadOfCheckpointError: the sink committed a newer checkpoint
                than ``restored`` (see the class docstring).
        """
        self._refuse_restore_behind(restored.checkpoint_id)
        owed = [
            (n, committable)
            for old_index, state in restored.operator_states
            if self.owns_committable(old_index, restored.old_parallelism)
            for n, committable in (state or [])
        ]
        for _, committable in sorted(owed, key=lambda item: item[0]):
            self.ctx.crash_point("during_commit_on_restore")
            if self.commit(committable):
                self.recommitted += 1
        if self.ctx.subtask_index == 0:
            self.abort_leftovers([c for _, state in restored.operator_states for _, c in (state or [])])

    def _refuse_restore_behind(self, restored: int) -> None:
        committed = self.last_committed_checkpoint()
        if committed is None or committed <= restored:
            return
        ctx = self.ctx
        if committed == restored + 1:
            lost, their = f"checkpoint {committed} completed but is now", "its"
        else:
            lost, their = f"checkpoints {restored + 1} to {committed} are", "their"
        msg = (
            f"sink {ctx.operator_name!r} (uid {ctx.uid!r}) of job {ctx.job_name!r} already committed "
            f"checkpoint {committed}, but this run would restore checkpoint {restored}: {lost} missing "
            f"or damaged in the checkpoint directory. Rerunning from checkpoint {restored} would "
            f"write {their} output twice, so the run is refused. Either put "
            f"the lost checkpoint back (the whole chk-{committed} directory, e.g. from a backup) and "
            f"rerun, or rerun with --fresh to start over: --fresh replaces the output where the sink "
            f"can; where it cannot (rows in a table, entries in a stream), remove this job's earlier "
            f"output first"
        )
        raise SinkAheadOfCheckpointError(msg, committed, restored)


def describe_callable(fn: Callable[..., Any]) -> str:
    """Show a user function as ``qualname (file:line)`` for error messages."""
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    if code is None:
        return name
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"
