"""Argument checks and small helpers shared by the job API modules.

``engine/api.py`` (``Job``, ``Stream``, ``KeyedStream``) and
``engine/windowed.py`` (``WindowedStream``) validate user arguments the same
way; this module is their one home, so an error message reads the same
whichever method raised it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from onceflow.engine.errors import JobDefinitionError
from onceflow.engine.graph import OnError

if TYPE_CHECKING:
    from onceflow.engine.api import Stream


def check_fn(fn: Any, method: str) -> None:
    """Refuse a non-callable where ``method`` needs a function, at graph time."""
    if not callable(fn):
        msg = f"{method}() needs a callable, got {fn!r}"
        raise JobDefinitionError(msg)


def on_error_mode(value: Any, method: str, *, dead_letters: bool = True) -> OnError:
    """Validate an ``on_error=`` argument; ``dead_letters=False`` where records cannot be isolated yet."""
    try:
        mode = OnError(value)
    except ValueError:
        msg = f"{method}(): on_error must be 'fail' or 'dead_letter', got {value!r}"
        raise JobDefinitionError(msg) from None
    if mode is OnError.DEAD_LETTER and not dead_letters:
        msg = (
            f"{method}() does not support on_error='dead_letter' yet (its function does not see one "
            "record at a time); do the part that can fail in a map/filter/flat_map with "
            "on_error='dead_letter' before it"
        )
        raise JobDefinitionError(msg)
    return mode


def describe_output(stream: Stream, description: str) -> None:
    """Replace the description ``onceflow graph`` shows for the operator ending ``stream``."""
    node = stream._inputs[0][0]  # noqa: SLF001 - one API
    stream._job.graph.spec(node).description = description  # noqa: SLF001


def copy_per_subtask(fn: Any) -> Any:
    """Copy a user object per subtask, so no attribute is shared between subtasks."""
    try:
        return copy.deepcopy(fn)
    except Exception:  # objects that cannot be copied are shared as they are
        return fn


def check_event_time(assigner: Any, timestamp_fn: Any, method: str, where: str) -> None:
    """Refuse an event-time window on a stream without ``assign_timestamps``, at graph time."""
    if getattr(assigner, "event_time", False) and timestamp_fn is None:
        msg = (
            f"{method}({type(assigner).__name__}) needs event timestamps: call "
            f"assign_timestamps(...) {where} (after any map or flat_map)"
        )
        raise JobDefinitionError(msg)


def use_timestamps(timestamp_fn: Any) -> Any:
    """Return a consumer's timestamp function; if its records carry their times, make the producer stamp.

    A stream after a ``process`` window, a process function or a join has a
    ``CarriedTimestamps`` marker for a timestamp function; the producing
    operator stamps its outputs only when some consumer reads them, which
    this records (at graph time; the producer is built at run time).
    """
    from onceflow.operators.event_time import CarriedTimestamps

    if type(timestamp_fn) is CarriedTimestamps:
        timestamp_fn.used = True
    return timestamp_fn


def kept_timestamps(timestamp_fn: Any) -> Any:
    """Return the timestamp function a same-record transform (``filter``) passes on.

    Carried times travel in batches parallel to the records; an operator that
    drops records in a chain does not keep them parallel, so after it the
    stream needs ``assign_timestamps`` (as after ``map``).
    """
    from onceflow.operators.event_time import CarriedTimestamps

    return None if type(timestamp_fn) is CarriedTimestamps else timestamp_fn
