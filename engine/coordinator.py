"""The checkpoint coordinator: a thin hub that triggers, collects acks, completes and aborts.

It owns no I/O and no format: a ``PendingCheckpoint`` collects the subtasks'
``StateHandle``s, ``CheckpointMetadata.complete`` turns them into the
checkpoint's metadata, the store writes it, and ``plan_deletions`` decides
what retention removes. It does not know how subtasks snapshot or where they
run. The executor drives it with ``tick`` and feeds it acknowledgements.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

from onceflow.engine.checkpoint.metadata import (
    FULL_ONLY_FORMAT,
    CheckpointMetadata,
    JobDescription,
    StateHandle,
    Timings,
)
from onceflow.engine.checkpoint.retention import plan_deletions, surviving_references
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.errors import CheckpointError, CheckpointFailureReason
from onceflow.engine.faults import CRASH_POINTS

log = logging.getLogger("onceflow")

SubtaskKey = tuple[int, int]
"""``(task_id, subtask_index)``."""


class AckResult(Enum):
    """Outcome of one acknowledgement; expected cases are values, not exceptions."""

    SUCCESS = "success"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"


@dataclass
class PendingCheckpoint:
    """A triggered checkpoint waiting for every subtask's acknowledgement."""

    checkpoint_id: int
    final: bool
    started: float
    started_wall: str
    awaiting: set[SubtaskKey]
    handles: list[StateHandle] = field(default_factory=list)

    def acknowledge(self, key: SubtaskKey, handles: list[StateHandle]) -> AckResult:
        """Record one subtask's state files."""
        if key not in self.awaiting:
            return AckResult.DUPLICATE
        self.awaiting.discard(key)
        self.handles.extend(handles)
        return AckResult.SUCCESS

    @property
    def fully_acknowledged(self) -> bool:
        """Whether every subtask has acknowledged."""
        return not self.awaiting

    def to_metadata(self, job: JobDescription, duration_s: float) -> CheckpointMetadata:
        """Describe this checkpoint, every subtask having acknowledged, ``duration_s`` after its trigger."""
        return CheckpointMetadata.complete(
            job,
            checkpoint_id=self.checkpoint_id,
            final=self.final,
            handles=self.handles,
            timings=Timings(triggered_at=self.started_wall, duration_s=round(duration_s, 4)),
        )


Completer = Callable[[Callable[[], None]], "Future[None]"]
"""Runs a checkpoint's completion I/O and returns its future: at once (the default) or on a thread."""


def complete_now(work: Callable[[], None]) -> Future[None]:
    """Run ``work`` on the calling thread; its exception, if any, is in the returned (done) future."""
    future: Future[None] = Future()
    try:
        work()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
        future.set_exception(exc)
    else:
        future.set_result(None)
    return future


@dataclass
class _Completion:
    """A fully acknowledged checkpoint whose ``_metadata`` and retention are being written."""

    pending: PendingCheckpoint
    meta: CheckpointMetadata
    completed: dict[int, CheckpointMetadata]
    """The completed checkpoints once this one is in and retention is done."""
    duration_s: float
    reserved: int
    """The checkpoint id the completion takes ahead for the next trigger (0: none)."""
    future: Future[None]


@dataclass(frozen=True)
class CompletedCheckpoint:
    """What progress displays and tests want to know about a completed checkpoint."""

    checkpoint_id: int
    duration_s: float
    size_bytes: int
    final: bool


@dataclass(frozen=True)
class CoordinatorSettings:
    """Timing and retention of checkpoints."""

    interval: float = 2.0
    min_pause: float = 0.0
    timeout: float = 60.0
    retain: int = 3
    tolerable_failures: int = 3


class CheckpointCoordinator:
    """Triggers checkpoint n every ``interval``, at most one in flight, and completes it.

    Completion of checkpoint n:
    1. every subtask acknowledged (its state files are written);
    2. ``_metadata`` is written last and atomically: now n exists;
    3. retention removes checkpoints beyond the newest ``retain``;
    4. every subtask is notified, so sinks commit n's output.

    Steps 2 and 3 are I/O (fsyncs, deletes) that ``complete`` runs: on the
    calling thread by default, on a background thread for the local executor,
    whose processing thread would otherwise wait on them. Either way the
    checkpoint stays pending until they are done, so step 4 follows them and
    no checkpoint is triggered or aborted meanwhile. The same I/O takes the
    next checkpoint's id ahead (writes the id mark), so the trigger need not
    wait on that fsync either.

    Three kinds of checkpoint end the same way: periodic ones (every
    ``interval``), the *final* one (every subtask drained; ``finished`` after
    it, and its metadata says ``final``), and the *stop* one (``request_stop``
    after the executor stopped the sources; ``finished`` and ``stopped`` after
    it, but its metadata is not final: a rerun resumes from it and reads on).
    """

    def __init__(
        self,
        *,
        store: CheckpointStore,
        job: JobDescription,
        subtasks: list[SubtaskKey],
        settings: CoordinatorSettings,
        first_checkpoint_id: int,
        completed: Mapping[int, CheckpointMetadata],
        trigger_sources: Callable[[int, bool], None],
        notify_complete: Callable[[int], None],
        notify_abort: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        complete: Completer = complete_now,
    ) -> None:
        self.store = store
        self.job = job
        self.subtasks = subtasks
        self.settings = settings
        self.next_id = first_checkpoint_id
        self.completed = dict(completed)
        self._trigger_sources = trigger_sources
        self._notify_complete = notify_complete
        self._notify_abort = notify_abort
        self.clock = clock
        self._complete_io = complete
        self.pending: PendingCheckpoint | None = None
        self._completion: _Completion | None = None
        self._reserved = 0
        """The highest checkpoint id known to be in the id mark (taken ahead by a completion)."""
        self.last_completed: CompletedCheckpoint | None = None
        self.recent_completed: deque[CompletedCheckpoint] = deque(maxlen=64)
        """The latest completed checkpoints, newest last (metrics read each one once)."""
        self.finished = False
        self.stopped = False
        """The stop checkpoint (``request_stop``) completed and was committed."""
        self._stop_requested = False
        self._stop_checkpoint_id: int | None = None
        self.failures_in_a_row = 0
        self.aborted_count = 0
        self.completed_count = 0
        now = clock()
        self._last_trigger = now
        self._last_end = now

    def tick(self, now: float, *, drained: bool = False) -> None:
        """Abort an expired checkpoint, or trigger the next one when it is due.

        ``drained`` says every subtask has ended its input: then the final
        checkpoint is triggered as soon as none is pending, whatever the interval.
        After ``request_stop`` (and unless drained), the stop checkpoint is
        triggered the same way, again after an abort of it.
        """
        if self._completion is not None:
            if not self._completion.future.done():
                return
            self._finish_completion()
            if self.finished:
                return
        pending = self.pending
        if pending is not None:
            if now - pending.started > self.settings.timeout:
                self.abort(CheckpointFailureReason.TIMEOUT)
            return
        if drained:
            self.trigger(final=True)
            return
        if self._stop_requested:
            CRASH_POINTS.hit("during_graceful_stop")
            self._stop_checkpoint_id = self.trigger(final=False)
            return
        if (
            now - self._last_trigger >= self.settings.interval
            and now - self._last_end >= self.settings.min_pause
        ):
            self.trigger(final=False)

    def trigger(self, *, final: bool) -> int:
        """Start checkpoint ``next_id``: take the id (``_checkpoint_ids``), then the sources snapshot."""
        if self.pending is not None:
            msg = "a checkpoint is already pending"
            raise RuntimeError(msg)
        if final:
            CRASH_POINTS.hit("end_of_input_before_final_checkpoint")
        checkpoint_id = self.next_id
        # The id is taken before anything of it exists, so no rerun reuses it (see restore);
        # the previous completion usually took it already.
        if checkpoint_id > self._reserved:
            self.store.write_checkpoint_id_mark(checkpoint_id)
            self._reserved = checkpoint_id
        self.next_id += 1
        now = self.clock()
        self._last_trigger = now
        self.pending = PendingCheckpoint(
            checkpoint_id=checkpoint_id,
            final=final,
            started=now,
            started_wall=datetime.now(timezone.utc).isoformat(),
            awaiting=set(self.subtasks),
        )
        self._trigger_sources(checkpoint_id, final)
        return checkpoint_id

    def request_stop(self) -> None:
        """Take a stop checkpoint as soon as none is pending, then finish (``stopped``).

        The caller has stopped every source first, so the stop checkpoint's
        barriers follow the last records read and it covers all of them. A
        checkpoint pending now completes or aborts as usual before it.
        """
        self._stop_requested = True

    @property
    def completing(self) -> bool:
        """Whether a checkpoint's completion I/O (``complete``) is under way."""
        return self._completion is not None

    @property
    def stop_requested(self) -> bool:
        """Whether ``request_stop`` was called."""
        return self._stop_requested

    def acknowledge(self, checkpoint_id: int, key: SubtaskKey, handles: list[StateHandle]) -> AckResult:
        """Take one subtask's acknowledgement; complete the checkpoint on the last one."""
        pending = self.pending
        if pending is None or pending.checkpoint_id != checkpoint_id:
            return AckResult.UNKNOWN
        result = pending.acknowledge(key, handles)
        if result is AckResult.SUCCESS and pending.fully_acknowledged:
            self._complete(pending)
        return result

    def decline(self, checkpoint_id: int, reason: CheckpointFailureReason, detail: str) -> None:
        """Abort the checkpoint because a subtask could not snapshot or write its state."""
        if self.pending is not None and self.pending.checkpoint_id == checkpoint_id:
            log.warning("checkpoint %d declined: %s", checkpoint_id, detail)
            self.abort(reason)

    def abort(self, reason: CheckpointFailureReason) -> None:
        """Abort the pending checkpoint; the next one covers its data."""
        pending = self.pending
        if pending is None or self._completion is not None:
            return  # a checkpoint whose _metadata is being written is no longer abortable
        self.pending = None
        self._last_end = self.clock()
        self.aborted_count += 1
        self.failures_in_a_row += 1
        log.warning("checkpoint %d aborted: %s", pending.checkpoint_id, reason.value)
        self._notify_abort(pending.checkpoint_id)
        if self.failures_in_a_row > self.settings.tolerable_failures:
            msg = (
                f"{self.failures_in_a_row} checkpoints failed in a row (last: {reason.value}); "
                "check the checkpoint storage and --checkpoint-timeout"
            )
            raise CheckpointError(msg, reason)

    def _complete(self, pending: PendingCheckpoint) -> None:
        """Hand steps 2 and 3 to ``complete``, deciding here, on the calling thread, what they write."""
        # Step 1: every subtask acknowledged (the caller checked).
        checkpoint_id = pending.checkpoint_id
        duration = self.clock() - pending.started
        meta = pending.to_metadata(self.job, duration)
        completed = {**self.completed, checkpoint_id: meta}
        deletions = plan_deletions(completed, retain=self.settings.retain)
        incremental = any(completed[d.checkpoint_id].format > FULL_ONLY_FORMAT for d in deletions)
        for deletion in deletions:
            completed.pop(deletion.checkpoint_id, None)
        referenced = None
        if incremental or meta.format > FULL_ONLY_FORMAT:
            referenced = surviving_references(completed, ())
        finishing = pending.final or checkpoint_id == self._stop_checkpoint_id
        reserved = 0 if finishing else self.next_id
        store = self.store

        def write() -> None:
            # Step 2: metadata last and atomically.
            CRASH_POINTS.hit("after_task_snapshots_before_metadata")
            # Fencing: a runner that lost its lease (object stores) must not complete a checkpoint.
            store.verify_lock(f"completing checkpoint {checkpoint_id}")
            store.write_metadata(meta)
            CRASH_POINTS.hit("after_metadata_before_notify")
            # Step 3: retention.
            store.delete_checkpoints(deletions)
            if referenced is not None:
                store.collect_shared(referenced, written_up_to=checkpoint_id)
            if reserved:
                store.write_checkpoint_id_mark(reserved)

        future = self._complete_io(write)
        self._completion = _Completion(pending, meta, completed, duration, reserved, future)
        if future.done():
            self._finish_completion()

    def _finish_completion(self) -> None:
        """Step 4 once the I/O is done: count the checkpoint complete and notify; its error is raised here."""
        completion = self._completion
        assert completion is not None
        self._completion = None
        completion.future.result()
        pending, meta = completion.pending, completion.meta
        checkpoint_id = pending.checkpoint_id
        self.pending = None
        self._reserved = max(self._reserved, completion.reserved)
        self._last_end = self.clock()
        self.failures_in_a_row = 0
        self.completed_count += 1
        self.completed = completion.completed
        self.last_completed = CompletedCheckpoint(
            checkpoint_id, completion.duration_s, meta.size_bytes, pending.final
        )
        self.recent_completed.append(self.last_completed)
        log.debug(
            "checkpoint %d complete (%.3f s, %d bytes)", checkpoint_id, completion.duration_s, meta.size_bytes
        )
        # Step 4: notify; sinks commit.
        self._notify_complete(checkpoint_id)
        if pending.final:
            self.finished = True
        elif checkpoint_id == self._stop_checkpoint_id:
            self.finished = self.stopped = True
