"""connect, interval_join and window_join over two event streams equal a plain-Python reference:
uninterrupted, with checkpoints every 50 ms, and with a crash and restore, at parallelism 1 and
2, under both executors (the input and why it is deterministic: tests/support/joins_reference.py).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from onceflow import Job, TumblingEventTimeWindows, Window
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, TestingSink, TestingSource
from tests.support.joins_reference import BucketTotals, JoinWorkload, joins_job, letter_identity

WORKLOAD = JoinWorkload(n=20_000)
BATCH = 200


@pytest.fixture(scope="module")
def streams():
    lefts, rights = WORKLOAD.events()
    expected = WORKLOAD.reference(lefts, rights)
    kinds = Counter(k[0] for k in expected.elements())
    assert min(kinds.values()) > 1_000, kinds
    return lefts, rights, expected


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("mode", ["uninterrupted", "crash"])
def test_joins_commit_the_reference(streams, parallelism, mode, executor):
    lefts, rights, expected = streams
    right_items: list = list(rights)
    if mode == "crash":
        right_items.insert(len(rights) * 3 // 5, Crash())
    sink = TestingSink()
    job = joins_job(
        WORKLOAD,
        TestingSource(lefts, batch_size=BATCH),
        TestingSource(right_items, batch_size=BATCH),
        sink,
    )
    interval = 3600 if mode == "uninterrupted" else 0.05
    result = run_job_for_test(
        job, parallelism=parallelism, checkpoint_interval=interval, executor=executor, batch_size=BATCH
    )
    assert result.restarts == (1 if mode == "crash" else 0)
    if mode == "crash":
        # the final checkpoint and at least one other (how many fit before the crash depends on the machine)
        assert result.checkpoints_completed >= 2, result
    got = Counter(sink.committed)
    missing, unexpected = expected - got, got - expected
    assert (sum(missing.values()), sum(unexpected.values())) == (0, 0), (
        list(missing)[:3],
        list(unexpected)[:3],
    )
    assert sink.pending == {}


POISONED = JoinWorkload(n=6_000, poison=97)


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("mode", ["crash"])
def test_failing_join_functions_send_each_record_or_window_to_the_dead_letters_once(
    parallelism, mode, executor
):
    """connect and window_join with on_error="dead_letter": a poisoned record (connect: naming its
    input and key) or window (window_join) is one dead letter; the rest equals the reference, also
    across a crash and restore (kill -9 with rescaling: tests/chaos/test_joins_chaos.py)."""
    lefts, rights = POISONED.events()
    expected, letters = POISONED.reference(lefts, rights), POISONED.letters(lefts, rights)
    assert {k[1] for k in letters if k[0] == "buckets"} == {1, 2} and any(k[0] == "window" for k in letters)
    right_items: list = list(rights)
    if mode == "crash":
        right_items.insert(len(rights) * 3 // 5, Crash())
    sink, dead = TestingSink(), TestingSink()
    job = joins_job(
        POISONED, TestingSource(lefts, batch_size=BATCH), TestingSource(right_items, batch_size=BATCH), sink
    )
    job.dead_letters(dead, name="dead", uid="dead")
    result = run_job_for_test(job, parallelism=parallelism, executor=executor, batch_size=BATCH)
    assert result.restarts == (1 if mode == "crash" else 0)
    assert Counter(sink.committed) == expected
    assert Counter(letter_identity(line) for line in dead.committed) == letters


STAMPED = JoinWorkload(n=6_000)


def _count(acc: int, record: object) -> int:
    return acc + 1


def _sum(a: int, b: int) -> int:
    return a + b


def _zero() -> int:
    return 0


def _same(acc: int) -> int:
    return acc


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_window_after_each_join_uses_the_times_the_join_gave_its_outputs(parallelism, executor):
    """Without a new assign_timestamps, a window_all count follows each two-input operator: an
    interval-join pair is at the later of its two times, a window join's output at the window's
    max_timestamp, a co-process timer's output at the timer's time (plain-Python reference)."""
    w = STAMPED
    lefts, rights = w.events()
    job = Job("stamped-joins")
    sides = []
    for label, events in (("left", lefts), ("right", rights)):
        sides.append(
            job.source(TestingSource(events, batch_size=BATCH), name=label, parallelism=1)
            .assign_timestamps(lambda e: e[2], max_delay=w.max_delay, name=f"{label}-ts", parallelism=1)
            .key_by(lambda e: e[1])
        )
    left, right = sides
    joined = {
        "interval": left.interval_join(right, lower=w.lower, upper=w.upper).process(
            lambda a, b: [(a[0], b[0])], uid="interval"
        ),
        "window": left.window_join(right, TumblingEventTimeWindows(w.window)).process(
            lambda key, window, lefts, rights: [(key, window.start)], uid="window"
        ),
        "connect": left.connect(right).process(BucketTotals(w.bucket), uid="buckets"),
    }
    sinks = {}
    for label, stream in joined.items():
        sinks[label] = TestingSink()
        (
            stream.window_all(TumblingEventTimeWindows(20.0))
            .aggregate(_count, _sum, _same, _zero, uid=f"{label}-count")
            .map(lambda wc: (wc[0].start, wc[1]))
            .sink(sinks[label], uid=f"{label}-out")
        )
    run_job_for_test(job, parallelism=parallelism, executor=executor, batch_size=BATCH)

    def per_20s(times: list[float]) -> Counter:
        # the assigner, not t // 20: the max_timestamp of a window ending at 0.0 is -5e-324
        return Counter(TumblingEventTimeWindows(20.0).assign(t)[0].start for t in times)

    by_key: dict[int, list] = {}
    for r in rights:
        by_key.setdefault(r[1], []).append(r)
    pair_times = [
        max(lts, rts)
        for _, key, lts, _ in lefts
        for _, _, rts, _ in by_key.get(key, [])
        if lts + w.lower <= rts <= lts + w.upper
    ]
    windows = {(e[1], math.floor(e[2] / w.window) * w.window) for e in lefts + rights}
    buckets = {(e[1], math.floor(e[2] / w.bucket) * w.bucket) for e in lefts + rights}
    expected = {
        "interval": per_20s(pair_times),
        "window": per_20s([Window(s, s + w.window).max_timestamp for _, s in windows]),
        "connect": per_20s([Window(s, s + w.bucket).max_timestamp for _, s in buckets]),
    }
    for label, sink in sinks.items():
        assert Counter(dict(sink.committed)) == expected[label], label
