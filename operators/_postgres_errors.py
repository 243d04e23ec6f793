"""The PostgreSQL sink's error types, split by who can fix them, and how errors read in messages."""

from __future__ import annotations

from typing import Any

from onceflow.operators.errors import SinkError
from onceflow.state_backends.errors import ErrorDomain


class PostgresSinkError(SinkError):
    """The sink is set up wrongly or a record does not fit the table: retrying cannot help."""

    domain = ErrorDomain.USER


class PostgresUnavailableError(SinkError):
    """PostgreSQL cannot be reached or dropped the connection: a restart may succeed."""

    domain = ErrorDomain.EXTERNAL


def one_line(exc: BaseException) -> str:
    """Return an exception's message on one line (libpq messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def shorten(value: Any, limit: int = 300) -> str:
    """Return ``repr(value)``, cut to ``limit`` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
