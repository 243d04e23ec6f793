"""onceflow's runtime: the job API, planning, checkpoints, executors, runner and CLI."""

from onceflow.engine.api import Job, KeyedStream, Stream
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.errors import (
    CheckpointError,
    CheckpointStorageError,
    ConcurrentRunError,
    IncompatibleCheckpointError,
    JobDefinitionError,
    JobLoadError,
    OnceflowError,
    OperatorError,
)
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.graph import Partitioning
from onceflow.engine.runner import JobRunner, RestartStrategy, RunResult, RunStatus

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
