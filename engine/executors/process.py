"""The process executor: subtasks in worker processes, so parallelism uses every core.

This module is the runner's side: it forks the workers, keeps the checkpoint
coordinator, and talks to the workers over control pipes. What runs inside a
worker is :mod:`onceflow.engine.executors.worker`; how batches move between
workers is :mod:`onceflow.engine.transport.pipes`.

Workers are forked after the job was built and its checkpoint loaded, so user
functions never need pickling; only batches and control elements cross
process boundaries. There are as many workers as the largest parallelism in
the plan (placement: :func:`worker_of`).

A worker that dies (``kill -9`` of one worker) fails the attempt: the runner
stops the others and restarts from the latest completed checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from onceflow.engine.errors import (
    CheckpointDirectoryError,
    CheckpointFailureReason,
    Failure,
    JobDefinitionError,
    WorkerError,
)
from onceflow.engine.executors._wiring import Attempt
from onceflow.engine.executors.base import Executor, SubtaskMetrics, TickHook
from onceflow.engine.executors.worker import worker_main, worker_of
from onceflow.engine.plan import PhysicalPlan
from onceflow.engine.task import SubtaskStatus
from onceflow.engine.transport.pipes import connect_workers
from onceflow.state_backends.errors import ErrorDomain

__all__ = ["ProcessExecutor"]

log = logging.getLogger("onceflow")


def _refuse_unshared_sinks(plan: PhysicalPlan) -> None:
    """Refuse sinks whose storage the worker processes cannot share (``Sink.shared_across_processes``)."""
    for task in plan.tasks:
        for spec in task.operators:
            sink = spec.config.get("sink")
            if sink is not None and not sink.shared_across_processes:
                msg = (
                    f"sink {spec.name!r} ({sink!r}) writes to storage that only one process can see, so "
                    "under the process executor each worker would write its own copy and lose it at exit; "
                    "give the sink a local path or an s3:// URL, or run with --executor local"
                )
                raise JobDefinitionError(msg)


class ProcessExecutor(Executor):
    """Runs a plan in worker processes; the coordinator stays in this process."""

    def __init__(self, attempt: Attempt, *, on_tick: TickHook | None = None) -> None:
        plan, store, settings = attempt.plan, attempt.store, attempt.settings
        if "memory" in store.fs.protocol:
            msg = (
                "the process executor needs checkpoint storage that worker processes share "
                f"(a local path or s3://), not {store.url!r}"
            )
            raise CheckpointDirectoryError(msg)
        _refuse_unshared_sinks(plan)
        self.plan = plan
        self.store = store
        self.settings = settings
        self._on_tick = on_tick
        self._stop = attempt.stop
        self.workers_count = max(t.parallelism for t in plan.tasks)
        keys = [(t.task_id, i) for t in plan.tasks for i in range(t.parallelism)]
        self._metrics = {key: SubtaskMetrics.initial(plan, key) for key in keys}
        self._drained: set[tuple[int, int]] = set()
        self.coordinator = attempt.coordinator(
            keys,
            trigger_sources=self._trigger_sources,
            notify_complete=lambda n: self._broadcast(("complete", n)),
            notify_abort=lambda n: self._broadcast(("abort", n)),
        )
        n = self.workers_count
        self._source_workers = sorted(
            {worker_of(i, n) for t in plan.tasks if t.is_source for i in range(t.parallelism)}
        )
        self._stopped: set[int] = set()
        self._closed = False
        self.controls: list[Connection] = []
        self.processes: list[Any] = []
        self._start_workers(attempt)

    def _start_workers(self, attempt: Attempt) -> None:
        ctx = multiprocessing.get_context("fork")
        n = self.workers_count
        ends = connect_workers(ctx, n)
        subtask_settings = attempt.subtask_settings()
        for w in range(n):
            parent_end, child_end = ctx.Pipe(duplex=True)
            peers = {b: ends[w, b] for b in range(n) if b != w}
            proc = ctx.Process(
                target=worker_main,
                args=(
                    w,
                    n,
                    self.plan,
                    attempt.restored,
                    self.settings,
                    subtask_settings,
                    self.store.url,
                    child_end,
                    peers,
                    os.getpid(),
                ),
                name=f"onceflow-worker-{w}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.controls.append(parent_end)
            self.processes.append(proc)
        for conn in ends.values():
            conn.close()

    # -- control messages ------------------------------------------------------

    def _send(self, worker: int, message: tuple) -> None:
        # A worker that already failed has closed its pipe; its error message or
        # its exit is picked up by the run loop, which reports the real cause.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
            self.controls[worker].send(message)

    def _trigger_sources(self, checkpoint_id: int, final: bool) -> None:
        for w in self._source_workers:
            self._send(w, ("trigger", checkpoint_id, final))

    def _broadcast(self, message: tuple) -> None:
        for w in range(len(self.controls)):
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

    def _died(self, worker: int) -> WorkerError:
        # its sentinel fires as it exits, maybe before it can be reaped
        self.processes[worker].join(timeout=1.0)
        code = self.processes[worker].exitcode
        return WorkerError(
            f"worker process {worker} died (exit code {code})",
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
            while len(self._stopped) < len(self.processes):
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

    def _receive(self) -> None:
        """Handle what the workers sent within 20 ms; raise the first failure, if any."""
        sentinels = [p.sentinel for p in self.processes]
        ready = wait([*self.controls, *sentinels], timeout=0.02)
        exited = {w for w, sentinel in enumerate(sentinels) if sentinel in ready}
        errors: list[WorkerError] = []
        for w, conn in enumerate(self.controls):
            if conn not in ready and w not in exited:
                continue
            try:
                while conn.poll():
                    self._handle(w, conn.recv())
            except WorkerError as exc:
                errors.append(exc)
            except (EOFError, OSError):
                pass
            if w in exited and w not in self._stopped and not errors:
                errors.append(self._died(w))
        if errors:
            # a peer's broken pipe is a symptom; prefer the failure that caused it
            errors.sort(key=lambda e: e.symptom)
            raise errors[0]

    def close(self) -> None:
        """Stop every worker (kill those that do not stop) and close the pipes; never raises."""
        if self._closed:
            return
        self._closed = True
        for w, proc in enumerate(self.processes):
            if proc.is_alive() and w not in self._stopped:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.processes:
            proc.join(timeout=5)
        for conn in self.controls:
            with contextlib.suppress(OSError):
                conn.close()

    def metrics(self) -> list[SubtaskMetrics]:
        """Return every subtask's counters as its worker last reported them (every ~0.5 s)."""
        return list(self._metrics.values())
