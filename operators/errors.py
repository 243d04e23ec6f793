"""The errors that sources and sinks raise; the engine wraps and reports them.

The tree below :class:`onceflow.state_backends.errors.OnceflowError` (``onceflow.engine.errors``
draws the whole of it)::

    OnceflowError
    ├── SourceError                  user: the input cannot be read as configured
    │   ├── SourceNotFoundError      (also a FileNotFoundError)
    │   ├── SourceDecodeError        (also a ValueError)
    │   └── SourceChangedError       input a checkpoint started is gone or different
    ├── SinkError                    user: the output destination cannot be used
    │   ├── SinkOwnershipError       the directory belongs to another job or sink
    │   ├── SinkOutputExistsError    a fresh run would mix with an earlier run's output
    │   ├── SinkAheadOfCheckpointError  the sink committed beyond the checkpoint being restored
    │   └── SinkCommitError          external: a completed checkpoint's output is gone

Retrying cannot help a ``user`` error, so the runner fails the job at once.
"""

from __future__ import annotations

from onceflow.state_backends.errors import ErrorDomain, OnceflowError

__all__ = [
    "SinkAheadOfCheckpointError",
    "SinkCommitError",
    "SinkError",
    "SinkOutputExistsError",
    "SinkOwnershipError",
    "SourceChangedError",
    "SourceDecodeError",
    "SourceError",
    "SourceNotFoundError",
]


class SourceError(OnceflowError):
    """A source cannot read its input as configured (bad path, bad encoding, bad bytes)."""

    domain = ErrorDomain.USER


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A source path matches no file; also a ``FileNotFoundError`` for callers that expect one."""


class SourceDecodeError(SourceError, ValueError):
    """Input bytes do not decode with the configured encoding; the message names file and offset."""


class SourceChangedError(SourceError):
    """Input that the restored checkpoint had started reading is missing or different now.

    A file renamed, deleted or rewritten, a Redis stream deleted or trimmed: resuming
    would read records again or skip them, so the run is refused, naming the input.
    Retrying cannot help; putting the input back as it was, or ``--fresh``, does.
    """


class SinkError(OnceflowError):
    """A sink cannot use its destination without risking someone else's data or its own."""

    domain = ErrorDomain.USER


class SinkOwnershipError(SinkError):
    """The destination holds output that another job or sink wrote; nothing was touched."""


class SinkOutputExistsError(SinkError):
    """A fresh run found committed output of an earlier run; ``--fresh`` replaces it."""


class SinkAheadOfCheckpointError(SinkError):
    """The sink committed a checkpoint newer than the one being restored: that one was lost or damaged.

    Restoring would write the output of the checkpoints in between a second
    time, so the run is refused. The user puts the lost checkpoint back, or
    starts over with ``--fresh``. Retrying cannot help.
    """

    def __init__(self, message: str, committed: int | None = None, restored: int | None = None) -> None:
        super().__init__(message)  # args stay (message,): the error pickles across processes
        self.committed = committed
        self.restored = restored


class SinkCommitError(SinkError):
    """Output owed by a completed checkpoint is missing: data loss, never silently skipped.

    The domain is ``external`` because only something outside onceflow (a cleanup
    script, a lifecycle rule, a person) removes a pending file of a completed
    checkpoint. Restarting from the same checkpoint fails the same way, so the
    bounded restart strategy ends the job with this error.
    """

    domain = ErrorDomain.EXTERNAL
