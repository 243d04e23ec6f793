"""The exception tree of onceflow, and the errors raised by the engine itself.

::

    OnceflowError                       (onceflow.state_backends.errors; carries a domain)
    ├── CorruptStateError               a state file is torn or fails its checksum
    ├── KeyEncodingError (TypeError)    a key of an unsupported type
    ├── IncompatibleStateError          state written by an incompatible Python
    ├── StateSerializationError         a state value cannot be pickled (user; never retried)
    ├── SourceError / SinkError         (onceflow.operators.errors) bad connector setup
    │   └── SinkCommitError             a committed checkpoint's output is gone
    ├── JobDefinitionError              the job is invalid; raised before running
    │   └── JobLoadError                the job file cannot be loaded or built
    ├── OperatorError                   a task failed while running
    │   └── WorkerError                 ... in a worker process (or the worker died)
    ├── CheckpointError                 a checkpoint failed (with a reason)
    ├── CheckpointStorageError          checkpoint storage unusable
    │   └── CheckpointDirectoryError    the --checkpoint-dir setting cannot work
    ├── IncompatibleCheckpointError     the checkpoint belongs to another job graph
    └── ConcurrentRunError              another runner holds the checkpoint directory

Each error has a ``domain`` (user, external, internal): definition and usage
errors are never retried; task failures follow the restart strategy. The one
place that turns an exception into those decisions is :func:`classify`; the
runner (retry or not), the executors (what a worker reports) and the CLI (exit
code 1 or 2) all ask it, and none of them looks at message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from onceflow.operators.errors import SinkCommitError, SinkError, SourceError
from onceflow.state_backends.errors import (
    CorruptStateError,
    ErrorDomain,
    IncompatibleStateError,
    KeyEncodingError,
    OnceflowError,
    StateSerializationError,
)

__all__ = [
    "CheckpointDirectoryError",
    "CheckpointError",
    "CheckpointFailureReason",
    "CheckpointStorageError",
    "ConcurrentRunError",
    "CorruptStateError",
    "ErrorDomain",
    "Failure",
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
    "StateSerializationError",
    "WorkerError",
    "classify",
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
        phase: str = "",
    ) -> None:
        super().__init__(message)
        self.operator = operator
        self.uid = uid
        self.subtask_index = subtask_index
        self.checkpoint_id = checkpoint_id
        self.domain = domain
        self.phase = phase
        """The step of the operator life cycle that failed (``open``, ``process``, ...); may be empty."""


class WorkerError(OperatorError):
    """A task failed in a worker process, or the worker itself died.

    The original exception stayed in the worker; the worker classified it
    there, and ``failure`` carries that classification to the runner.
    """

    def __init__(
        self,
        message: str,
        *,
        failure: Failure,
        operator: str,
        uid: str,
        subtask_index: int,
        checkpoint_id: int | None,
        cause_type: str = "",
        symptom: bool = False,
    ) -> None:
        super().__init__(
            message,
            operator=operator,
            uid=uid,
            subtask_index=subtask_index,
            checkpoint_id=checkpoint_id,
            domain=failure.domain,
        )
        self.failure = failure
        self.cause_type = cause_type
        """Class name of the original exception's cause (it stayed in the worker)."""
        self.symptom = symptom
        """A broken connection to a peer worker: most likely the effect of that peer's failure."""


class CheckpointFailureReason(str, Enum):
    """Why a checkpoint did not complete."""

    TIMEOUT = "checkpoint expired before completing"
    WRITE_FAILED = "writing a state file failed"


class CheckpointError(OnceflowError):
    """A checkpoint failed; ``reason`` says why."""

    domain = ErrorDomain.EXTERNAL

    def __init__(self, message: str, reason: CheckpointFailureReason) -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointStorageError(OnceflowError):
    """The checkpoint storage cannot be used (unwritable, unreachable)."""

    domain = ErrorDomain.EXTERNAL


class CheckpointDirectoryError(CheckpointStorageError):
    """The checkpoint directory cannot work as given (bad URL, not writable, not shared).

    A wrong setting, not an outage: a usage error, never retried.
    """

    domain = ErrorDomain.USER


class IncompatibleCheckpointError(OnceflowError):
    """The latest checkpoint was written by a different job graph or setting."""

    domain = ErrorDomain.USER


class ConcurrentRunError(OnceflowError):
    """Another runner is using the same checkpoint directory."""

    domain = ErrorDomain.USER


# -- classification -------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What the engine does about an exception: who caused it, retry or not, exit code 2 or 1."""

    domain: ErrorDomain
    retryable: bool
    """Whether restarting the attempt from the latest checkpoint can help."""
    usage: bool
    """Whether the command line or the job was set up wrongly (CLI exit code 2, not 1)."""


_USAGE_ERRORS = (
    JobDefinitionError,
    ConcurrentRunError,
    IncompatibleCheckpointError,
    CheckpointDirectoryError,
)


def classify(exc: BaseException) -> Failure:
    """Decide who caused ``exc``, whether a restart can help, and whether it is a usage error.

    Cases, first match wins:

    1. A ``WorkerError``: the worker classified the original exception; keep that.
    2. An ``OperatorError`` (a task failed): a onceflow error as its cause
       decides by its domain (user errors fail the same way every time); any
       other cause (user code raised, a connection broke) is worth a restart.
       A user-domain cause in ``open`` is a usage error (a connector set up
       wrongly: a missing input, a directory of another job).
    3. Definition, directory and run-lock errors are usage errors, never retried.
    4. Any other onceflow error: retried unless its domain is user.
    5. Anything else (a bug, an exception outside any task): retried, internal.
    """
    if isinstance(exc, WorkerError):
        return exc.failure
    if isinstance(exc, OperatorError):
        cause = exc.__cause__
        if isinstance(cause, OnceflowError):
            user = cause.domain is ErrorDomain.USER
            return Failure(exc.domain, retryable=not user, usage=user and exc.phase == "open")
        return Failure(exc.domain, retryable=True, usage=False)
    if isinstance(exc, _USAGE_ERRORS):
        return Failure(exc.domain, retryable=False, usage=True)
    if isinstance(exc, OnceflowError):
        return Failure(exc.domain, retryable=exc.domain is not ErrorDomain.USER, usage=False)
    return Failure(ErrorDomain.INTERNAL, retryable=True, usage=False)
