"""How an operator reports that its user function raised for a record of a batch.

The per-record loops of ``transforms`` and ``keyed`` stay as fast as they
are: they iterate over an explicit list iterator, and only when the user
function raises do they look at it. The iterator's length hint is what the
loop had not taken yet, so the failing record's index is known without a
second call of the function, and the operator raises a :class:`BatchFailure`.
The runtime (``engine.task``) then either fails naming the record
(``on_error="fail"``) or makes it a dead letter and passes the records after
it to the operator again (``on_error="dead_letter"``). This module decides
nothing about that choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import length_hint
from typing import Any

__all__ = ["BadInput", "BatchFailure", "TimerFailure", "failure_at"]


class BatchFailure(Exception):  # noqa: N818 - control flow of the error path, not a user-facing error
    """The user function raised ``error`` for record ``index`` of a batch; the rest is accounted for.

    Contract, for the ``records`` of the call that raised it:

    1. every record of ``records[:index]`` was applied exactly once, and
       :attr:`outputs` are its outputs, in order;
    2. ``records[index]`` had no effect at all (no state changed, no output);
    3. ``records[index + 1:]`` were not touched: the runtime may pass them to
       the same operator again.

    Raised on the error path only, never per record on the fast one.
    """

    def __init__(self, index: int, error: Exception, outputs: list | Callable[[], list]) -> None:
        super().__init__(f"record {index} of the batch failed: {type(error).__name__}: {error}")
        self.index = index
        self.error = error
        self._outputs = outputs

    @property
    def outputs(self) -> list:
        """The outputs of ``records[:index]``; a stateless operator computes them on first use."""
        if callable(self._outputs):
            self._outputs = self._outputs()
        return self._outputs


def failure_at(
    records: list, remaining: Iterator[Any], error: Exception, outputs: list | Callable[[list], list]
) -> BatchFailure:
    """Describe a loop over ``remaining = iter(records)`` that raised ``error`` (error path only).

    The loop had taken the failing record from ``remaining`` and raised
    before writing anything for it, so it is the record just before what the
    list iterator still holds; this holds even when equal (or identical)
    records occur twice in the batch. ``outputs`` is either what the loop
    produced for the records before it (a stateful loop) or a pure function
    that recomputes that from ``records[:index]`` (a stateless one: the
    runtime asks only when it goes on with the batch, so a failing job never
    calls the user function again).
    """
    index = len(records) - length_hint(remaining) - 1
    if callable(outputs):
        redo = outputs
        return BatchFailure(index, error, lambda: redo(records[:index]))
    return BatchFailure(index, error, outputs)


class BadInput(Exception):  # noqa: N818 - control flow of the error path, not a user-facing error
    """A source's batch held input that does not decode as records; the rest decoded.

    Raised by ``SourceReader.poll_batch`` (e.g. a CSV row with too many fields)
    after its offsets moved past the whole batch: :attr:`records` are the good
    records, to be pushed on as the batch; :attr:`bad` lists ``(raw input,
    error, source position)`` per bad row. The runtime fails naming the first
    one, or with ``job.source(..., on_error="dead_letter")`` makes each a dead
    letter in the same step, so the next barrier covers both.
    """

    def __init__(self, records: Any, bad: list[tuple[Any, Exception, dict[str, Any] | None]]) -> None:
        raw, error, position = bad[0]
        where = f" ({', '.join(f'{k} {v}' for k, v in position.items())})" if position else ""
        super().__init__(f"{len(bad)} bad input row(s), the first {raw!r}{where}: {error}")
        self.records = records
        self.bad = bad


class TimerFailure(Exception):  # noqa: N818 - control flow of the error path, not a user-facing error
    """A timer's user function raised ``error`` while the watermark (or clock) fired timers.

    Contract, for the hook (``on_watermark`` or ``on_processing_time``) that raised it:

    1. every timer that fired before it ran once, and :attr:`outputs` are their outputs;
    2. the failing timer is gone from state (it fired; it will not fire again);
    3. calling the same hook again with the same time fires the timers still due.

    :attr:`record` describes what the failing timer was handling (a window
    join: ``(key, window, lefts, rights)``), :attr:`key` its key.
    """

    def __init__(self, error: Exception, record: Any, key: Any, timestamp: float, outputs: list) -> None:
        super().__init__(f"timer {timestamp!r} of key {key!r} failed: {type(error).__name__}: {error}")
        self.error = error
        self.record = record
        self.key = key
        self.timestamp = timestamp
        self.outputs = outputs
