"""Executors run one attempt of a plan: ``local`` (one process) and ``process`` (worker processes).

Every executor implements :class:`Executor`; they differ only in placement and
transport, and all step their subtasks with :class:`onceflow.engine.scheduler.Scheduler`.
"""

from onceflow.engine.executors._wiring import Attempt, ExecutionSettings
from onceflow.engine.executors.base import Executor, SubtaskMetrics, TickHook
from onceflow.engine.executors.local import LocalExecutor
from onceflow.engine.executors.process import ProcessExecutor

__all__ = [
    "Attempt",
    "ExecutionSettings",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "SubtaskMetrics",
    "TickHook",
]
