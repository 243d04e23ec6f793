"""onceflow's runtime: the job API, planning, checkpoints, executors, runner and CLI."""

from engine.api import Job, KeyedStream, Stream
from engine.coordinator import CoordinatorSettings
from engine.errors import (
    CheckpointError,
    CheckpointStorageError,
    ConcurrentRunError,
    IncompatibleCheckpointError,
    JobDefinitionError,
    JobLoadError,
    OnceflowError,
    OperatorError,
)
from engine.executors.local import ExecutionSettings
from engine.graph import Partitioning
from engine.runner import JobRunner, RestartStrategy, RunResult, RunStatus

__all__ = [
    "CheckpointError",
    "CheckpointStorageError",
    "ConcurrentRunError",
    "CoordinatorSettings",
    "ExecutionSettings",
    "IncompatibleCheckpointError",
    "Job",
    "JobDefinitionError",
    "JobLoadError",
    "JobRunner",
    "KeyedStream",
    "OnceflowError",
    "OperatorError",
    "Partitioning",
    "RestartStrategy",
    "RunResult",
    "RunStatus",
    "Stream",
]
