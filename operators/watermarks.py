"""Watermark arithmetic: pure functions and bookkeeping, no clock, no I/O, no channels.

Two questions every event-time component asks, answered here once:

1. What watermark does a stream of timestamps define? :func:`bounded_out_of_orderness`
   (``max_timestamp - max_delay``) and :func:`has_been_idle` (no record for
   ``idle_timeout`` seconds), used by the timestamp assigner
   (``onceflow.operators.event_time``).
2. What is the watermark of something with several inputs? :class:`InputWatermarks`:
   the minimum over inputs that are neither idle nor ended (Flink's
   ``StatusWatermarkValve``), used by a subtask over its input channels
   (``onceflow.engine.task``).

It lives in ``operators`` because operators need it and imports run
``engine`` -> ``operators``. Sending watermarks and deciding what an operator
does with them is the caller's job.
"""

from __future__ import annotations

import math
from enum import Enum

__all__ = ["InputWatermarks", "WatermarkUpdate", "bounded_out_of_orderness", "has_been_idle", "min_active"]


def bounded_out_of_orderness(max_timestamp: float, max_delay: float) -> float:
    """Return the watermark promising no record more than ``max_delay`` older than ``max_timestamp``.

    ``max_delay=0`` is the watermark of monotonous timestamps. Minus infinity
    (nothing seen yet) stays minus infinity.
    """
    return max_timestamp - max_delay


def has_been_idle(last_activity: float, now: float, idle_timeout: float) -> bool:
    """Return whether ``idle_timeout`` seconds have passed since ``last_activity`` (same clock as ``now``)."""
    return now - last_activity >= idle_timeout


def min_active(watermarks: list[float], idle: list[bool], ended: list[bool]) -> float | None:
    """Return the minimum watermark over inputs that are neither idle nor ended, None if there is none."""
    active = [wm for wm, i, e in zip(watermarks, idle, ended) if not i and not e]
    return min(active) if active else None


class WatermarkUpdate(Enum):
    """What one input's news did to the combined watermark of :class:`InputWatermarks`."""

    UNCHANGED = "unchanged"
    ADVANCED = "advanced"
    """``combined`` moved up: run the operators' ``on_watermark`` and forward it."""
    IDLE = "idle"
    """Every input still open is idle: tell downstream not to wait (reported again on every such news)."""
    ENDED = "ended"
    """Every input ended: event time jumps to its end."""


class InputWatermarks:
    """The watermark of ``inputs`` inputs combined: the minimum over inputs neither idle nor ended.

    1. An input's watermark only moves up; a lower one is ignored.
    2. An idle input is left out of the minimum until it sends records
       (:meth:`on_records`) or a watermark again; if every open input is idle
       the result is :attr:`WatermarkUpdate.IDLE`.
    3. An ended input is left out for good; when all have ended, ``ENDED``.
    4. ``combined`` never decreases, so an input that comes back from
       idleness behind the others does not move event time backwards.

    Composes: a two-input operator can keep one instance per input gate and feed
    each gate's updates into an ``InputWatermarks(2)`` (``ADVANCED`` ->
    ``on_watermark(side, gate.combined)``, ``IDLE`` -> ``on_idle(side)``,
    ``ENDED`` -> ``on_end(side)``), or one instance over the channels of both.

    Cost: ``on_records`` is one list store; the other methods are O(inputs) and
    run once per watermark or end of input, never per record.
    """

    __slots__ = ("_ended", "_watermarks", "combined", "idle")

    def __init__(self, inputs: int) -> None:
        self._watermarks = [-math.inf] * inputs
        self._ended = [False] * inputs
        self.idle = [False] * inputs
        """Per input, whether it is idle; callers may read it (a cheap check before ``on_records``)."""
        self.combined = -math.inf
        """The highest combined watermark reported as ``ADVANCED`` so far."""

    def on_watermark(self, channel: int, timestamp: float) -> WatermarkUpdate:
        """Input ``channel`` promises nothing below ``timestamp`` (and is active again)."""
        self.idle[channel] = False
        if timestamp > self._watermarks[channel]:
            self._watermarks[channel] = timestamp
        return self._combine()

    def on_idle(self, channel: int) -> WatermarkUpdate:
        """Input ``channel`` went idle: leave it out of the minimum."""
        self.idle[channel] = True
        return self._combine()

    def on_records(self, channel: int) -> None:
        """Input ``channel`` sent records: it counts again from its next watermark on."""
        self.idle[channel] = False

    def on_end(self, channel: int) -> WatermarkUpdate:
        """Input ``channel`` ended: leave it out for good."""
        self._ended[channel] = True
        if all(self._ended):
            return WatermarkUpdate.ENDED
        if self.idle[channel]:
            return WatermarkUpdate.UNCHANGED  # already left out of the minimum
        self._watermarks[channel] = math.inf
        return self._combine()

    @property
    def ended(self) -> bool:
        """Whether every input has ended."""
        return all(self._ended)

    def _combine(self) -> WatermarkUpdate:
        combined = min_active(self._watermarks, self.idle, self._ended)
        if combined is None:
            return WatermarkUpdate.UNCHANGED if all(self._ended) else WatermarkUpdate.IDLE
        if combined > self.combined:
            self.combined = combined
            return WatermarkUpdate.ADVANCED
        return WatermarkUpdate.UNCHANGED
