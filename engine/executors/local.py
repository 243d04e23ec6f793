"""The local executor: every subtask in this process, stepped by a cooperative scheduler.

One thread steps each runnable subtask one batch at a time, round-robin. In
CPython, threads per subtask would share one core anyway and pay for lock
hand-offs on every queue operation; a scheduler loop pays a method call per
batch and is deterministic, which tests and debugging value. State files are
written by a background writer thread, so processing continues meanwhile.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from onceflow.engine.channels import LocalChannel
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.engine.coordinator import CheckpointCoordinator
from onceflow.engine.errors import CheckpointFailureReason, OnceflowError
from onceflow.engine.executors._wiring import (
    Attempt,
    ExecutionSettings,
    build_subtask,
    channel_ids,
    open_subtask,
)
from onceflow.engine.task import Subtask, SubtaskStatus

__all__ = ["ExecutionSettings", "LocalExecutor", "SnapshotWriter"]

log = logging.getLogger("onceflow")


class LocalExecutor:
    """Builds channels and subtasks from a plan and runs them to the final checkpoint."""

    def __init__(
        self, attempt: Attempt, *, on_tick: Callable[[LocalExecutor, float], None] | None = None
    ) -> None:
        self.plan = attempt.plan
        self.settings = attempt.settings
        self.writer = SnapshotWriter(attempt.store, attempt.plan.max_parallelism)
        self.subtasks: list[Subtask] = []
        self.sources: list[Subtask] = []
        self._on_tick = on_tick
        self._build(attempt)
        self.coordinator = attempt.coordinator(
            [st.key for st in self.subtasks],
            trigger_sources=self._trigger_sources,
            notify_complete=self._notify_complete,
            notify_abort=self._notify_abort,
        )

    # -- building ------------------------------------------------------------

    def _build(self, attempt: Attempt) -> None:
        cap = self.settings.channel_capacity
        channels = {cid: LocalChannel(cap, str(cid)) for cid in channel_ids(self.plan)}
        settings = attempt.subtask_settings()
        for task in self.plan.tasks:
            for i in range(task.parallelism):
                subtask = build_subtask(
                    self.plan, task, i, channels.__getitem__, self.writer.submit, settings
                )
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

    def _drain_acks(self, timeout: float | None = None) -> bool:
        acks = self.writer.acks
        got = False
        while True:
            try:
                ack = acks.get(timeout=timeout) if timeout and not got else acks.get_nowait()
            except queue.Empty:
                return got
            got = True
            self.writer.outstanding -= 1
            if ack.error is not None:
                detail = f"writing state of subtask {ack.key} failed: {ack.error!r}"
                self.coordinator.decline(ack.checkpoint_id, CheckpointFailureReason.WRITE_FAILED, detail)
            else:
                self.coordinator.acknowledge(ack.checkpoint_id, ack.key, ack.handles)

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Step subtasks until the final checkpoint completed and every sink committed."""
        subtasks = self.subtasks
        coordinator = self.coordinator
        clock = time.monotonic
        idle_rounds = 0
        ticking = [st for st in subtasks if st.needs_ticks]
        try:
            while not coordinator.finished:
                progressed = False
                for subtask in subtasks:
                    while subtask.step():
                        progressed = True
                        if subtask.reader is not None:
                            break
                self._drain_acks()
                now = clock()
                for subtask in ticking:
                    subtask.tick(now)
                coordinator.tick(now, drained=all(st.status is SubtaskStatus.DRAINED for st in subtasks))
                if self._on_tick is not None:
                    self._on_tick(self, now)
                if progressed:
                    idle_rounds = 0
                    continue
                idle_rounds += 1
                if self.writer.outstanding:
                    self._drain_acks(timeout=0.05)
                elif idle_rounds > 2:
                    self._idle_wait(coordinator)
        finally:
            self.close()

    def close(self) -> None:
        """Close every subtask and wait for queued state writes; never raises."""
        for subtask in self.subtasks:
            subtask.close()
        self.writer.shutdown()

    def _idle_wait(self, coordinator: CheckpointCoordinator) -> None:
        """Nothing can move: wait for an unbounded source, or report a deadlock."""
        waiting_sources = [
            st for st in self.sources if st.status is SubtaskStatus.RUNNING and st.has_output_room()
        ]
        timers = any(st.needs_ticks and st.status is SubtaskStatus.RUNNING for st in self.subtasks)
        if waiting_sources or timers or coordinator.pending is not None:
            time.sleep(0.001)
            return
        stuck = [
            f"{st.task.name}[{st.index}]: {st.status.value}, inputs "
            + ",".join(str(len(ch)) for ch in st.inputs)
            for st in self.subtasks
        ]
        msg = "internal error: no subtask can make progress (deadlock):\n  " + "\n  ".join(stuck)
        raise OnceflowError(msg)
