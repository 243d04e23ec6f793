"""Local pre-aggregation of event-time windows: a combiner upstream of the key exchange.

A keyed ``reduce`` or ``aggregate`` window sends every record across the key
exchange, although it only keeps one accumulator per key and window. The
combiner runs in the chain *before* the exchange, in every upstream subtask:
it folds each key's records per *slice* of event time (the window itself for
tumbling windows, the sliding operator's slice of ``gcd(size, slide)``) and
emits one partial ``(key, t, acc)`` per key and slice, where ``t`` is the
time of a record of that slice. The window operator downstream takes partials
instead of records and folds them with the merge function (``reduce_fn`` for
``reduce``, ``merge_fn`` for ``aggregate``), so only partials cross processes
(Flink's local, or two-phase, aggregation).

When a partial goes out:

* when the watermark passes the slice's end: before the watermark is
  forwarded, so downstream it is never late (the downstream watermark is the
  minimum of its inputs', at most this subtask's previous one);
* before every barrier (``Capability.HOLDS_RECORDS``): the combiner holds
  nothing at a checkpoint, so it has no state, a restore (at any parallelism)
  replays exactly the records after the barrier, and the partials before it
  are in the window operator's checkpointed state (exactly once);
* before this subtask's output goes idle, since the downstream watermark then
  no longer waits for it;
* at once, as a partial of one record, for a record whose slice already ended
  at this watermark: the window operator decides whether it is late, as it
  would for the record itself.

Results equal those without the combiner when the merge is associative and
does not care in which order partials of one key and window meet (the order
of records from several upstream subtasks is arbitrary anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from onceflow.operators.base import Capability, Operator
from onceflow.operators.event_time import event_times
from onceflow.operators.window_slices import slice_length
from onceflow.operators.windows import SlidingEventTimeWindows, TumblingEventTimeWindows, _slot

__all__ = ["WindowCombiner", "combiner_slices", "partial_key", "partial_time"]

partial_key = itemgetter(0)
"""The key of a partial ``(key, t, acc)``: the key exchange after the combiner hashes it."""
partial_time = itemgetter(1)
"""The event time of a partial ``(key, t, acc)``: a record's time inside its slice."""


def combiner_slices(assigner: Any) -> tuple[float, float] | None:
    """Return ``(length, offset)`` of the slices a combiner folds for ``assigner``, None if it cannot.

    Tumbling windows are their own slices; sliding windows use the slices of
    the sliding operator (``gcd(size, slide)``), so each slice lies inside
    every window that contains any record of it. Sessions (windows known only
    once merged), processing time and sliding windows of too many slices get none.
    """
    if type(assigner) is TumblingEventTimeWindows:
        return assigner.size, assigner.offset
    if type(assigner) is SlidingEventTimeWindows:
        if assigner.size == assigner.slide:
            return assigner.size, assigner.offset
        g = slice_length(assigner.size, assigner.slide)
        return None if g is None else (g, assigner.offset)
    return None


class WindowCombiner(Operator):
    """Fold records per key and slice before the key exchange; emit partials (see the module docstring).

    Cost per record: the key function, two comparisons (the slice of the
    previous record, usually), one dict lookup and one ``add`` call.
    """

    capabilities = Capability.HOLDS_RECORDS

    def __init__(
        self,
        *,
        length: float,
        offset: float,
        key_fn: Callable[[Any], Any],
        timestamp_fn: Callable[[Any], float],
        first: Callable[[Any], Any],
        add: Callable[[Any, Any], Any],
        name: str = "window_combine",
    ) -> None:
        self.length = float(length)
        self.offset = float(offset)
        self.key_fn = key_fn
        self.timestamp_fn = timestamp_fn
        self.first = first
        """The accumulator of one record (the record for reduce, ``add(init(), record)`` for aggregate)."""
        self.add = add
        self.name = name
        self.watermark = -math.inf
        self.held: dict[int, tuple[float, dict[Any, Any]]] = {}
        """``{slice index: (a record's time in it, {key: accumulator})}``."""
        self._open_from: float = -math.inf
        """The lowest slice index whose end is above the watermark."""

    @property
    def held_partials(self) -> int:
        """How many partials (key and slice) are held."""
        return sum(len(per_key) for _, per_key in self.held.values())

    def process_batch(self, records: list) -> list:
        """Fold each record into its key's slice; a record of an ended slice goes out at once."""
        out: list = []
        g, offset, held, open_from, wm = self.length, self.offset, self.held, self._open_from, self.watermark
        key_fn, first, add = self.key_fn, self.first, self.add
        times = event_times(records, self.timestamp_fn, self.name)
        lo = hi = math.nan  # the previous record's slice [lo, hi): nan compares False
        per_key: dict[Any, Any] | None = None
        for record, t in zip(records, times):
            if not lo <= t < hi:
                m = _slot(t, g, offset)
                lo = m * g + offset
                hi = lo + g
                if m < open_from or hi <= wm:
                    per_key = None
                else:
                    entry = held.get(m)
                    if entry is None:
                        entry = held[m] = (t, {})
                    per_key = entry[1]
            key = key_fn(record)
            if per_key is None:
                out.append((key, t, first(record)))
                continue
            acc = per_key.get(key, _MISSING)
            per_key[key] = first(record) if acc is _MISSING else add(acc, record)
        return out

    def on_watermark(self, watermark: float) -> list:
        """Emit the partials of every slice that ended at ``watermark`` (before it is forwarded)."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        g, offset = self.length, self.offset
        self._open_from = open_from = watermark if math.isinf(watermark) else _slot(watermark, g, offset)
        if not self.held:
            return []
        # a slice ended when either way of computing its end (the assigner's, _slot's) says so
        return self._emit([m for m in self.held if m < open_from or (m * g + offset) + g <= watermark])

    def prepare_snapshot_pre_barrier(self) -> list:
        """Emit every partial held, so the barrier finds the combiner empty."""
        return self._emit(list(self.held))

    def finish(self) -> list:
        """Emit whatever is still held (the end-of-time watermark has usually taken it all)."""
        return self._emit(list(self.held))

    def _emit(self, slices: list[int]) -> list:
        out: list = []
        held = self.held
        for m in sorted(slices):
            t, per_key = held.pop(m)
            out += [(key, t, acc) for key, acc in per_key.items()]
        return out


_MISSING = object()
