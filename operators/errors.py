"""The errors that sources and sinks raise; the engine wraps and reports them.

The tree below :class:`onceflow.state_backends.errors.OnceflowError` (``onceflow.engine.errors``
draws the whole of it)::

    OnceflowError
    ├── SourceError                  user: the input cannot be read as configured
    │   ├── SourceNotFoundError      (also a FileNotFoundError)
    │   └── SourceDecodeError        (also a ValueError)
    ├── SinkError                    user: the output destination cannot be used
    │   ├── SinkOwnershipError       the directory belongs to another job or sink
    │   ├── SinkOutputExistsError    a fresh run would mix with an earlier run's output
    │   └── SinkCommitError          external: a completed checkpoint's output is gone

Retrying cannot help a ``user`` error, so the runner fails the job at once.
"""

from __future__ import annotations

from onceflow.state_backends.errors import ErrorDomain, OnceflowError

__all__ = [
    "SinkCommitError",
    "SinkError",
    "SinkOutputExistsError",
    "SinkOwnershipError",
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


class SinkError(OnceflowError):
    """A sink cannot use its destination without risking someone else's data or its own."""

    domain = ErrorDomain.USER


class SinkOwnershipError(SinkError):
    """The destination holds output that another job or sink wrote; nothing was touched."""


class SinkOutputExistsError(SinkError):
    """A fresh run found committed output of an earlier run; ``--fresh`` replaces it."""


class SinkCommitError(SinkError):
    """Output owed by a completed checkpoint is missing: data loss, never silently skipped.

    The domain is ``external`` because only something outside onceflow (a cleanup
    script, a lifecycle rule, a person) removes a pending file of a completed
    checkpoint. Restarting from the same checkpoint fails the same way, so the
    bounded restart strategy ends the job with this error.
    """

    domain = ErrorDomain.EXTERNAL
