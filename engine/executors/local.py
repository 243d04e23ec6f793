"""The local executor: every subtask in this process, stepped by the scheduler on one thread.

The embedded default, deterministic enough for tests and debugging. Channels
are in-process deques (:mod:`onceflow.engine.transport.local`), the
coordinator is called directly, and state files are written by a background
writer thread, so processing continues meanwhile. A checkpoint's completion
(its ``_metadata``, retention and the next id's mark: fsyncs and deletes)
runs on another background thread for the same reason.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.engine.errors import CheckpointFailureReason, OnceflowError, classify
from onceflow.engine.executors._wiring import Attempt, ExecutionSettings, build_subtask, open_subtask
from onceflow.engine.executors.base import Executor, SubtaskMetrics, TickHook
from onceflow.engine.scheduler import Round, Scheduler
from onceflow.engine.task import Subtask, SubtaskStatus
from onceflow.engine.transport.local import LocalTransport

__all__ = ["ExecutionSettings", "LocalExecutor", "SnapshotWriter"]

log = logging.getLogger("onceflow")


class LocalExecutor(Executor):
    """Builds channels and subtasks from a plan and runs them to the final checkpoint."""

    def __init__(self, attempt: Attempt, *, on_tick: TickHook | None = None) -> None:
        self.plan = attempt.plan
        self.settings = attempt.settings
        self.writer = SnapshotWriter(
            attempt.store, attempt.plan.max_parallelism, max_deltas=attempt.settings.max_deltas
        )
        self.subtasks: list[Subtask] = []
        self.sources: list[Subtask] = []
        self._on_tick = on_tick
        self._stop = attempt.stop
        self._closed = False
        self._completer = ThreadPoolExecutor(1, thread_name_prefix="onceflow-checkpoint-complete")
        self._build(attempt)
        self.coordinator = attempt.coordinator(
            [st.key for st in self.subtasks],
            trigger_sources=self._trigger_sources,
            notify_complete=self._notify_complete,
            notify_abort=self._notify_abort,
            complete=self._completer.submit,
        )
        self.scheduler = Scheduler(
            self.subtasks,
            self.writer,
            acknowledge=self._acknowledge,
            end_round=self._end_round,
            idle=self._idle,
        )

    # -- building ------------------------------------------------------------

    def _build(self, attempt: Attempt) -> None:
        transport = LocalTransport(self.settings.channel_capacity)
        settings = attempt.subtask_settings()
        for task in self.plan.tasks:
            for i in range(task.parallelism):
                subtask = build_subtask(self.plan, task, i, transport.channel, self.writer.submit, settings)
                self.subtasks.append(subtask)
                if task.is_source:
                    self.sources.append(subtask)
                open_subtask(subtask, self.plan, attempt.restored, settings)

    # -- coordinator callbacks -------------------------------------------------

    def _trigger_sources(self, checkpoint_id: int, final: bool) -> None:
        for source in self.sources:
            source.trigger_checkpoint(checkpoint_id, final)

    def _notify_complete(self, checkpoint_id: int) -> None:
        for subtask in self.subtasks:
            subtask.notify_checkpoint_complete(checkpoint_id)

    def _notify_abort(self, checkpoint_id: int) -> None:
        for subtask in self.subtasks:
            subtask.notify_checkpoint_aborted(checkpoint_id)
        self.writer.delete_later(checkpoint_id)

    # -- scheduler callbacks -------------------------------------------------

    def _acknowledge(self, ack: Any) -> None:
        if ack.error is not None and not classify(ack.error).retryable:
            # The job's own doing (state that cannot be pickled): every checkpoint would fail alike.
            subtask = next(st for st in self.subtasks if st.key == ack.key)
            raise subtask.state_write_error(ack.uid, ack.error) from ack.error
        if ack.error is not None:
            detail = f"writing state of subtask {ack.key} failed: {ack.error!r}"
            self.coordinator.decline(ack.checkpoint_id, CheckpointFailureReason.WRITE_FAILED, detail)
        else:
            self.coordinator.acknowledge(ack.checkpoint_id, ack.key, ack.handles)

    def _end_round(self, now: float) -> Round:
        coordinator = self.coordinator
        if coordinator.finished:
            return Round.STOP
        if self._stop.requested and not coordinator.stop_requested:
            # Sources first, so the stop checkpoint's barriers follow their last records.
            log.warning("%s", self._stop.announcement())
            for source in self.sources:
                source.stop_reading()
            coordinator.request_stop()
        coordinator.tick(now, drained=all(st.status is SubtaskStatus.DRAINED for st in self.subtasks))
        if coordinator.completing:
            # Hand the GIL to the completion thread once a round: it needs it after every fsync and
            # delete, and would otherwise wait up to the switch interval (5 ms) each time.
            time.sleep(0)
        if self._on_tick is not None:
            self._on_tick(self, now)
        return Round.STOP if coordinator.finished else Round.IDLE

    def _idle(self, idle_rounds: int) -> None:
        if self.writer.outstanding:
            self.scheduler.drain_acks(timeout=0.05)
        elif idle_rounds > 2:
            self._idle_wait()

    def _idle_wait(self) -> None:
        """Nothing can move: wait for an unbounded source, or report a deadlock."""
        waiting_sources = [
            st for st in self.sources if st.status is SubtaskStatus.RUNNING and st.has_output_room()
        ]
        timers = any(st.needs_ticks and st.status is SubtaskStatus.RUNNING for st in self.subtasks)
        coordinator = self.coordinator
        if waiting_sources or timers or coordinator.pending is not None or coordinator.stop_requested:
            time.sleep(0.001)
            return
        stuck = [
            f"{st.task.name}[{st.index}]: {st.status.value}, inputs "
            + ",".join(str(len(ch)) for ch in st.inputs)
            for st in self.subtasks
        ]
        msg = "internal error: no subtask can make progress (deadlock):\n  " + "\n  ".join(stuck)
        raise OnceflowError(msg)

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Step subtasks until the final checkpoint completed and every sink committed."""
        try:
            self.scheduler.run()
        finally:
            self.close()

    def close(self) -> None:
        """Close every subtask and wait for queued state writes; never raises."""
        if self._closed:
            return
        self._closed = True
        for subtask in self.subtasks:
            subtask.close()
        self._completer.shutdown(wait=True)
        self.writer.shutdown()

    def metrics(self) -> list[SubtaskMetrics]:
        """Return every subtask's counters now."""
        return [SubtaskMetrics.of(st) for st in self.subtasks]
