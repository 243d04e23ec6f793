"""What a bad record looks like to the user: a dead letter, or the words of a fail-fast error.

``engine.task`` decides when a record is bad and where it goes; this module
only formats. Both forms show the same facts: the operator, the error, the
record (its ``repr``, cut to :data:`RECORD_REPR_LIMIT` characters) and, when
the subtask knows it, where the record came from (a ``SourceReader``'s
``batch_position``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RECORD_REPR_LIMIT", "UNKEYED", "dead_letter", "describe_position", "describe_record"]

RECORD_REPR_LIMIT = 1000
"""Characters of a record's ``repr`` (and of an error message) kept in a dead letter or an error."""


def describe_record(record: Any) -> str:
    """Return ``repr(record)``, cut to about :data:`RECORD_REPR_LIMIT` characters; never raises."""
    try:
        text = repr(record)
    except Exception as exc:  # a user __repr__ that fails must not hide the original error
        text = f"<{type(record).__name__} whose repr() raised {type(exc).__name__}>"
    return _cut(text)


def describe_position(position: dict[str, Any] | None) -> str:
    """Return ``" (file f, line n)"``, ``" (file f, lines a-b)"``, ``" (stream s, entry id i)"`` or ``""``."""
    if not position:
        return ""
    if "file" in position:
        if "line" in position:
            return f" (file {position['file']}, line {position['line']})"
        first, last = position["lines"]
        return f" (file {position['file']}, one of lines {first}-{last})"
    if "stream" in position:
        return f" (stream {position['stream']}, entry {position['id']})"
    return f" ({position})"


UNKEYED: Any = object()
"""``key=`` of :func:`dead_letter` for a record that has no key (None is a key)."""


def dead_letter(
    *,
    operator: str,
    subtask: int,
    error: BaseException,
    record: Any,
    source: dict[str, Any] | None,
    key: Any = UNKEYED,
    input: int | None = None,  # noqa: A002 - the letter's field name
    timer: float | None = None,
) -> str:
    """Return the dead letter of one bad record: a JSON object on one line.

    Keys: ``operator``, ``subtask``, ``error`` (``{"type", "message"}``),
    ``record`` (truncated repr) and, when known, ``source`` (what the source
    reader's ``batch_position`` said); for a keyed operator the record's
    ``key`` (its repr, truncated); for a two-input operator ``input`` (1 or 2:
    which input the record came from); for a failing timer (a window join's
    window, an ``on_timer``) the ``timer``'s timestamp.
    """
    letter: dict[str, Any] = {
        "operator": operator,
        "subtask": subtask,
        "error": {"type": type(error).__name__, "message": _cut(_message(error))},
        "record": describe_record(record),
    }
    if key is not UNKEYED:
        letter["key"] = describe_record(key)
    if input is not None:
        letter["input"] = input
    if timer is not None:
        letter["timer"] = timer
    if source:
        letter["source"] = source
    return json.dumps(letter, ensure_ascii=False, default=str)


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a user __str__ that fails
        return f"<{type(error).__name__} whose str() raised>"


def _cut(text: str) -> str:
    if len(text) <= RECORD_REPR_LIMIT:
        return text
    return f"{text[:RECORD_REPR_LIMIT]}... ({len(text)} characters)"
