"""Window outputs carry ``window.max_timestamp``: a window after a window, and ``window_all``, on both
executors and at parallelism 1 and 2, against plain-Python counts."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from onceflow import Job, JobDefinitionError, SlidingEventTimeWindows, TumblingEventTimeWindows, Window
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
