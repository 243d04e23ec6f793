"""The exception tree of onceflow, and the errors raised by the engine itself.

::

    OnceflowError                       (onceflow.state_backends.errors; carries a domain)
    ├── CorruptStateError               a state file is torn or fails its checksum
    ├── KeyEncodingError (TypeError)    a key of an unsupported type
    ├── IncompatibleStateError          state written by an incompatible Python
    ├── SourceError / SinkError         (onceflow.operators.errors) bad connector setup
    │   └── SinkCommitError             a committed checkpoint's output is gone
    ├── JobDefinitionError              the job is invalid; raised before running
    │   └── JobLoadError                the job file cannot be loaded or built
    ├── OperatorError                   a task failed while running
    ├── CheckpointError                 a checkpoint failed (with a reason)
    ├── CheckpointStorageError          checkpoint storage unusable
    ├── IncompatibleCheckpointError     the checkpoint belongs to another job graph
    └── ConcurrentRunError              another runner holds the checkpoint directory

Each error has a ``domain`` (user, external, internal): definition and usage
errors are never retried; task failures follow the restart strategy.
"""

from __future__ import annotations

from enum import Enum

from onceflow.operators.errors import SinkCommitError, SinkError, SourceError
from onceflow.state_backends.errors import (
    CorruptStateError,
    ErrorDomain,
    IncompatibleStateError,
    KeyEncodingError,
    OnceflowError,
)

__all__ = [
    "CheckpointError",
    "CheckpointFailureReason",
    "CheckpointStorageError",
    "ConcurrentRunError",
    "CorruptStateError",
    "ErrorDomain",
    "IncompatibleCheckpointError",
    "IncompatibleStateError",
    "JobDefinitionError",
    "JobLoadError",
    "KeyEncodingError",
    "OnceflowError",
    "OperatorError",
    "SinkCommitError",
    "SinkError",
    "SourceError",
]


class JobDefinitionError(OnceflowError):
    """The job definition is invalid. Raised before anything runs; never retried."""

    domain = ErrorDomain.USER


class JobLoadError(JobDefinitionError):
    """The job file is missing, has no ``build()``, or ``build()`` failed."""


class OperatorError(OnceflowError):
    """A task failed while running; ``__cause__`` holds the user or connector exception."""

    def __init__(
        self,
        message: str,
        *,
        operator: str,
        uid: str,
        subtask_index: int,
        checkpoint_id: int | None,
        domain: ErrorDomain = ErrorDomain.USER,
    ) -> None:
        super().__init__(message)
        self.operator = operator
        self.uid = uid
        self.subtask_index = subtask_index
        self.checkpoint_id = checkpoint_id
        self.domain = domain


class CheckpointFailureReason(str, Enum):
    """Why a checkpoint did not complete."""

    TIMEOUT = "checkpoint expired before completing"
    SNAPSHOT_FAILED = "a task failed to take its snapshot"
    WRITE_FAILED = "writing a state file failed"
    METADATA_FAILED = "writing the checkpoint metadata failed"
    JOB_FAILED = "the job attempt failed while the checkpoint was pending"


class CheckpointError(OnceflowError):
    """A checkpoint failed; ``reason`` says why."""

    domain = ErrorDomain.EXTERNAL

    def __init__(self, message: str, reason: CheckpointFailureReason) -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointStorageError(OnceflowError):
    """The checkpoint storage cannot be used (unwritable, unreachable)."""

    domain = ErrorDomain.EXTERNAL


class IncompatibleCheckpointError(OnceflowError):
    """The latest checkpoint was written by a different job graph or setting."""

    domain = ErrorDomain.USER


class ConcurrentRunError(OnceflowError):
    """Another runner is using the same checkpoint directory."""

    domain = ErrorDomain.USER
