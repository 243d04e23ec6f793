"""connect, interval_join and window_join over two event streams equal a plain-Python reference:
uninterrupted, with checkpoints every 50 ms, and with a crash and restore, at parallelism 1 and
2, under both executors (the input and why it is deterministic: tests/support/joins_reference.py).
"""

from __future__ import annotations

from collections import Counter

import pytest

from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, TestingSink, TestingSource
from tests.support.joins_reference import JoinWorkload, joins_job, letter_identity

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
        assert result.checkpoints_completed > 2, result
    got = Counter(sink.committed)
    missing, unexpected = expected - got, got - expected
    assert (sum(missing.values()), sum(unexpected.values())) == (0, 0), (
        list(missing)[:3],
        list(unexpected)[:3],
    )
    assert sink.pending == {}


POISONED = JoinWorkload(n=6_000, poison=97)


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("mode", ["uninterrupted", "crash"])
def test_failing_join_functions_send_each_record_or_window_to_the_dead_letters_once(
    parallelism, mode, executor
):
    """connect and window_join with on_error="dead_letter": a poisoned record (connect: naming its
    input and key) or window (window_join) is one dead letter; the rest equals the reference."""
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
