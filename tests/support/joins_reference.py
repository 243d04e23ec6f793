"""Two event streams, the three two-input operators over them, and their plain-Python reference.

Used by the join equivalence tests (in-process) and the join chaos job (``onceflow run``).

How the input makes every result independent of batching and interleaving
--------------------------------------------------------------------------
Each side is one ordered stream read by one subtask: record ``i`` has
``ts = i * dt - U(0, max_delay)`` and its side's timestamp assigner has
``max_delay``, so a record is never behind its own side's watermark, hence never
behind the join's (the minimum of both sides'). So no record is ever late, every
pair within an interval meets before either expires, every window sees all of
its records, and each operator's committed output is a fixed multiset:

* ``connect``: a :class:`BucketTotals` co-process function sums each key's records of
  both sides per ``bucket``-second bucket in shared state and emits
  ``("connect", key, bucket_start, n_left, sum_left, n_right, sum_right)`` from
  an event-time timer at the bucket's end;
* ``interval_join``: ``("interval", left_id, right_id)`` for every pair of one key
  with ``left.ts + lower <= right.ts <= left.ts + upper``;
* ``window_join``: ``("window", key, start, n_left, sum_left, n_right, sum_right)``
  per key and tumbling window in which either side had a record.

A record is ``(id, key, ts, value)``.

Poison (``JoinWorkload.poison > 0``, with ``on_error="dead_letter"``): the
``connect`` function raises, before it writes any state, for a record whose
value is a multiple of ``poison`` (a dead letter naming its input and key; the
bucket totals leave it out), and the ``window_join`` function raises for a
window whose first left record's value is a multiple of ``poison`` (one dead
letter for the window; no output for it). Both depend on nothing but the
record or the window's fixed content, so the letters are a fixed set too.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from onceflow import Job, KeyedCoProcessFunction, TumblingEventTimeWindows

Event = tuple[int, int, float, int]


@dataclass(frozen=True)
class JoinWorkload:
    """The parameters of both streams and of the three operators."""

    n: int = 20_000
    """Records per side."""
    n_keys: int = 50
    seed: int = 20261205
    dt: float = 0.01
    max_delay: float = 0.5
    lower: float = -1.0
    upper: float = 2.0
    window: float = 5.0
    bucket: float = 10.0
    poison: int = 0
    """Records (connect) and windows (window_join) that make the function raise; 0: none."""

    def events(self) -> tuple[list[Event], list[Event]]:
        """Return the left and right streams, each in arrival order."""
        rng = random.Random(self.seed)
        sides = []
        for side in range(2):
            events = []
            for i in range(self.n):
                ts = round(i * self.dt - rng.uniform(0, self.max_delay), 6)
                events.append((side * 10_000_000 + i, rng.randrange(self.n_keys), ts, rng.randrange(1000)))
            sides.append(events)
        return sides[0], sides[1]

    def reference(self, lefts: list[Event], rights: list[Event]) -> Counter:
        """Return the multiset of every operator's output, computed directly."""
        out: Counter = Counter()
        buckets: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        windows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for side, events in ((0, lefts), (1, rights)):
            for _, key, ts, value in events:
                w = windows[key, math.floor(ts / self.window) * self.window]
                if len(w) == 4:
                    w.append(value if side == 0 else None)
                elif side == 0 and w[4] is None:
                    w[4] = value
                w[2 * side] += 1
                w[2 * side + 1] += value
                if self.poisoned(value):
                    continue
                b = buckets[key, math.floor(ts / self.bucket) * self.bucket]
                b[2 * side] += 1
                b[2 * side + 1] += value
        for (key, start), totals in buckets.items():
            out["connect", key, start, *totals] += 1
        for (key, start), totals in windows.items():
            if not self.poisoned(totals[4]):
                out["window", key, start, *totals[:4]] += 1
        by_key: dict[int, list[Event]] = defaultdict(list)
        for r in rights:
            by_key[r[1]].append(r)
        for lid, key, lts, _ in lefts:
            for rid, _, rts, _ in by_key[key]:
                if lts + self.lower <= rts <= lts + self.upper:
                    out["interval", lid, rid] += 1
        return out

    def poisoned(self, value: int | None) -> bool:
        """Whether a record's value (a window's first left value) makes the function raise."""
        return self.poison > 0 and value is not None and value % self.poison == 0

    def letters(self, lefts: list[Event], rights: list[Event]) -> Counter:
        """Return the multiset of dead letters' identities: ``("buckets", input, key, id)`` per poisoned
        record, ``("window", key, start)`` per poisoned window."""
        out: Counter = Counter()
        first_left: dict[tuple, int] = {}
        for side, events in ((0, lefts), (1, rights)):
            for rid, key, ts, value in events:
                if self.poisoned(value):
                    out["buckets", side + 1, key, rid] += 1
                if side == 0:
                    first_left.setdefault((key, math.floor(ts / self.window) * self.window), value)
        for (key, start), value in first_left.items():
            if self.poisoned(value):
                out["window", key, start] += 1
        return out


def letter_identity(line: str) -> tuple:
    """The identity of a committed dead letter of the poisoned join job (see ``JoinWorkload.letters``)."""
    letter = json.loads(line)
    key = ast.literal_eval(letter["key"])
    if letter["operator"] == "buckets":
        record = ast.literal_eval(letter["record"])
        assert key == record[1], letter
        return ("buckets", letter["input"], key, record[0])
    # (key, Window(start, end), lefts, rights), its repr cut at 1,000 characters
    found = re.match(r"\((-?\d+), Window\(([^,]+), ", letter["record"])
    assert found is not None and int(found[1]) == key, letter
    return ("window", key, float(found[2]))


class BucketTotals(KeyedCoProcessFunction):
    """Sum both sides per key and bucket in shared state; emit the totals when the bucket ends.

    With ``poison > 0`` a record whose value is a multiple of it raises before any state write.
    """

    def __init__(self, bucket: float, poison: int = 0) -> None:
        self.bucket = bucket
        self.poison = poison

    def _add(self, event: Event, ctx: Any, side: int) -> None:
        if self.poison and event[3] % self.poison == 0:
            msg = f"poisoned value {event[3]}"
            raise ValueError(msg)
        start = math.floor(event[2] / self.bucket) * self.bucket
        totals = list(ctx.map_state("totals").get(start, (0, 0, 0, 0)))
        totals[2 * side] += 1
        totals[2 * side + 1] += event[3]
        ctx.map_state("totals").put(start, tuple(totals))
        ctx.timers.register_event_time(math.nextafter(start + self.bucket, -math.inf))

    def process_element1(self, value: Event, ctx: Any) -> None:
        self._add(value, ctx, 0)

    def process_element2(self, value: Event, ctx: Any) -> None:
        self._add(value, ctx, 1)

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        totals = ctx.map_state("totals")
        out = []
        for start in sorted(totals.keys()):
            if math.nextafter(start + self.bucket, -math.inf) <= timestamp:
                out.append(("connect", ctx.key, start, *totals.get(start)))
                totals.remove(start)
        return out


def _window_totals(key: int, window: Any, lefts: list, rights: list, poison: int = 0) -> list:
    if poison and lefts and lefts[0][3] % poison == 0:
        msg = f"poisoned window of key {key}"
        raise ValueError(msg)
    return [
        (
            "window",
            key,
            window.start,
            len(lefts),
            sum(e[3] for e in lefts),
            len(rights),
            sum(e[3] for e in rights),
        )
    ]


def join_streams(w: JoinWorkload, job: Job, left_source: Any, right_source: Any, parse: Any = None) -> Any:
    """The three two-input operators over the two sources, as one stream; every stateful uid set.

    ``parse`` (optional) turns a batch of source records into events, e.g. CSV
    lines read from files; by default each record is parsed on its own.
    """
    sides = []
    for label, source in (("left", left_source), ("right", right_source)):
        stream = job.source(source, name=label, uid=label, parallelism=1)
        if parse is None:
            stream = stream.map(_event, name=f"{label}-parse", parallelism=1)
        else:
            stream = stream.map_batches(parse, name=f"{label}-parse", parallelism=1)
        sides.append(
            stream.assign_timestamps(lambda e: e[2], max_delay=w.max_delay, name=f"{label}-ts", parallelism=1)
        )
    left, right = (s.key_by(lambda e: e[1]) for s in sides)
    on_error = "dead_letter" if w.poison else "fail"
    connected = left.connect(right).process(
        BucketTotals(w.bucket, w.poison), name="buckets", uid="buckets", on_error=on_error
    )
    interval = left.interval_join(right, lower=w.lower, upper=w.upper).process(
        lambda a, b: [("interval", a[0], b[0])], name="interval", uid="interval"
    )
    windowed = left.window_join(right, TumblingEventTimeWindows(w.window)).process(
        functools.partial(_window_totals, poison=w.poison), name="window", uid="window", on_error=on_error
    )
    return connected.union(interval, windowed)


def joins_job(w: JoinWorkload, left_source: Any, right_source: Any, sink: Any, name: str = "joins") -> Job:
    """:func:`join_streams` into one sink."""
    job = Job(name)
    join_streams(w, job, left_source, right_source).sink(sink, name="out", uid="out")
    return job


def output_line(record: tuple) -> str:
    """One output record as a line (what the chaos job commits): its fields joined by ``|``."""
    return "|".join(map(str, record))


def write_events(directory: Any, events: list[Event], files: int) -> None:
    """Write events as CSV lines ``id,key,ts,value`` into ``files`` files, read back in order."""
    directory.mkdir(parents=True, exist_ok=True)
    per = math.ceil(len(events) / files)
    for f in range(files):
        chunk = events[f * per : (f + 1) * per]
        (directory / f"events-{f:02d}.csv").write_text(
            "".join(f"{i},{k},{t!r},{v}\n" for i, k, t, v in chunk)
        )


def _event(record: Any) -> Event:
    """Parse a record: a tuple as is, or a CSV line ``id,key,ts,value`` (file sources)."""
    if isinstance(record, str):
        i, key, ts, value = record.split(",")
        return (int(i), int(key), float(ts), int(value))
    return tuple(record)  # type: ignore[return-value]
