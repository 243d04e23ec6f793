"""Window outputs carry ``window.max_timestamp`` (reduce, aggregate and process windows) and a keyed
process function's outputs their record's or timer's time: a window after them, and ``window_all``,
on both executors and at parallelism 1 and 2, against plain-Python counts."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from onceflow import (
    Job,
    JobDefinitionError,
    KeyedProcessFunction,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    Window,
)
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import TestingSink, TestingSource

SEED = 12


def _events(n: int = 3000) -> list[tuple[str, float]]:
    rng = random.Random(SEED)
    return [(f"k{rng.randint(0, 9)}", round(i * 0.01 + rng.uniform(0, 0.5), 3)) for i in range(n)]


def _count(acc: int, record: object) -> int:
    return acc + 1


def _sum(a: int, b: int) -> int:
    return a + b


def _zero() -> int:
    return 0


def _same(acc: int) -> int:
    return acc


def _bigger(a: tuple, b: tuple) -> tuple:
    return max(a, b, key=lambda r: (r[2], r[0]))


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_window_after_a_window_and_window_all_use_the_window_end_as_event_time(executor, parallelism):
    """Per key, count in sliding windows of 4 s every 2 s; then the busiest key per window
    (window_all over a tumbling window of the slide), with no assign_timestamps in between."""
    events = _events()
    job = Job("chained")
    counts = (
        job.source(TestingSource(events, batch_size=100))
        .assign_timestamps(lambda e: e[1], max_delay=0.5)
        .key_by(lambda e: e[0])
        .window(SlidingEventTimeWindows(4.0, 2.0))
        .aggregate(_count, _sum, _same, _zero, uid="counts")
    )
    sink = TestingSink()
    (counts.window_all(TumblingEventTimeWindows(2.0)).reduce(_bigger, uid="top").sink(sink, uid="out"))
    run_job_for_test(job, executor=executor, parallelism=parallelism)

    per_window: Counter = Counter()
    for key, t in events:
        start = (t // 2.0) * 2.0
        for s in (start, start - 2.0):
            per_window[(key, Window(s, s + 4.0))] += 1
    best: dict[Window, tuple] = {}
    for (key, window), count in per_window.items():
        slot = Window(window.end - 2.0, window.end)  # the tumbling window holding window.max_timestamp
        cand = (key, window, count)
        if slot not in best or (count, key) > (best[slot][2], best[slot][0]):
            best[slot] = cand
    expected = sorted((slot, rec) for slot, rec in best.items())
    assert sorted(sink.committed) == expected


def test_window_all_refuses_a_parallelism_other_than_one_and_a_stream_without_timestamps():
    job = Job("bad")
    src = job.source(TestingSource([1, 2]))
    with pytest.raises(JobDefinitionError, match="window_all.*assign_timestamps"):
        src.window_all(TumblingEventTimeWindows(1.0))
    stamped = src.assign_timestamps(float)
    with pytest.raises(JobDefinitionError, match="parallelism must be 1"):
        stamped.window_all(TumblingEventTimeWindows(1.0)).reduce(max, parallelism=2)


def _pair_count(key: str, window: Window, values: list) -> list:
    return [(key, len(values))]


def _window_summary(window: Window, values: list) -> list:
    return [(window.start, sum(c for _, c in values), len(values))]


def _add_count(a: tuple, b: tuple) -> tuple:
    return (a[0], a[1] + b[1])


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_process_window_output_carries_its_window_end_into_the_next_windows(executor, parallelism):
    """A keyed process window (2 s) feeds, without assign_timestamps, a window_all process window
    (4 s) and a keyed reduce window (6 s); both equal plain-Python counts of the window ends."""
    events = _events()
    job = Job("chained-process")
    per_key = (
        job.source(TestingSource(events, batch_size=100))
        .assign_timestamps(lambda e: e[1], max_delay=0.5)
        .key_by(lambda e: e[0])
        .window(TumblingEventTimeWindows(2.0))
        .process(_pair_count, uid="per-key")
    )
    overall, per_key_6s = TestingSink(), TestingSink()
    per_key.window_all(TumblingEventTimeWindows(4.0)).process(_window_summary, uid="all").sink(
        overall, uid="o"
    )
    (
        per_key.key_by(lambda kc: kc[0])
        .window(TumblingEventTimeWindows(6.0))
        .reduce(_add_count, uid="six")
        .sink(per_key_6s, uid="s")
    )
    run_job_for_test(job, executor=executor, parallelism=parallelism)

    counts: Counter = Counter((key, (t // 2.0) * 2.0) for key, t in events)
    summary: dict[float, list[int]] = {}
    six: Counter = Counter()
    for (key, start), c in counts.items():
        end_time = Window(start, start + 2.0).max_timestamp  # the stamp of the first window's output
        s4 = (end_time // 4.0) * 4.0
        summary.setdefault(s4, [0, 0])
        summary[s4][0] += c
        summary[s4][1] += 1
        six[key, (end_time // 6.0) * 6.0] += c
    assert sorted(overall.committed) == sorted((s, total, n) for s, (total, n) in summary.items())
    assert sorted(per_key_6s.committed) == sorted(
        (key, Window(s, s + 6.0), (key, c)) for (key, s), c in six.items()
    )


class FirstPerSecond(KeyedProcessFunction):
    """Emits a key's first record of each second at once; at each second's end, how many came."""

    def process_element(self, event: tuple, ctx: Any) -> list:
        second = math.floor(event[1])
        seen = ctx.map_state("seen")
        n = seen.get(second, 0)
        seen.put(second, n + 1)
        ctx.timers.register_event_time(second + 1.0)
        return [("first", event[0])] if n == 0 else []

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        seen = ctx.map_state("seen")
        n = seen.get(timestamp - 1.0)
        seen.remove(timestamp - 1.0)
        return [("count", n)]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_keyed_process_function_output_carries_its_record_or_timer_time_into_a_window(
    executor, parallelism
):
    """Outputs of process_element are at their record's time, of on_timer at the timer's: a
    window_all per 5 s after it counts them like plain Python does."""
    events = _events()
    job = Job("process-then-window")
    sink = TestingSink()
    (
        job.source(TestingSource(events, batch_size=100))
        .assign_timestamps(lambda e: e[1], max_delay=0.5)
        .key_by(lambda e: e[0])
        .process(FirstPerSecond(), uid="firsts")
        .window_all(TumblingEventTimeWindows(5.0))
        .process(lambda window, values: [(window.start, *sorted(Counter(v[0] for v in values).items()))])
        .sink(sink, uid="out")
    )
    run_job_for_test(job, executor=executor, parallelism=parallelism)

    firsts: dict[tuple, float] = {}
    for key, t in events:  # arrival order: a key's first record of a second is the earliest to arrive
        firsts.setdefault((key, math.floor(t)), t)
    times = [("first", t) for t in firsts.values()] + [("count", s + 1.0) for _, s in firsts]
    per_window: dict[float, Counter] = {}
    for kind, t in times:
        per_window.setdefault(TumblingEventTimeWindows(5.0).assign(t)[0].start, Counter())[kind] += 1
    expected = [(start, *sorted(c.items())) for start, c in per_window.items()]
    assert sorted(sink.committed) == sorted(expected)
