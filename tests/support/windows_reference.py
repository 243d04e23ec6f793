"""Out-of-order event logs with margins, and the windows they must produce, in plain Python.

The watermark a record meets depends on the batches before it, so the log is
built with margins that make every record's fate independent of batching:

* on time (98.5%): ``ts = i * dt - U(0, max_delay)``: at most ``max_delay``
  behind every earlier record, so never late;
* late within the lateness (1.5%): ``max_delay + U(0, lateness - 0.1)``
  behind: its window may already have fired (it fires again) but is never
  purged, so the record always counts;
* far too late (one record every ``late_step`` from ``first_late`` on): 30-60 s
  behind and isolated from its key's sessions (no record within one gap), so
  it is dropped to the ``late`` side output in every run and never merges
  into a live session.
"""

from __future__ import annotations

import bisect
import collections
import math
import random
from dataclasses import dataclass

Event = tuple[int, str, float]
"""``(id, key, ts)``."""
WindowKey = tuple[str, str, float, float]
"""``(kind, key, start, end)``."""


@dataclass(frozen=True)
class EventLog:
    """How to build a log: its size, keys, seed, and where the far-too-late records go."""

    n: int
    n_keys: int
    seed: int
    first_late: int
    late_step: int
    dt: float = 0.01
    max_delay: float = 0.5
    lateness: float = 5.0
    gap: float = 3.0

    def events(self) -> tuple[list[Event], set[int]]:
        """Return events ``(id, key, ts)`` in arrival order and the ids too late for any window."""
        rng = random.Random(self.seed)
        events = []
        for i in range(self.n):
            key = f"k{rng.randrange(self.n_keys)}"
            if rng.random() < 0.015:
                ts = i * self.dt - self.max_delay - rng.uniform(0, self.lateness - 0.1)
            else:
                ts = i * self.dt - rng.uniform(0, self.max_delay)
            events.append((i, key, ts))
        by_key: dict[str, list[float]] = collections.defaultdict(list)
        for _, key, ts in events:
            by_key[key].append(ts)
        for times in by_key.values():
            times.sort()
        dropped: set[int] = set()
        for i in range(self.first_late, self.n, self.late_step):
            for _ in range(50):
                key = f"k{rng.randrange(self.n_keys)}"
                ts = i * self.dt - rng.uniform(30.0, 60.0)
                times = by_key[key]
                at = bisect.bisect_left(times, ts - self.gap - 0.01)
                if at == len(times) or times[at] > ts + self.gap + 0.01:  # isolated: no session to join
                    _, old_key, old_ts = events[i]
                    by_key[old_key].remove(old_ts)
                    bisect.insort(times, ts)
                    events[i] = (i, key, ts)
                    dropped.add(i)
                    break
        return events, dropped


def window_contents(
    events: list[Event],
    dropped: set[int],
    *,
    tumble: float,
    gap: float,
    slide: tuple[float, float] | None = None,
) -> dict[WindowKey, tuple[int, int]]:
    """Return ``{(kind, key, start, end): (count, sum of ids)}``: every window's final content.

    Kinds: ``tumbling`` (size ``tumble``), ``sliding`` (``slide = (size, step)``,
    if given) and ``session`` (``gap``). Dropped records count nowhere.
    """
    out: dict[WindowKey, list[int]] = {}

    def add(kind: str, key: str, start: float, end: float, rid: int) -> None:
        acc = out.setdefault((kind, key, start, end), [0, 0])
        acc[0] += 1
        acc[1] += rid

    by_key: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for rid, key, ts in events:
        if rid in dropped:
            continue
        n = math.floor(ts / tumble)
        add("tumbling", key, n * tumble, n * tumble + tumble, rid)
        if slide is not None:
            size, step = slide
            n = math.floor(ts / step)
            while n * step + size > ts:
                add("sliding", key, n * step, n * step + size, rid)
                n -= 1
        by_key[key].append((ts, rid))
    for key, items in by_key.items():
        items.sort()
        start: float | None = None
        end = -math.inf
        ids: list[int] = []
        for ts, rid in items + [(math.inf, -1)]:
            if start is not None and ts >= end:
                out[("session", key, start, end)] = [len(ids), sum(ids)]
                start = None
            if ts == math.inf:
                break
            if start is None:
                start, end, ids = ts, ts + gap, []
            end = max(end, ts + gap)
            ids.append(rid)
    return {k: (v[0], v[1]) for k, v in out.items()}
