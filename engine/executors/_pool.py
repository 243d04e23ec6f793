"""What executors with workers outside the runner share: the coordinator side of the control protocol.

The process executor's workers are forked processes, the Ray executor's are
Ray actors; both run :class:`onceflow.engine.executors.worker.Worker` and
speak the same control messages (listed in that module). This base class
keeps the coordinator, turns the workers' reports into acks, drained
subtasks, metrics and failures, and drives the run loop; a subclass only says
how a message reaches a worker (``_send``), how reports come back
(``_receive``) and how workers are released (``close``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import abstractmethod
from typing import Any

from onceflow.engine.errors import CheckpointFailureReason, Failure, WorkerError
from onceflow.engine.executors._wiring import Attempt
from onceflow.engine.executors.base import Executor, SubtaskMetrics, TickHook
from onceflow.engine.executors.worker import worker_of
from onceflow.engine.task import SubtaskStatus
from onceflow.state_backends.errors import ErrorDomain

__all__ = ["WorkerPoolExecutor"]

log = logging.getLogger("onceflow")


class WorkerPoolExecutor(Executor):
    """Coordinates ``workers`` remote workers (subtask ``i`` of every task on worker ``i % workers``)."""

    def __init__(self, attempt: Attempt, workers: int, *, on_tick: TickHook | None = None) -> None:
        plan = attempt.plan
        self.plan = plan
        self.store = attempt.store
        self.settings = attempt.settings
        self._on_tick = on_tick
        self._stop = attempt.stop
        self.workers_count = workers
        keys = [(t.task_id, i) for t in plan.tasks for i in range(t.parallelism)]
        self._metrics = {key: SubtaskMetrics.initial(plan, key) for key in keys}
        self._drained: set[tuple[int, int]] = set()
        self.coordinator = attempt.coordinator(
            keys,
            trigger_sources=self._trigger_sources,
            notify_complete=lambda n: self._broadcast(("complete", n)),
            notify_abort=lambda n: self._broadcast(("abort", n)),
        )
        self._source_workers = sorted(
            {worker_of(i, workers) for t in plan.tasks if t.is_source for i in range(t.parallelism)}
        )
        self._stopped: set[int] = set()
        self._closed = False

    # -- what a subclass provides ------------------------------------------------

    @abstractmethod
    def _send(self, worker: int, message: tuple) -> None:
        """Queue a control message to a worker, in order; a worker that already failed is ignored."""

    @abstractmethod
    def _receive(self) -> None:
        """Handle (``_handle``) what the workers reported within ~20 ms; raise the first failure."""

    # -- control messages ------------------------------------------------------

    def _trigger_sources(self, checkpoint_id: int, final: bool) -> None:
        for w in self._source_workers:
            self._send(w, ("trigger", checkpoint_id, final))

    def _broadcast(self, message: tuple) -> None:
        for w in range(self.workers_count):
            if w not in self._stopped:
                self._send(w, message)

    def _handle(self, worker: int, message: tuple) -> None:
        kind = message[0]
        coordinator = self.coordinator
        if kind == "ack":
            coordinator.acknowledge(message[1], tuple(message[2]), message[3])
        elif kind == "decline":
            coordinator.decline(
                message[1],
                CheckpointFailureReason.WRITE_FAILED,
                f"writing state of subtask {message[2]} failed: {message[3]}",
            )
        elif kind == "drained":
            task_id, index = message[1]
            key = (task_id, index)
            self._drained.add(key)
            self._metrics[key] = dataclasses.replace(self._metrics[key], status=SubtaskStatus.DRAINED)
        elif kind == "metrics":
            for metrics in message[1]:
                self._metrics[metrics.key] = metrics
        elif kind == "stopped":
            self._stopped.add(worker)
        elif kind == "error":
            raise self._worker_error(worker, message[1])

    def _worker_error(self, worker: int, info: dict[str, Any]) -> WorkerError:
        log.debug("worker %d failed:\n%s", worker, info["traceback"])
        named = info["type"].endswith("Error") and info["operator"] != "worker"
        return WorkerError(
            info["message"] if named else f"worker {worker} failed: {info['type']}: {info['message']}",
            failure=Failure(ErrorDomain(info["domain"]), info["retryable"], info["usage"]),
            cause_type=info["cause_type"],
            symptom=info["symptom"],
            operator=info["operator"],
            uid=info["uid"],
            subtask_index=info["subtask_index"],
            checkpoint_id=info["checkpoint_id"],
        )

    @staticmethod
    def _lost(worker: int, message: str) -> WorkerError:
        """Return the failure of a worker that vanished (killed, its node lost): retryable, external."""
        return WorkerError(
            message,
            failure=Failure(ErrorDomain.EXTERNAL, retryable=True, usage=False),
            operator=f"worker {worker}",
            uid="",
            subtask_index=worker,
            checkpoint_id=None,
        )

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Coordinate checkpoints until the final one is committed and every worker stopped."""
        coordinator = self.coordinator
        clock = time.monotonic
        stop_sent = False
        total = len(self._metrics)
        try:
            while len(self._stopped) < self.workers_count:
                self._receive()
                if coordinator.finished:
                    if not stop_sent:
                        self._broadcast(("stop",))
                        stop_sent = True
                    continue
                if self._stop.requested and not coordinator.stop_requested:
                    self._stop_sources()
                now = clock()
                coordinator.tick(now, drained=len(self._drained) == total)
                if self._on_tick is not None:
                    self._on_tick(self, now)
        finally:
            self.close()

    def _stop_sources(self) -> None:
        """Graceful stop: the source workers stop reading, then the coordinator takes the stop checkpoint.

        A worker obeys its commands in order, so its sources stop before the
        stop checkpoint's trigger reaches them. Workers ignore SIGINT and
        SIGTERM (a signal to the whole process group reaches them too): this
        process drives the stop.
        """
        log.warning("%s", self._stop.announcement())
        for w in self._source_workers:
            self._send(w, ("stop-sources",))
        self.coordinator.request_stop()

    def metrics(self) -> list[SubtaskMetrics]:
        """Return every subtask's counters as its worker last reported them (every ~0.5 s)."""
        return list(self._metrics.values())
