"""The window combiner folds records per key and slice before the key exchange; partials merge downstream."""

from __future__ import annotations

import math

import pytest

from onceflow.operators.base import Capability
from onceflow.operators.window_combine import WindowCombiner, combiner_slices, partial_key, partial_time
from onceflow.operators.window_slices import window_operator
from onceflow.operators.windows import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
    WindowOperator,
    record_folds,
)


def _combiner(length: float = 10.0, offset: float = 0.0) -> WindowCombiner:
    first, add = record_folds("aggregate", add_fn=lambda acc, r: acc + r[1], init_fn=lambda: 0)
    return WindowCombiner(
        length=length, offset=offset, key_fn=lambda r: r[0], timestamp_fn=lambda r: r[2], first=first, add=add
    )


def test_records_fold_per_key_and_slice_and_a_slice_goes_out_when_the_watermark_passes_its_end():
    c = _combiner()
    assert Capability.HOLDS_RECORDS in c.capabilities
    assert c.process_batch([("a", 1, 1.0), ("b", 2, 2.0), ("a", 3, 9.5), ("a", 4, 10.0)]) == []
    assert c.held_partials == 3
    assert c.on_watermark(9.99) == []
    out = c.on_watermark(10.0)
    assert sorted((partial_key(p), p[2]) for p in out) == [("a", 4), ("b", 2)]
    assert all(0.0 <= partial_time(p) < 10.0 for p in out)
    assert c.held_partials == 1
    assert c.snapshot_state(1) is None


def test_a_record_of_a_slice_that_already_ended_goes_out_at_once_as_its_own_partial():
    c = _combiner()
    c.on_watermark(25.0)
    assert c.process_batch([("a", 5, 12.0), ("a", 6, 26.0)]) == [("a", 12.0, 5)]
    assert c.held_partials == 1


def test_before_a_barrier_and_at_the_end_everything_held_goes_out_oldest_slice_first():
    c = _combiner()
    c.process_batch([("a", 1, 31.0), ("a", 2, 1.0), ("b", 3, 2.0)])
    out = c.prepare_snapshot_pre_barrier()
    assert [(p[0], p[2]) for p in out] == [("a", 2), ("b", 3), ("a", 1)]
    assert c.held == {} and c.prepare_snapshot_pre_barrier() == []
    c.process_batch([("z", 9, 50.0)])
    assert [p[2] for p in c.on_watermark(math.inf)] == [9]
    assert c.finish() == []


def test_slices_are_the_tumbling_window_or_the_sliding_operators_slice_and_none_where_windows_merge():
    assert combiner_slices(TumblingEventTimeWindows(10.0, offset=3.0)) == (10.0, 3.0)
    assert combiner_slices(SlidingEventTimeWindows(6.0, 4.0)) == (2.0, 0.0)
    assert combiner_slices(SlidingEventTimeWindows(5.0, 5.0, offset=1.0)) == (5.0, 1.0)
    assert combiner_slices(EventTimeSessionWindows(3.0)) is None
    assert combiner_slices(TumblingProcessingTimeWindows(3.0)) is None
    assert combiner_slices(SlidingEventTimeWindows(1.0, 1 / 3)) is None  # too many slices


@pytest.mark.parametrize(
    "assigner",
    [TumblingEventTimeWindows(10.0), SlidingEventTimeWindows(10.0, 5.0)],
    ids=["tumbling", "sliding"],
)
@pytest.mark.parametrize("kind", ["reduce", "aggregate"])
def test_a_window_of_partials_emits_what_the_window_of_the_records_emits(assigner, kind):
    records = [(f"k{i % 3}", i, i * 0.7) for i in range(60)]
    if kind == "reduce":
        fns = {"reduce_fn": lambda a, b: (a[0], a[1] + b[1], max(a[2], b[2]))}
        folds = record_folds("reduce", reduce_fn=fns["reduce_fn"])
    else:
        fns = {
            "add_fn": lambda acc, r: (acc[0] + 1, acc[1] + r[1]),
            "merge_fn": lambda a, b: (a[0] + b[0], a[1] + b[1]),
            "result_fn": lambda acc: acc,
            "init_fn": lambda: (0, 0),
        }
        folds = record_folds("aggregate", add_fn=fns["add_fn"], init_fn=fns["init_fn"])
    plain = window_operator(assigner, kind=kind, timestamp_fn=lambda r: r[2], **fns)
    merged = window_operator(assigner, kind=kind, timestamp_fn=partial_time, pre_aggregated=True, **fns)
    slices = combiner_slices(assigner)
    assert slices is not None
    combiners = [
        WindowCombiner(
            length=slices[0],
            offset=slices[1],
            key_fn=lambda r: r[0],
            timestamp_fn=lambda r: r[2],
            first=folds[0],
            add=folds[1],
        )
        for _ in range(2)
    ]
    want: list = []
    got: list = []
    for at in range(0, 60, 10):
        batch = records[at : at + 10]
        want += plain.process_keyed_batch(batch, [r[0] for r in batch])
        for i, combiner in enumerate(combiners):  # two upstream subtasks, each half of the records
            part = combiner.process_batch(batch[i::2])
            part += combiner.prepare_snapshot_pre_barrier() if at == 20 else []
            got += merged.process_keyed_batch(part, [partial_key(p) for p in part])
        wm = batch[-1][2] - 1.0
        want += plain.on_watermark(wm)
        for combiner in combiners:
            part = combiner.on_watermark(wm)
            got += merged.process_keyed_batch(part, [partial_key(p) for p in part])
        got += merged.on_watermark(wm)
    want += plain.on_watermark(math.inf)
    for combiner in combiners:
        part = combiner.on_watermark(math.inf)
        got += merged.process_keyed_batch(part, [partial_key(p) for p in part])
    got += merged.on_watermark(math.inf)
    assert sorted(got) == sorted(want)
    assert len(want) > 10


def test_only_reduce_and_aggregate_windows_without_merging_take_partials():
    with pytest.raises(ValueError, match="take partials"):
        WindowOperator(
            TumblingEventTimeWindows(1.0),
            kind="process",
            timestamp_fn=partial_time,
            process_fn=lambda k, w, v: v,
            pre_aggregated=True,
        )
    with pytest.raises(ValueError, match="take partials"):
        WindowOperator(
            EventTimeSessionWindows(1.0),
            kind="reduce",
            timestamp_fn=partial_time,
            reduce_fn=lambda a, b: a,
            pre_aggregated=True,
        )
