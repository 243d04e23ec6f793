"""The job runner: choose a checkpoint, restore, run an attempt, restart on failure.

States of a run::

    LOCKED -> RESTORING -> RUNNING -> FINISHED
                 ^            |  |
                 +-- FAILED <-+  +-> STOPPED   (a first SIGINT/SIGTERM: a stop checkpoint, committed)
                 (bounded restarts with backoff)

The runner owns the lock on the checkpoint directory for the whole run, so two
runners never write the same checkpoints. Where and how subtasks execute is the
executor's business.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from onceflow.engine.api import Job
from onceflow.engine.checkpoint.restore import select_checkpoint
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.errors import classify
from onceflow.engine.executors._wiring import Attempt, ExecutionSettings
from onceflow.engine.executors.base import Executor, TickHook
from onceflow.engine.executors.local import LocalExecutor
from onceflow.engine.executors.process import ProcessExecutor
from onceflow.engine.executors.ray import RayExecutor
from onceflow.engine.plan import PhysicalPlan, build_plan
from onceflow.engine.stopping import StopRequest
from onceflow.operators.base import TwoPhaseCommitWriter
from onceflow.state_backends.disk import sweep_local_state

log = logging.getLogger("onceflow")

DEFAULT_CHECKPOINT_DIR = ".onceflow/checkpoints"
EXECUTORS: dict[str, type[Executor]] = {
    "local": LocalExecutor,
    "process": ProcessExecutor,
    "ray": RayExecutor,
}


class RunStatus(Enum):
    """How a run ended (failures raise instead)."""

    FINISHED = "finished"
    ALREADY_FINISHED = "already finished"
    STOPPED = "stopped"
    """A stop request ended the run at a committed, non-final checkpoint; a rerun resumes from it."""


@dataclass(frozen=True)
class RestartStrategy:
    """Exponential backoff between attempts, with a bounded number of restarts.

    The defaults wait 1 + 2 + 4 + 8 + 16 s over five restarts, so a job outlasts
    a database or Redis restart (PostgreSQL takes 3-8 s) instead of giving up.
    """

    attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (1-based)."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** (failures - 1))


@dataclass
class RunResult:
    """What a finished run reports."""

    status: RunStatus
    job_name: str
    checkpoint_id: int | None
    attempts: int
    restored_from: int | None
    restarts: int
    checkpoints_completed: int = 0
    records_read: int = 0
    sinks: list[Any] = field(default_factory=list)
    recommitted: int = 0
    """Committables a finished job's rerun still had to commit (a crash hit before the commit)."""


class JobRunner:
    """Runs a job to completion with checkpoints, restores and restarts."""

    def __init__(
        self,
        job: Job,
        *,
        checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR,
        parallelism: int = 1,
        max_parallelism: int = 128,
        settings: ExecutionSettings | None = None,
        restart: RestartStrategy | None = None,
        fresh: bool = False,
        on_tick: TickHook | None = None,
        params: dict[str, str] | None = None,
        executor: str = "local",
        stop: StopRequest | None = None,
        allow_unmatched_state: bool = False,
        job_file: str | None = None,
    ) -> None:
        if executor not in EXECUTORS:
            msg = f"unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}"
            raise ValueError(msg)
        self.job = job
        self.job_file = job_file
        """The job's file, for executors that rebuild the job in their workers (ray)."""
        self.parallelism = parallelism
        self.params = dict(params or {})
        self.executor = executor
        self.plan: PhysicalPlan = build_plan(
            job.graph, default_parallelism=parallelism, max_parallelism=max_parallelism
        )
        self.checkpoint_dir = checkpoint_dir
        self.settings = settings or ExecutionSettings()
        self.restart = restart or RestartStrategy()
        self.fresh = fresh
        self.allow_unmatched_state = allow_unmatched_state
        self.on_tick = on_tick
        self.stop = stop or StopRequest()
        """Set (by a signal handler) to stop gracefully; see :mod:`onceflow.engine.stopping`."""
        self.store = CheckpointStore(checkpoint_dir, job.name)

    def run(self) -> RunResult:
        """Run until the final checkpoint is committed; raise after exhausted restarts."""
        self.store.ensure_writable()
        self.store.acquire_lock()
        sweep_local_state(self.settings.state_backend.directory)
        try:
            if self.fresh:
                for cid in self.store.checkpoint_ids():
                    self.store.delete_checkpoint(cid)
                self.store.collect_shared(frozenset())
                self.store.delete_checkpoint_id_mark()
            return self._run_attempts()
        finally:
            self.store.release_lock()

    def _run_attempts(self) -> RunResult:
        failures = 0
        first_restore: int | None = None
        while True:
            try:
                result = self._attempt()
                if failures == 0:
                    first_restore = result.restored_from
                result.attempts = failures + 1
                result.restarts = failures
                result.restored_from = first_restore
                return result
            except Exception as exc:
                if not classify(exc).retryable or failures >= self.restart.attempts:
                    if failures:
                        exc.add_note(f"job {self.job.name!r} failed after {failures + 1} attempts")
                    raise
                failures += 1
                delay = self.restart.delay(failures)
                log.warning(
                    "attempt %d failed: %s; restarting from the latest checkpoint in %.1f s "
                    "(restart %d of %d)",
                    failures,
                    exc,
                    delay,
                    failures,
                    self.restart.attempts,
                )
                self._backoff(delay)

    def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` seconds before a restart, cut short by a stop request.

        A stop still restarts: the restored attempt resolves what the failed one
        left prepared or pending, then stops at once at a stop checkpoint.
        """
        deadline = time.monotonic() + delay
        while not self.stop.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.05))

    def _attempt_plan(self) -> tuple[PhysicalPlan, int]:
        """Return the plan and default parallelism of the next attempt.

        The run's, or lower when the executor has room for fewer workers now (a
        cluster that lost a node); the restore then moves state by key groups.
        """
        room = EXECUTORS[self.executor].available_parallelism(self.settings, self.job_file)
        if room is None or room >= self.parallelism or room < 1:
            return self.plan, self.parallelism
        plan = build_plan(self.job.graph, default_parallelism=room, max_parallelism=self.plan.max_parallelism)
        return plan, room

    def _attempt(self) -> RunResult:
        plan, parallelism = self._attempt_plan()
        selection = select_checkpoint(
            self.store, plan, self.params, allow_unmatched_state=self.allow_unmatched_state
        )
        restore = selection.restore
        restored_id = restore.checkpoint_id if restore else None
        # the widest operator's parallelism stands for a plan's (the run's -p, unless set per operator)
        taken_at = max(op.parallelism for op in restore.metadata.operators.values()) if restore else None
        running_at = max(task.parallelism for task in plan.tasks)
        if parallelism < self.parallelism:
            log.warning(
                "the %s executor has room for %d worker(s), fewer than the run's parallelism %d: %s; "
                "a later attempt or rerun goes back to parallelism %d when there is room",
                self.executor,
                parallelism,
                self.parallelism,
                f"restoring checkpoint {restored_id} (taken at parallelism {taken_at}) at parallelism "
                f"{running_at} by key groups"
                if restore
                else f"starting at parallelism {running_at}",
                self.parallelism,
            )
        elif restore is not None and taken_at != running_at:
            log.info(
                "restoring from checkpoint %d (taken at parallelism %s) at parallelism %d by key groups",
                restored_id,
                taken_at,
                running_at,
            )
        elif restore is not None:
            log.info("restoring from checkpoint %d", restored_id)
        finished = restore is not None and restore.metadata.final
        attempt = Attempt(
            plan=plan,
            store=self.store,
            settings=replace(self.settings, overwrite_output=self.fresh and restore is None),
            attempt_id=uuid.uuid4().hex[:12],
            restored_checkpoint_id=restored_id,
            restored=restore.states if restore else {},
            first_checkpoint_id=selection.next_checkpoint_id,
            completed=selection.completed,
            params=self.params,
            stop=self.stop,
            job_file=self.job_file,
            parallelism=parallelism,
        )
        sinks = [op.config["sink"] for t in plan.tasks for op in t.operators if "sink" in op.config]
        if finished:
            # Opening the subtasks (in this process, whatever the executor) re-commits what a
            # crash left pending; nothing runs.
            opened = LocalExecutor(attempt, on_tick=self.on_tick)
            ops = [op for st in opened.subtasks for op in st.ops]
            recommitted = sum(op.recommitted for op in ops if isinstance(op, TwoPhaseCommitWriter))
            opened.close()
            return RunResult(
                RunStatus.ALREADY_FINISHED,
                self.job.name,
                restored_id,
                1,
                restored_id,
                0,
                sinks=sinks,
                recommitted=recommitted,
            )
        executor = EXECUTORS[self.executor](attempt, on_tick=self.on_tick)
        executor.run()
        last = executor.coordinator.last_completed
        return RunResult(
            RunStatus.STOPPED if executor.coordinator.stopped else RunStatus.FINISHED,
            self.job.name,
            last.checkpoint_id if last else None,
            1,
            restored_id,
            0,
            checkpoints_completed=executor.coordinator.completed_count,
            records_read=sum(m.source_records for m in executor.metrics()),
            sinks=sinks,
        )
