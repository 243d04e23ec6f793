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
import gc
import logging
import multiprocessing
import os
from multiprocessing.connection import Connection, wait
from typing import Any

from onceflow.engine.errors import (
    CheckpointDirectoryError,
    JobDefinitionError,
    WorkerError,
)
from onceflow.engine.executors._pool import WorkerPoolExecutor
from onceflow.engine.executors._wiring import Attempt
from onceflow.engine.executors.base import TickHook
from onceflow.engine.executors.worker import worker_main
from onceflow.engine.plan import PhysicalPlan
from onceflow.engine.transport.pipes import connect_workers

__all__ = ["ProcessExecutor"]

log = logging.getLogger("onceflow")


def refuse_unshared_sinks(plan: PhysicalPlan, executor: str = "process executor") -> None:
    """Refuse sinks whose storage the worker processes cannot share (``Sink.shared_across_processes``)."""
    for task in plan.tasks:
        for spec in task.operators:
            sink = spec.config.get("sink")
            if sink is not None and not sink.shared_across_processes:
                msg = (
                    f"sink {spec.name!r} ({sink!r}) writes to storage that only one process can see, so "
                    f"under the {executor} each worker would write its own copy and lose it at exit; "
                    "give the sink a local path or an s3:// URL, or run with --executor local"
                )
                raise JobDefinitionError(msg)


class ProcessExecutor(WorkerPoolExecutor):
    """Runs a plan in worker processes; the coordinator stays in this process."""

    def __init__(self, attempt: Attempt, *, on_tick: TickHook | None = None) -> None:
        store = attempt.store
        if "memory" in store.fs.protocol:
            msg = (
                "the process executor needs checkpoint storage that worker processes share "
                f"(a local path or s3://), not {store.url!r}"
            )
            raise CheckpointDirectoryError(msg)
        refuse_unshared_sinks(attempt.plan)
        super().__init__(attempt, max(t.parallelism for t in attempt.plan.tasks), on_tick=on_tick)
        self.controls: list[Connection] = []
        self.processes: list[Any] = []
        self._start_workers(attempt)

    def _start_workers(self, attempt: Attempt) -> None:
        ctx = multiprocessing.get_context("fork")
        n = self.workers_count
        ends = connect_workers(n)
        subtask_settings = attempt.subtask_settings()
        # Frozen objects are left out of garbage collections. A worker's first full
        # collection would otherwise visit every object it inherits from this process,
        # writing to each one's header: tens of milliseconds per worker, and a private
        # copy of every page they live on. The runner collects them again afterwards.
        gc.freeze()
        try:
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
        finally:
            gc.unfreeze()
        for conn in ends.values():
            conn.close()

    # -- control messages ------------------------------------------------------

    def _send(self, worker: int, message: tuple) -> None:
        # A worker that already failed has closed its pipe; its error message or
        # its exit is picked up by the run loop, which reports the real cause.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError):
            self.controls[worker].send(message)

    def _died(self, worker: int) -> WorkerError:
        # its sentinel fires as it exits, maybe before it can be reaped
        self.processes[worker].join(timeout=1.0)
        code = self.processes[worker].exitcode
        return self._lost(worker, f"worker process {worker} died (exit code {code})")

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
