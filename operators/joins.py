"""Interval and window joins: keyed co-process functions whose state expires with the watermark.

Both run on :class:`~onceflow.operators.co_process.KeyedCoProcessOperator`,
so they share its state, timers, snapshots and rescaling; what they add is
which records to keep and when to forget them:

- :class:`IntervalJoinFunction` keeps each record only as long as a record of
  the other input could still pair with it: a left record at ``t`` until the
  watermark passes ``t + upper``, a right record at ``t`` until it passes
  ``t - lower``. A cleanup timer per (key, timestamp) drops them.
- :class:`WindowJoinFunction` keeps each window's records of both inputs until
  the watermark reaches the window's ``max_timestamp``, then calls the user
  function once with both lists and forgets the window.

So state on unbounded input is bounded by the rate of records times the
interval (or window) length, never by the length of the run. A record whose
timestamp is below the operator's watermark (a window join: whose every
window the watermark passed) is late: every record it could pair with may
already be gone, so it is not joined. It goes to the side output of
``late_records(tag)`` (``second=`` another tag for the second input's), or
without a tag is counted and logged (:class:`~onceflow.operators.event_time.LateRecords`,
as windows do); give ``assign_timestamps`` a ``max_delay`` that covers the
input's disorder.

A user function that raises, with ``on_error="dead_letter"``: an interval
join's pair function raises before its record is buffered, so that record
joins nothing and is a dead letter; a window join's raises for one window,
whose ``(key, window, lefts, rights)`` is the dead letter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from onceflow.operators.co_process import KeyedCoProcessFunction
from onceflow.operators.event_time import LateRecords
from onceflow.operators.process_function import ProcessContext, Stamped, describe_current
from onceflow.operators.windows import Window

__all__ = ["IntervalJoinFunction", "WindowJoinFunction"]

_LEFT = "join:left"
_RIGHT = "join:right"


class _EventTimeJoin(KeyedCoProcessFunction):
    """What both joins share: where late records go (``late_tags``: one tag per input, or None)."""

    late: LateRecords | None = None

    def __init__(self, late_tags: tuple[str | None, str | None]) -> None:
        self.late_tags = late_tags

    def _late(self, value: Any, ctx: ProcessContext, side: int) -> None:
        """Send a late record of input ``side`` (0 or 1) to its side output, or count it and warn once."""
        late = self.late
        if late is None:
            op = ctx._op  # noqa: SLF001 - the operator this function runs in owns the side outputs
            late = self.late = LateRecords(op.name, self.late_tags[0], op.side_outputs, 0.0)
        late.add(value, ctx.current_watermark, self.late_tags[side])

    @property
    def late_records(self) -> int:
        """Late records of this subtask so far (sent to a side output or dropped)."""
        return 0 if self.late is None else self.late.dropped + self.late.emitted


def _buffer(state: Any, timestamp: float, record: Any) -> None:
    """Append ``record`` to the list under ``timestamp`` (lists restored from a snapshot are tuples)."""
    found = state.get(timestamp)
    if found is None:
        state.put(timestamp, [record])
    elif type(found) is list:
        found.append(record)
    else:
        state.put(timestamp, [*found, record])


class IntervalJoinFunction(_EventTimeJoin):
    """Pair each left record at ``l`` with each right record of its key at ``l + lower <= r <= l + upper``.

    ``fn(left, right)`` returns an iterable of outputs (or None) per pair.
    Per record the cost is one pass over the other input's buffered
    timestamps of that key (those within the interval, as the rest expired).
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], Iterable[Any] | None],
        lower: float,
        upper: float,
        late_tags: tuple[str | None, str | None] = (None, None),
    ) -> None:
        super().__init__(late_tags)
        self.fn = fn
        self.lower = float(lower)
        self.upper = float(upper)

    def process_element1(self, value: Any, ctx: ProcessContext) -> list | None:
        """Join a left record with the buffered rights in ``[t + lower, t + upper]``; keep it till then."""
        t = ctx.timestamp
        if t is None or t < ctx.current_watermark:
            if t is not None:
                self._late(value, ctx, 0)
            return None
        lo, hi = t + self.lower, t + self.upper
        out = self._pairs(value, t, ctx.map_state(_RIGHT).items(), lo, hi, left=True)
        _buffer(ctx.map_state(_LEFT), t, value)
        ctx.timers.register_event_time(math.nextafter(hi, math.inf))
        return out

    def process_element2(self, value: Any, ctx: ProcessContext) -> list | None:
        """Join a right record with the buffered lefts in ``[t - upper, t - lower]``; keep it till then."""
        t = ctx.timestamp
        if t is None or t < ctx.current_watermark:
            if t is not None:
                self._late(value, ctx, 1)
            return None
        lo, hi = t - self.upper, t - self.lower
        out = self._pairs(value, t, ctx.map_state(_LEFT).items(), lo, hi, left=False)
        _buffer(ctx.map_state(_RIGHT), t, value)
        ctx.timers.register_event_time(math.nextafter(hi, math.inf))
        return out

    def _pairs(
        self, record: Any, t: float, buffered: list, lo: float, hi: float, *, left: bool
    ) -> Stamped | None:
        """Pair ``record`` (at ``t``) with the buffered records in ``[lo, hi]``.

        A pair's outputs are at the later of the two times, as Flink's interval join stamps them.
        """
        out: Stamped | None = None
        fn = self.fn
        for ts, others in buffered:
            if lo <= ts <= hi:
                stamp = ts if ts > t else t
                for other in others:
                    result = fn(record, other) if left else fn(other, record)
                    if result is not None:
                        if out is None:
                            out = Stamped()
                        n = len(out)
                        out.extend(result)
                        out.timestamps += [stamp] * (len(out) - n)
        return out

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> None:
        """Forget the records no future record can pair with: the watermark passed their interval."""
        lefts = ctx.map_state(_LEFT)
        for ts in lefts.keys():
            if ts + self.upper < timestamp:
                lefts.remove(ts)
        rights = ctx.map_state(_RIGHT)
        for ts in rights.keys():
            if ts - self.lower < timestamp:
                rights.remove(ts)


class WindowJoinFunction(_EventTimeJoin):
    """Collect both inputs of each key and window; call ``fn(key, window, lefts, rights)`` once it ends.

    The window assigner must be event time and not merging (tumbling or
    sliding). The function is called for every window in which either input
    had a record (a co-group: an inner join loops over both lists and returns
    nothing when one is empty).
    """

    def __init__(
        self,
        fn: Callable[[Any, Window, list, list], Iterable[Any] | None],
        assigner: Any,
        late_tags: tuple[str | None, str | None] = (None, None),
    ) -> None:
        super().__init__(late_tags)
        self.fn = fn
        self.assigner = assigner

    def process_element1(self, value: Any, ctx: ProcessContext) -> None:
        """Add a left record to each of its windows."""
        self._add(value, ctx, 0)

    def process_element2(self, value: Any, ctx: ProcessContext) -> None:
        """Add a right record to each of its windows."""
        self._add(value, ctx, 1)

    def _add(self, value: Any, ctx: ProcessContext, side: int) -> None:
        t = ctx.timestamp
        if t is None:
            return
        watermark = ctx.current_watermark
        windows = ctx.map_state("join:windows")
        added = False
        for window in self.assigner.assign(t):
            end = window.max_timestamp
            if end < watermark:
                continue
            added = True
            bounds = (window.start, window.end)
            entry = windows.get(bounds)
            if entry is None:
                entry = ([], [])
            elif type(entry[0]) is not list:
                entry = (list(entry[0]), list(entry[1]))
            entry[side].append(value)
            windows.put(bounds, entry)
            ctx.timers.register_event_time(end)
        if not added:
            self._late(value, ctx, side)

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> list | None:
        """Fire and forget every window of the key whose ``max_timestamp`` the watermark reached."""
        windows = ctx.map_state("join:windows")
        out: Stamped | None = None
        for bounds in sorted(windows.keys()):
            window = Window(*bounds)
            if window.max_timestamp > timestamp:
                continue
            lefts, rights = windows.get(bounds)
            windows.remove(bounds)
            lefts, rights = list(lefts), list(rights)
            try:
                result = self.fn(ctx.key, window, lefts, rights)
                if result is not None and type(result) is not list:
                    result = list(result)
            except Exception:
                describe_current(ctx, (ctx.key, window, lefts, rights))
                raise
            if result is not None:
                if out is None:
                    out = Stamped()
                out.extend(result)
                out.timestamps += [window.max_timestamp] * len(result)
        return out
