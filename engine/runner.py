"""The job runner: choose a checkpoint, restore, run an attempt, restart on failure.

States of a run::

    LOCKED -> RESTORING -> RUNNING -> FINISHED
                 ^            |
                 +-- FAILED <-+   (bounded restarts with backoff)

The runner owns the lock on the checkpoint directory for the whole run, so two
runners never write the same checkpoints. Where and how subtasks execute is the
executor's business.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from onceflow.engine.api import Job
from onceflow.engine.errors import (
    CheckpointStorageError,
    CorruptStateError,
    IncompatibleCheckpointError,
    classify,
)
from onceflow.engine.executors._wiring import Attempt, ExecutionSettings
from onceflow.engine.executors.local import LocalExecutor
from onceflow.engine.executors.process import ProcessExecutor
from onceflow.engine.plan import PhysicalPlan, build_plan
from onceflow.engine.storage import CheckpointStore
from onceflow.operators.base import RestoredState, TwoPhaseCommitWriter
from onceflow.state_backends.arrow_snapshot import StateFileHandle, read_state_file
from onceflow.state_backends.key_groups import HASH_FUNCTION_ID, key_group_range_for_subtask

log = logging.getLogger("onceflow")

DEFAULT_CHECKPOINT_DIR = ".onceflow/checkpoints"
EXECUTORS: dict[str, Any] = {"local": LocalExecutor, "process": ProcessExecutor}


class RunStatus(Enum):
    """How a run ended (failures raise instead)."""

    FINISHED = "finished"
    ALREADY_FINISHED = "already finished"


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


@dataclass
class _RestorePoint:
    checkpoint_id: int
    meta: dict[str, Any]
    states: dict[tuple[str, int], RestoredState]


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
        on_tick: Callable[[LocalExecutor, float], None] | None = None,
        params: dict[str, str] | None = None,
        executor: str = "local",
    ) -> None:
        if executor not in EXECUTORS:
            msg = f"unknown executor {executor!r}; choose one of {sorted(EXECUTORS)}"
            raise ValueError(msg)
        self.job = job
        self.params = dict(params or {})
        self.executor = executor
        self.plan: PhysicalPlan = build_plan(
            job.graph, default_parallelism=parallelism, max_parallelism=max_parallelism
        )
        self.checkpoint_dir = checkpoint_dir
        self.settings = settings or ExecutionSettings()
        self.restart = restart or RestartStrategy()
        self.fresh = fresh
        self.on_tick = on_tick
        self.store = CheckpointStore(checkpoint_dir, job.name)

    def run(self) -> RunResult:
        """Run until the final checkpoint is committed; raise after exhausted restarts."""
        self.store.ensure_writable()
        self.store.acquire_lock()
        try:
            if self.fresh:
                for cid in self.store.checkpoint_ids():
                    self.store.delete_checkpoint(cid)
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
                time.sleep(delay)

    def _attempt(self) -> RunResult:
        restore, completed, next_id = self._select_checkpoint()
        restored_id = restore.checkpoint_id if restore else None
        if restore is not None:
            log.info("restoring from checkpoint %d", restored_id)
        finished = restore is not None and restore.meta.get("final")
        executor_class = LocalExecutor if finished else EXECUTORS[self.executor]
        attempt = Attempt(
            plan=self.plan,
            store=self.store,
            settings=replace(self.settings, overwrite_output=self.fresh and restore is None),
            attempt_id=uuid.uuid4().hex[:12],
            restored_checkpoint_id=restored_id,
            restored=restore.states if restore else {},
            first_checkpoint_id=next_id,
            completed=completed,
            params=self.params,
        )
        executor = executor_class(attempt, on_tick=self.on_tick)
        sinks = [op.config["sink"] for t in self.plan.tasks for op in t.operators if "sink" in op.config]
        if finished:
            ops = [op for st in executor.subtasks for op in st.ops]
            recommitted = sum(op.recommitted for op in ops if isinstance(op, TwoPhaseCommitWriter))
            executor.close()
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
        executor.run()
        last = executor.coordinator.last_completed
        return RunResult(
            RunStatus.FINISHED,
            self.job.name,
            last.checkpoint_id if last else None,
            1,
            restored_id,
            0,
            checkpoints_completed=executor.coordinator.completed_count,
            records_read=sum(st.source_records for st in executor.sources),
            sinks=sinks,
        )

    # -- choosing and loading a checkpoint -------------------------------------------

    def _select_checkpoint(
        self,
    ) -> tuple[_RestorePoint | None, dict[int, dict[str, Any]], int]:
        """Find the newest usable checkpoint and load all its state before anything runs.

        Steps:
        1. List ``chk-<n>`` directories newest first; skip those without
           ``_metadata`` (they never completed).
        2. Refuse a checkpoint of an incompatible job graph (not a fallback:
           the user must decide).
        3. Load and verify every state file; a torn or corrupt checkpoint is
           discarded with a warning and the previous one is tried.
        4. Delete incomplete and discarded checkpoints newer than the chosen one,
           and finish deleting incomplete ones older than it (a deletion by
           retention that a crash interrupted), keeping files that a completed
           checkpoint still references.
        """
        store = self.store
        ids = store.checkpoint_ids()
        next_id = (max(ids) + 1) if ids else 1
        chosen: _RestorePoint | None = None
        doomed: list[int] = []
        stale: list[int] = []
        completed: dict[int, dict[str, Any]] = {}
        for cid in reversed(ids):
            # Step 1
            try:
                meta = store.read_metadata(cid)
            except CheckpointStorageError as exc:
                log.warning("%s; falling back to an older checkpoint", exc)
                doomed.append(cid)
                continue
            if meta is None:
                (doomed if chosen is None else stale).append(cid)
                continue
            if chosen is not None:
                completed[cid] = meta
                continue
            # Step 2
            self._check_compatible(meta)
            # Step 3
            try:
                states = self._load_states(meta)
            except (CorruptStateError, FileNotFoundError) as exc:
                log.warning("checkpoint %d is corrupt (%s); falling back to an older checkpoint", cid, exc)
                doomed.append(cid)
                continue
            chosen = _RestorePoint(cid, meta, states)
            completed[cid] = meta
        # Step 4
        for cid in doomed:
            store.delete_checkpoint(cid)
        referenced = {h["path"] for meta in completed.values() for h in meta.get("handles", [])}
        for cid in stale:
            keep = {p.rsplit("/", 1)[-1] for p in referenced if p.startswith(f"chk-{cid}/")}
            store.delete_checkpoint(cid, keep_files=keep)
        return chosen, completed, next_id

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        plan = self.plan
        where = f"checkpoint {meta['checkpoint_id']} in {self.store.paths.job_dir!r}"
        if meta.get("max_parallelism") != plan.max_parallelism:
            msg = (
                f"{where} was taken with max parallelism {meta.get('max_parallelism')}, this run "
                f"uses {plan.max_parallelism}; key groups cannot be remapped. Use the same "
                "--max-parallelism, or --fresh to start over"
            )
            raise IncompatibleCheckpointError(msg)
        if meta.get("hash_function") != HASH_FUNCTION_ID:
            msg = f"{where} uses key hash {meta.get('hash_function')!r}, not {HASH_FUNCTION_ID!r}"
            raise IncompatibleCheckpointError(msg)
        old_params = meta.get("params", {})
        if old_params != self.params:
            msg = (
                f"{where} is a run of {plan.job_name!r} with parameters {old_params}, but this run "
                f"has {self.params}; the checkpoint directory identifies one run. Use another "
                "--checkpoint-dir for the new parameters, or --fresh to start over"
            )
            raise IncompatibleCheckpointError(msg)
        if meta.get("fingerprint") == plan.fingerprint:
            return
        uids = plan.parallelism_by_uid()
        stateful = sorted({h["uid"] for h in meta.get("handles", [])})
        missing = [u for u in stateful if u not in uids]
        if missing:
            msg = (
                f"{where} belongs to a different job graph: its stateful operators {missing} "
                "are not in this job. Give operators the same uid= as before, or pass --fresh "
                "to start over"
            )
            raise IncompatibleCheckpointError(msg)
        log.warning("the job graph changed since %s; restoring state by operator uid", where)

    def _load_states(self, meta: dict[str, Any]) -> dict[tuple[str, int], RestoredState]:
        by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for handle in meta.get("handles", []):
            by_uid[handle["uid"]].append(handle)
        job_dir = self.store.paths.job_dir
        fs = self.store.fs
        cid = meta["checkpoint_id"]
        states: dict[tuple[str, int], RestoredState] = {}
        for task in self.plan.tasks:
            for op in task.operators:
                handles = by_uid.get(op.uid)
                if not handles:
                    continue
                old_parallelism = meta["operators"].get(op.uid, {}).get("parallelism", len(handles))
                for i in range(task.parallelism):
                    rng = key_group_range_for_subtask(self.plan.max_parallelism, task.parallelism, i)
                    op_states: list[tuple[int, Any]] = []
                    keyed: dict[str, dict[Any, Any]] = {}
                    for h in sorted(handles, key=lambda h: h["subtask"]):
                        handle = StateFileHandle.from_json({**h, "path": f"{job_dir}/{h['path']}"})
                        op_state, tables = read_state_file(fs, handle, rng)
                        op_states.append((h["subtask"], op_state))
                        for name, table in tables.items():
                            keyed.setdefault(name, {}).update(table)
                    states[op.uid, i] = RestoredState(cid, old_parallelism, op_states, keyed)
        return states
