"""Sliding event-time windows by slices: one partial result per key and slice, not per window.

A sliding window of ``size`` seconds every ``slide`` seconds overlaps
``size / slide`` others, so keeping one accumulator per window costs every
record ``size / slide`` updates. Cut time into *slices* of ``g = gcd(size,
slide)`` seconds instead: slice ``m`` is ``[m * g + offset, (m + 1) * g +
offset)``, window ``n`` (starting at ``n * slide + offset``) is exactly the
slices ``n * r .. n * r + q - 1`` with ``r = slide / g`` and ``q = size / g``.
A record updates the one partial of its key and slice; when a window fires,
its result combines the partials of its slices (``reduce_fn`` for reduce,
``merge_fn`` into a fresh ``init_fn()`` for aggregate, the concatenated
values in slice order for process).

The result equals the per-window operator's: a record belongs to exactly the
windows that contain its slice, a window fires once the watermark reaches its
end, a record within the allowed lateness re-fires the windows of its slice
already fired, and a record too late for every window of its slice goes to the
late-records side output. Reduce functions must not change their first
argument in place (it is a slice's partial, used again by the next window).

State: ``{key: (watermark, ((m, partial), ...))}`` as keyed state, so slices
move with their key group on a rescale; the watermark stored with each key
says which of its windows already fired, so a subtask that restores keys of
an old subtask that was further ahead does not fire them a second time.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from fractions import Fraction
from typing import Any

from onceflow.operators.base import OperatorSnapshot, RestoredState
from onceflow.operators.event_time import event_times, frozen_copy, restored_watermark
from onceflow.operators.windows import SlidingEventTimeWindows, Window, WindowOperator, _slot

__all__ = ["SlicingWindowOperator", "slice_length", "window_operator"]

MAX_SLICES_PER_WINDOW = 4096
"""Above this many slices per window (``size / gcd(size, slide)``) the per-window operator is used."""

_STATE = "slices"


def slice_length(size: float, slide: float) -> float | None:
    """Return ``gcd(size, slide)`` when windows are a small whole number of such slices, else None.

    Floats are exact binary fractions, so the gcd is exact; ``n * slide`` and
    ``m * g`` then land on the same float boundaries the assigner computes.
    """
    a, b = Fraction(size), Fraction(slide)
    den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
    g = Fraction(math.gcd(int(a * den), int(b * den)), den)
    if g <= 0 or a / g > MAX_SLICES_PER_WINDOW:
        return None
    return float(g)


def window_operator(assigner: Any, **kwargs: Any) -> WindowOperator:
    """Build the window operator for ``assigner``: slices for sliding event-time windows, else per window."""
    if (
        isinstance(assigner, SlidingEventTimeWindows)
        and assigner.size != assigner.slide
        and slice_length(assigner.size, assigner.slide) is not None
    ):
        return SlicingWindowOperator(assigner, **kwargs)
    return WindowOperator(assigner, **kwargs)


class SlicingWindowOperator(WindowOperator):
    """Sliding event-time windows kept as one partial per key and slice (see the module docstring).

    Cost per record: the timestamp function, one slot computation and one
    dict update; a window's firing combines the partials of its ``q`` slices.
    """

    def __init__(self, assigner: SlidingEventTimeWindows, **kwargs: Any) -> None:
        super().__init__(assigner, **kwargs)
        g = slice_length(assigner.size, assigner.slide)
        if g is None or self.merging or not self.event_time:
            msg = f"{assigner!r} cannot be cut into slices; use WindowOperator"
            raise ValueError(msg)
        self.g = g
        self.size = assigner.size
        self.slide = assigner.slide
        self.offset = assigner.offset
        self.r = round(assigner.slide / g)
        self.q = round(assigner.size / g)
        self.slices: dict[int, dict[Any, Any]] = {}
        """``{slice index: {key: partial}}``, slice-major so a window's firing reads q dicts."""
        self._ids: list[int] = []
        """The slice indices in ``slices``, sorted."""
        self._fired = -math.inf
        """Every window with index <= this has fired (its end <= the watermark)."""
        self._clean_from: float = -math.inf
        """Slices from this index on belong to no fired window: a record there is a plain update."""
        self._ahead: dict[Any, float] | None = None
        """After a rescale: keys restored from a subtask whose watermark was above ours, with it."""

    # -- window arithmetic -----------------------------------------------------------------

    def _window(self, n: int) -> Window:
        start = n * self.slide + self.offset
        return Window(start, start + self.size)

    def _first_window(self, m: int) -> int:
        """Return the lowest window index containing slice ``m``."""
        return (m - self.q) // self.r + 1

    def _last_fired(self, watermark: float) -> float:
        """Return the highest window index whose end is <= ``watermark`` (-inf/inf at the ends of time)."""
        if math.isinf(watermark):
            return watermark
        n = _slot(watermark - self.size, self.slide, self.offset)
        while self._window(n + 1).end <= watermark:
            n += 1
        while self._window(n).end > watermark:
            n -= 1
        return n

    # -- records -----------------------------------------------------------------------------

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Add each record to its key's slice; records in slices of fired windows take the slow path."""
        out: list = []
        ts_fn = self.timestamp_fn
        assert ts_fn is not None  # WindowOperator refuses an event-time assigner without one
        g, offset, slices = self.g, self.offset, self.slices
        first, add = self._first, self._add
        clean_from, ahead = self._clean_from, self._ahead
        floor = math.floor
        times = event_times(records, ts_fn, self.name, self.input_timestamps)
        for record, key, t in zip(records, keys, times):
            m = floor((t - offset) / g)
            if m * g + offset > t:
                m -= 1
            elif (m + 1) * g + offset <= t:
                m += 1
            if m < clean_from or (ahead is not None and key in ahead):
                self._add_slow(key, m, record, out)
                continue
            per_slice = slices.get(m)
            if per_slice is None:
                per_slice = slices[m] = {}
                insort(self._ids, m)
            acc = per_slice.get(key, _MISSING)
            per_slice[key] = first(record) if acc is _MISSING else add(acc, record)
        return out

    def _add_slow(self, key: Any, m: int, record: Any, out: list) -> None:
        """Add a record to a slice some window of which fired: update, re-fire, or refuse it as late."""
        wm, lateness = self.watermark, self.lateness
        fired = max(wm, self._ahead.get(key, -math.inf)) if self._ahead else wm
        lo, hi = self._first_window(m), m // self.r
        live = [n for n in range(lo, hi + 1) if self._window(n).end + lateness > wm]
        if not live:
            self._late(record)
            return
        per_slice = self.slices.get(m)
        if per_slice is None:
            per_slice = self.slices[m] = {}
            insort(self._ids, m)
        acc = per_slice.get(key, _MISSING)
        per_slice[key] = self._first(record) if acc is _MISSING else self._add(acc, record)
        for n in live:
            window = self._window(n)
            if window.end <= fired:
                self._output(key, window, self._combined(key, n), out)

    def _combined(self, key: Any, n: int) -> Any:
        """One key's result for window ``n`` from its slices."""
        ids, slices = self._ids, self.slices
        start = n * self.r
        result: Any = _MISSING
        for m in ids[bisect_left(ids, start) : bisect_left(ids, start + self.q)]:
            acc = slices[m].get(key, _MISSING)
            if acc is not _MISSING:
                result = self._fold(result, acc)
        return result

    def _fold(self, result: Any, acc: Any) -> Any:
        kind = self.kind
        if kind == "process":
            return list(acc) if result is _MISSING else result + acc
        if kind == "aggregate":
            return self._combine(self._init_fn() if result is _MISSING else result, acc)
        return acc if result is _MISSING else self._combine(result, acc)

    # -- time ----------------------------------------------------------------------------------

    def on_watermark(self, watermark: float) -> list:
        """Fire every window whose end the watermark passed, then drop slices no window needs."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list = []
        last = self._last_fired(watermark)
        if self._ids:
            self._fire_windows(last, out)
        self._fired = last
        self._clean_from = last if math.isinf(last) else last * self.r + self.q
        self._purge(watermark)
        if self._ahead is not None and all(v <= watermark for v in self._ahead.values()):
            self._ahead = None
        return out

    def _fire_windows(self, last: float, out: list) -> None:
        ids, slices, r, q = self._ids, self.slices, self.r, self.q
        ahead = self._ahead
        n = self._first_window(ids[0])
        if self._fired != -math.inf:
            n = max(n, int(self._fired) + 1)
        while n <= last:
            lo = bisect_left(ids, n * r)
            hi = bisect_left(ids, n * r + q)
            if lo == hi:
                if lo == len(ids):
                    return
                n = max(n + 1, self._first_window(ids[lo]))
                continue
            window = self._window(n)
            results: dict[Any, Any] = {}
            fold = self._fold
            for m in ids[lo:hi]:
                for key, acc in slices[m].items():
                    results[key] = fold(results.get(key, _MISSING), acc)
            end = window.end
            for key, result in results.items():
                if ahead is not None and end <= ahead.get(key, -math.inf):
                    continue  # fired by the subtask this key was restored from
                self._output(key, window, result, out)
            n += 1

    def _purge(self, watermark: float) -> None:
        """Drop slices whose last window ended ``allowed_lateness`` before the watermark."""
        ids, lateness = self._ids, self.lateness
        dropped = 0
        for m in ids:
            if self._window(m // self.r).end + lateness > watermark:
                break
            del self.slices[m]
            dropped += 1
        if dropped:
            del ids[:dropped]

    # -- state -----------------------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Every key's slices (with the watermark its windows fired up to) and the watermark."""
        per_key: dict[Any, list] = {}
        freeze = (lambda acc: tuple(acc)) if self.kind == "process" else frozen_copy
        for m in self._ids:
            for key, acc in self.slices[m].items():
                per_key.setdefault(key, []).append((m, freeze(acc)))
        wm, ahead = self.watermark, self._ahead
        keyed = {
            key: (max(wm, ahead.get(key, wm)) if ahead else wm, tuple(entries))
            for key, entries in per_key.items()
        }
        return OperatorSnapshot(operator_state={"watermark": wm}, keyed_state={_STATE: keyed})

    def restore_state(self, restored: RestoredState) -> None:
        """Load this subtask's keys' slices; keys from a subtask further ahead remember its watermark."""
        if "windows" in restored.keyed_state:
            msg = (
                f"{self.name}: the checkpoint holds sliding windows one per window (an older format); "
                "restore it with the version that wrote it, or start this job afresh"
            )
            raise ValueError(msg)
        self.watermark = wm = restored_watermark(restored, self.ctx.subtask_index, self.ctx.parallelism)
        self.slices = {}
        ahead: dict[Any, float] = {}
        process = self.kind == "process"
        for key, (key_wm, entries) in restored.keyed_state.get(_STATE, {}).items():
            if key_wm > wm:
                ahead[key] = key_wm
            for m, acc in entries:
                self.slices.setdefault(int(m), {})[key] = list(acc) if process else acc
        self._ids = sorted(self.slices)
        self._ahead = ahead or None
        last = self._last_fired(wm)
        self._fired = last
        self._clean_from = last if math.isinf(last) else last * self.r + self.q

    @property
    def open_windows(self) -> int:
        """How many partials (key and slice) are in state."""
        return sum(len(per_slice) for per_slice in self.slices.values())


_MISSING = object()
