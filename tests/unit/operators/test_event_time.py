"""TimestampAssigner driven by hand: watermarks, bad timestamps, idleness, snapshot and restore."""

from __future__ import annotations

import math

import pytest
from event_time_harness import Harness, restored_for

from onceflow import (
    EventTimeSessionWindows,
    Job,
    JobDefinitionError,
    TimestampAssigner,
    TumblingEventTimeWindows,
)
from onceflow.operators.base import Capability
from onceflow.operators.event_time import check_timestamp, frozen_copy
from onceflow.operators.testing import FakeClock, TestingSource


def assigner(context_factory, max_delay=0.0, idle_timeout=None, clock=None, **kw) -> Harness:
    extra = {"clock": clock.now} if clock is not None else {}
    op = TimestampAssigner(lambda r: r["ts"], max_delay=max_delay, idle_timeout=idle_timeout, **extra)
    return Harness(op, context_factory, **kw)


def test_bounded_out_of_orderness_watermark_trails_the_largest_timestamp(context_factory):
    h = assigner(context_factory, max_delay=5.0)
    assert h.op.emitted_watermark == -math.inf
    records = [{"ts": 10.0}, {"ts": 12}, {"ts": 8.5}]
    assert h.feed(records) == records  # records pass through unchanged
    assert h.op.emitted_watermark == 7.0
    h.feed([{"ts": 3.0}, {"ts": 11.0}])  # older records never move it back
    assert h.op.emitted_watermark == 7.0
    h.feed([{"ts": 20.0}])
    assert h.op.emitted_watermark == 15.0
    h.feed([])
    assert h.op.emitted_watermark == 15.0


def test_monotonous_timestamps_watermark_is_the_largest(context_factory):
    h = assigner(context_factory)
    h.feed([{"ts": 1}, {"ts": 2}, {"ts": 3}])
    assert h.op.emitted_watermark == 3.0
    assert Capability.PROCESSING_TIME not in h.op.capabilities  # no idle timeout: no ticks needed


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("12:00", TypeError),
        (None, TypeError),
        (True, TypeError),
        (float("nan"), ValueError),
        ([1], TypeError),
    ],
)
def test_a_non_number_timestamp_names_the_operator_and_shows_the_record(context_factory, value, error):
    h = Harness(TimestampAssigner(lambda r: r["ts"]), context_factory)
    record = {"user": "ann", "ts": value}
    with pytest.raises(error) as info:
        h.feed([{"user": "bob", "ts": 1.0}, record])
    message = str(info.value)
    assert "assign_timestamps" in message
    assert repr(record) in message


def test_a_timestamp_function_that_raises_names_the_operator_and_shows_the_record(context_factory):
    h = Harness(TimestampAssigner(lambda r: r["ts"]), context_factory)
    match = r"assign_timestamps: the timestamp function raised KeyError"
    with pytest.raises(ValueError, match=match) as info:
        h.feed([{"user": "ann"}])
    assert "{'user': 'ann'}" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_watermark_is_snapshotted_and_restored_into_a_fresh_operator(context_factory):
    h = assigner(context_factory, max_delay=2.0)
    h.feed([{"ts": 100.0}])
    snap = h.snapshot(1)
    h.notify(1)
    h.feed([{"ts": 500.0}])  # after the checkpoint: lost with the crash

    fresh = assigner(context_factory, max_delay=2.0, restored=restored_for([snap], 1))
    assert fresh.op.emitted_watermark == 98.0
    fresh.feed([{"ts": 50.0}])  # replayed older records do not move it back
    assert fresh.op.emitted_watermark == 98.0
    fresh.feed([{"ts": 150.0}])
    assert fresh.op.emitted_watermark == 148.0


def test_restore_at_the_same_parallelism_takes_its_own_watermark_and_a_rescale_the_smallest(context_factory):
    snaps = []
    for index, ts in enumerate((100.0, 40.0)):
        h = assigner(context_factory, index=index, parallelism=2)
        h.feed([{"ts": ts}])
        snaps.append(h.snapshot(3))
    same = [
        assigner(context_factory, index=i, parallelism=2, restored=restored_for(snaps, 3, i, 2))
        for i in range(2)
    ]
    assert [h.op.emitted_watermark for h in same] == [100.0, 40.0]
    rescaled = assigner(context_factory, restored=restored_for(snaps, 3))
    assert rescaled.op.emitted_watermark == 40.0  # never declares another split's records late


def test_idle_after_the_timeout_without_records_and_active_again_with_the_next(context_factory):
    clock = FakeClock(1000.0)
    h = assigner(context_factory, max_delay=1.0, idle_timeout=5.0, clock=clock)
    assert Capability.PROCESSING_TIME in h.op.capabilities
    h.feed([{"ts": 10.0}])
    clock.advance(4.9)
    h.tick()
    assert not h.op.emitted_idle
    clock.advance(0.2)
    h.tick()
    assert h.op.emitted_idle
    assert h.op.emitted_watermark == 9.0  # idleness does not move event time
    h.feed([{"ts": 11.0}])
    assert not h.op.emitted_idle
    assert h.op.emitted_watermark == 10.0


def test_a_split_that_never_sends_a_record_goes_idle_too(context_factory):
    clock = FakeClock()
    h = assigner(context_factory, idle_timeout=1.0, clock=clock)
    clock.advance(1.0)
    h.tick()
    assert h.op.emitted_idle
    assert h.op.emitted_watermark == -math.inf


def test_check_timestamp_accepts_ints_and_floats_only():
    assert check_timestamp(3, "r", "op") == 3.0
    assert isinstance(check_timestamp(3, "r", "op"), float)
    with pytest.raises(TypeError, match="op: .*'3'.*record 'r'"):
        check_timestamp("3", "r", "op")


def test_frozen_copy_copies_only_what_can_change():
    immutable = (1, "a", 2.5, None)
    assert frozen_copy(immutable) is immutable
    mutable = {"a": [1]}
    copied = frozen_copy(mutable)
    mutable["a"].append(2)
    assert copied == {"a": [1]}


def test_event_time_windows_without_assign_timestamps_is_a_job_definition_error():
    job = Job("no-timestamps")
    keyed = job.source(TestingSource([1, 2, 3])).key_by(lambda r: r)
    with pytest.raises(JobDefinitionError, match="assign_timestamps"):
        keyed.window(TumblingEventTimeWindows(10.0))
    # map changes records, so the timestamp function does not survive it either
    stream = job.source(TestingSource([1]), name="src2").assign_timestamps(float).map(str)
    with pytest.raises(JobDefinitionError, match="assign_timestamps"):
        stream.key_by(len).window(EventTimeSessionWindows(gap=5.0))


@pytest.mark.parametrize(("max_delay", "idle_timeout"), [(-1.0, None), (0.0, 0.0)])
def test_assign_timestamps_rejects_negative_delay_and_non_positive_idle_timeout(max_delay, idle_timeout):
    job = Job("bad-params")
    with pytest.raises(JobDefinitionError, match="assign_timestamps"):
        job.source(TestingSource([1])).assign_timestamps(
            float, max_delay=max_delay, idle_timeout=idle_timeout
        )


def test_frozen_copy_shares_nested_tuples_of_immutables_and_copies_any_mutable_inside():
    nested = (7, ((1, "a", 2.5), (2, "b", None)), frozenset({1}))
    assert frozen_copy(nested) is nested
    inner = [1]
    holds_list = (7, ((1, inner),))
    copied = frozen_copy(holds_list)
    inner.append(2)
    assert copied == (7, ((1, [1]),))
