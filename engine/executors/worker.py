"""One worker process of the process executor: its subtasks, its scheduler, its reports.

A worker is forked from the runner after the job was built and its checkpoint
loaded, so user functions never need pickling. It builds the subtasks placed
on it (``worker_of``), connects them through a :class:`PipeTransport`, and
steps them with the same :class:`Scheduler` as the local executor. The
coordinator stays in the runner: the worker obeys its control messages and
reports back over the control pipe. The runner side is
:mod:`onceflow.engine.executors.process`.

Control messages, runner to worker: ``("trigger", n, final)``,
``("complete", n)``, ``("abort", n)``, ``("stop-sources",)`` (a graceful
stop: the sources read no more), ``("stop",)``. Worker to runner:
``("ack", n, key, handles)``, ``("decline", n, key, detail)``,
``("drained", key)``, ``("metrics", [SubtaskMetrics])``, ``("stopped",)``,
``("error", report)`` (see :func:`describe`).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import socket
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.engine.errors import OperatorError, classify
from onceflow.engine.executors._wiring import (
    ExecutionSettings,
    SubtaskSettings,
    build_subtask,
    open_subtask,
)
from onceflow.engine.executors.base import SubtaskMetrics
from onceflow.engine.plan import PhysicalPlan
from onceflow.engine.scheduler import Round, Scheduler
from onceflow.engine.task import Subtask, SubtaskStatus
from onceflow.engine.transport.base import WorkerTransport
from onceflow.engine.transport.pipes import PipeTransport
from onceflow.operators.base import RestoredState

__all__ = ["Worker", "describe", "worker_main", "worker_of"]

_METRICS_EVERY = 0.5
_SYMPTOMS = (BrokenPipeError, ConnectionResetError, EOFError)


def worker_of(subtask_index: int, workers: int) -> int:
    """Place subtask ``i`` of every task on worker ``i % workers``.

    With ``workers`` the largest parallelism in the plan, forward edges
    (subtask i to subtask i) stay inside one process and only repartitioning
    edges cross processes.
    """
    return subtask_index % workers


class Worker:
    """Runs the subtasks placed on one worker until the runner says stop."""

    def __init__(
        self,
        index: int,
        workers: int,
        plan: PhysicalPlan,
        restored: dict[tuple[str, int], RestoredState],
        settings: SubtaskSettings,
        store: CheckpointStore,
        transport: WorkerTransport,
    ) -> None:
        self.index = index
        self.transport = transport
        self.writer = SnapshotWriter(store, plan.max_parallelism, max_deltas=settings.max_deltas)
        self.subtasks: list[Subtask] = []
        self.sources: list[Subtask] = []
        for task in plan.tasks:
            for i in range(task.parallelism):
                if worker_of(i, workers) != index:
                    continue
                subtask = build_subtask(plan, task, i, transport.channel, self.writer.submit, settings)
                self.subtasks.append(subtask)
                if task.is_source:
                    self.sources.append(subtask)
        # every inbox exists now: only from here on may peer messages be dispatched
        transport.start()
        for subtask in self.subtasks:
            open_subtask(subtask, plan, restored, settings)
        self._drained_sent: set[tuple[int, int]] = set()
        self._last_metrics = time.monotonic()
        self.scheduler = Scheduler(
            self.subtasks,
            self.writer,
            acknowledge=self._acknowledge,
            end_round=self._end_round,
            idle=self._idle,
        )

    def run(self) -> None:
        """Step the subtasks and obey the runner until it says stop."""
        self.scheduler.run()

    def close(self) -> None:
        """Close every subtask and wait for queued state writes; never raises."""
        for subtask in self.subtasks:
            subtask.close()
        self.writer.shutdown()

    # -- scheduler callbacks -------------------------------------------------

    def _acknowledge(self, ack: Any) -> None:
        if ack.error is not None and not classify(ack.error).retryable:
            # The job's own doing (state that cannot be pickled): every checkpoint would fail alike.
            subtask = next(st for st in self.subtasks if st.key == ack.key)
            raise subtask.state_write_error(ack.uid, ack.error) from ack.error
        if ack.error is not None:
            self.transport.send(("decline", ack.checkpoint_id, ack.key, repr(ack.error)))
        else:
            self.transport.send(("ack", ack.checkpoint_id, ack.key, ack.handles))

    def _end_round(self, now: float) -> Round:
        """Report drained subtasks, obey queued commands, send the round's elements, metrics now and then.

        The flush comes after the commands, so a barrier a trigger emitted
        leaves in this round's message, and before the idle wait, so credits
        for everything read this round are on their way while this worker sleeps.
        """
        transport = self.transport
        for subtask in self.subtasks:
            if subtask.status is SubtaskStatus.DRAINED and subtask.key not in self._drained_sent:
                self._drained_sent.add(subtask.key)
                transport.send(("drained", subtask.key))
        # what peers sent is read in during the round's steps: go round again before idling
        outcome = Round.PROGRESSED if transport.take_in() else Round.IDLE
        stopping = False
        commands = transport.commands
        while commands:
            command = commands.popleft()
            kind = command[0]
            if kind == "trigger":
                for source in self.sources:
                    source.trigger_checkpoint(command[1], command[2])
                outcome = Round.PROGRESSED
            elif kind == "complete":
                for subtask in self.subtasks:
                    subtask.notify_checkpoint_complete(command[1])
            elif kind == "abort":
                for subtask in self.subtasks:
                    subtask.notify_checkpoint_aborted(command[1])
                self.writer.delete_later(command[1])
            elif kind == "stop-sources":
                for source in self.sources:
                    source.stop_reading()
                outcome = Round.PROGRESSED
            elif kind == "stop":
                stopping = True
            elif kind == "receiver-failed":
                raise command[1]
        transport.flush(now)
        if now - self._last_metrics >= _METRICS_EVERY or stopping:
            self._last_metrics = now
            if not transport.closed:
                transport.send(("metrics", [SubtaskMetrics.of(st) for st in self.subtasks]))
        return Round.STOP if stopping else outcome

    def _idle(self, idle_rounds: int) -> None:
        """Send what the round held back, then sleep until a message arrives.

        Sooner while state writes or timers are pending.
        """
        self.transport.flush()
        self.transport.wait(0.005 if self.writer.outstanding or self.scheduler.ticking else 0.05)


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this worker when the runner dies (Linux only).

    The runner may die between the fork and this call; then the worker is
    already orphaned and exits at once instead of running unsupervised.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


def worker_main(
    index: int,
    workers: int,
    plan: PhysicalPlan,
    restored: dict[tuple[str, int], RestoredState],
    settings: ExecutionSettings,
    subtask_settings: SubtaskSettings,
    store_url: str,
    control: Connection,
    peers: dict[int, socket.socket],
    parent_pid: int,
) -> None:
    """Entry point of a forked worker: run, report ``stopped`` or ``error``, then exit."""
    _die_with_parent(parent_pid)
    # A Ctrl-C or a SIGTERM to the whole process group reaches the workers too; the runner
    # drives the graceful stop (and a second signal kills the runner, and so the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # `kill -USR1` dumps a hung worker; not possible when stderr has no file descriptor (a
    # captured or notebook stream), and that must not kill the worker before it can report
    with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    transport = PipeTransport(
        control,
        peers,
        worker=index,
        worker_of=lambda i: worker_of(i, workers),
        capacity=settings.channel_capacity,
    )
    worker = None
    code = 0
    try:
        store = CheckpointStore(store_url, plan.job_name)
        worker = Worker(index, workers, plan, restored, subtask_settings, store, transport)
        worker.run()
        worker.close()
        control.send(("stopped",))
    except BaseException as exc:  # noqa: BLE001 - reported to the runner, then exit
        code = 1
        with contextlib.suppress(Exception):
            control.send(("error", describe(exc)))
        if worker is not None:
            worker.close()
    finally:
        logging.shutdown()
        os._exit(code)


def describe(exc: BaseException) -> dict[str, Any]:
    """Report a worker's failure to the runner: where it happened, its classification, its traceback."""
    cause = exc.__cause__
    failure = classify(exc)
    where = exc if isinstance(exc, OperatorError) else None
    return {
        "message": str(exc),
        "type": type(exc).__name__,
        "operator": where.operator if where else "worker",
        "uid": where.uid if where else "",
        "subtask_index": where.subtask_index if where else -1,
        "checkpoint_id": where.checkpoint_id if where else None,
        "domain": failure.domain.value,
        "retryable": failure.retryable,
        "usage": failure.usage,
        "cause_type": type(cause).__name__ if cause is not None else "",
        "symptom": _is_symptom(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _is_symptom(exc: BaseException) -> bool:
    """Whether ``exc`` is a broken connection to a peer, likely caused by that peer's failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _SYMPTOMS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
