"""The root of onceflow's exception tree and the errors the state layer raises.

Every layer defines the errors it raises itself and derives them from
:class:`OnceflowError`, which lives here because this is the lowest layer.
``onceflow.engine.errors`` draws the whole tree.
"""

from __future__ import annotations

from enum import Enum


class ErrorDomain(str, Enum):
    """Who caused an error, which decides whether a retry can help."""

    USER = "user"
    """Bad job code or bad input: retrying the same thing fails the same way."""
    EXTERNAL = "external"
    """Storage, network or a service: a retry may succeed."""
    INTERNAL = "internal"
    """A bug in onceflow itself."""


class OnceflowError(Exception):
    """Base class of every error onceflow raises on purpose."""

    domain: ErrorDomain = ErrorDomain.INTERNAL


class CorruptStateError(OnceflowError):
    """A state file is torn, truncated, or does not match its recorded checksum."""

    domain = ErrorDomain.EXTERNAL


class KeyEncodingError(OnceflowError, TypeError):
    """A key cannot be encoded canonically (unsupported type or NaN)."""

    domain = ErrorDomain.USER


class StateSerializationError(OnceflowError):
    """A state value (or an operator's state) cannot be pickled into a checkpoint.

    The job keeps something in state that has no byte form (a lock, an open
    file, a connection, a generator, a lambda): every checkpoint would fail the
    same way, so it is the user's to fix and never retried.
    """

    domain = ErrorDomain.USER


class IncompatibleStateError(OnceflowError):
    """A state file is intact but cannot be read by this interpreter or code version.

    For example, values pickled by another Python major.minor, or pickled classes
    that no longer import. Retrying cannot help; restore with a matching version.
    """

    domain = ErrorDomain.USER
