"""What every executor offers the runner: the ``Executor`` contract and typed subtask metrics.

An executor places an attempt's subtasks (one process, worker processes, Ray
actors), connects them with a transport and runs them with the scheduler. It
does not choose checkpoints or restart anything; the runner does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from onceflow.engine.coordinator import CheckpointCoordinator
from onceflow.engine.executors._wiring import Attempt, ExecutionSettings
from onceflow.engine.plan import PhysicalPlan
from onceflow.engine.task import Subtask, SubtaskStatus
from onceflow.operators.base import Backlog

__all__ = ["Executor", "SubtaskMetrics", "TickHook"]


@dataclass(frozen=True, slots=True)
class SubtaskMetrics:
    """Counters of one subtask at one moment, as the progress display, the metrics and the runner read them.

    Every field is a counter the subtask keeps per batch or per barrier (or
    the reader computes on request), never per record; reading them is
    :meth:`of`, about once a second. :mod:`onceflow.engine.metrics` turns a
    plan's worth of them into per-operator figures.
    """

    key: tuple[int, int]
    """``(task_id, subtask_index)``."""
    source_records: int
    """Records its source reader produced (0 when the task has no source)."""
    records_in: tuple[int, ...]
    """Records into each operator of the chain after the source, in chain order."""
    steps: int
    blocked_steps: int
    """Steps skipped because a downstream channel was full (backpressure)."""
    status: SubtaskStatus
    records_out: int = 0
    """Records the chain's last operator sent downstream."""
    watermark: float = -math.inf
    """The subtask's event-time watermark (minus infinity: no event time yet)."""
    backlog: Backlog | None = None
    """The source reader's input left to read, if it can tell."""
    alignments: tuple[tuple[int, float], ...] = ()
    """``(checkpoint_id, seconds)`` of the latest barrier alignments, oldest first."""

    @classmethod
    def of(cls, subtask: Subtask) -> SubtaskMetrics:
        """Read a subtask's counters now (and its reader's backlog, which must not raise)."""
        reader = subtask.reader
        backlog = None
        if reader is not None:
            try:
                backlog = reader.backlog()
            except Exception:  # noqa: BLE001 - a metric never fails the run
                backlog = None
        return cls(
            subtask.key,
            subtask.source_records,
            tuple(subtask.records_in),
            subtask.steps,
            subtask.blocked_steps,
            subtask.status,
            subtask.records_out,
            subtask.watermark,
            backlog,
            tuple(subtask.alignments),
        )

    @classmethod
    def initial(cls, plan: PhysicalPlan, key: tuple[int, int]) -> SubtaskMetrics:
        """Return the counters of a subtask that has not reported yet."""
        task = plan.task(key[0])
        chain = len(task.operators) - 1 if task.is_source else len(task.operators)
        return cls(key, 0, (0,) * chain, 0, 0, SubtaskStatus.RUNNING)


TickHook = Callable[["Executor", float], None]
"""Called with the executor and the monotonic time after every scheduler round (progress, benchmarks)."""


class Executor(ABC):
    """Runs one attempt of a job: places its subtasks, moves their elements, reaches the final checkpoint.

    Life cycle: construct from an :class:`Attempt` (subtasks are built and
    opened, or workers started, and ``coordinator`` exists), then ``run()``
    once, which returns when the final checkpoint completed and every sink
    committed, or raises when a task failed. ``close()`` releases everything
    (it also cancels an attempt that has not finished); ``run`` calls it on
    the way out, and calling it again does nothing.
    """

    plan: PhysicalPlan
    coordinator: CheckpointCoordinator

    @classmethod
    def available_parallelism(cls, settings: ExecutionSettings, job_file: str | None) -> int | None:
        """Return the highest parallelism an attempt can run at now, or None when nothing limits it.

        The runner asks before every attempt. An executor on a cluster answers
        with what the cluster has room for, so an attempt after the cluster lost
        a node restores at a lower parallelism (state moves by key groups)
        instead of waiting for resources that are gone, and a later attempt goes
        back up once the cluster has room again.
        """
        return None

    @abstractmethod
    def __init__(self, attempt: Attempt, *, on_tick: TickHook | None = None) -> None:
        """Prepare the attempt; raise a usage error for settings this executor cannot honour."""

    @abstractmethod
    def run(self) -> None:
        """Run until the final checkpoint completed and every sink committed; then close."""

    @abstractmethod
    def close(self) -> None:
        """Stop every subtask and release processes, threads and pipes; never raises."""

    @abstractmethod
    def metrics(self) -> list[SubtaskMetrics]:
        """Return the latest counters of every subtask of the plan (a worker's may lag ~0.5 s)."""
