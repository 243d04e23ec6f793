"""WindowOperator driven by hand: assigners, firing, session merging, lateness, snapshot and restore."""

from __future__ import annotations

import logging
import math
import random

import pytest
from event_time_harness import Harness, restored_for

from onceflow import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
    Window,
)
from onceflow.operators.base import Capability, OperatorSnapshot
from onceflow.operators.testing import FakeClock
from onceflow.operators.window_slices import window_operator
from onceflow.operators.windows import WindowOperator

INF = math.inf


def ts(record):
    return record[1]


def key(record):
    return record[0]


def counting(assigner, lateness=0.0, late_tag="late", kind="aggregate"):
    """Count and sum per window: (key, window, (count, sum of values))."""
    if kind == "aggregate":
        return window_operator(
            assigner,
            kind="aggregate",
            timestamp_fn=ts,
            allowed_lateness=lateness,
            late_tag=late_tag,
            add_fn=lambda acc, r: (acc[0] + 1, acc[1] + r[2]),
            merge_fn=lambda a, b: (a[0] + b[0], a[1] + b[1]),
            result_fn=lambda acc: acc,
            init_fn=lambda: (0, 0),
        )
    if kind == "reduce":
        return window_operator(
            assigner,
            kind="reduce",
            timestamp_fn=ts,
            allowed_lateness=lateness,
            late_tag=late_tag,
            reduce_fn=lambda a, b: (a[0], max(a[1], b[1]), a[2] + b[2]),
        )
    return window_operator(
        assigner,
        kind="process",
        timestamp_fn=ts,
        allowed_lateness=lateness,
        late_tag=late_tag,
        process_fn=lambda k, w, values: [(k, w, (len(values), sum(v[2] for v in values)))],
    )


def harness(op, context_factory, **kw) -> Harness:
    return Harness(op, context_factory, key_fn=key, **kw)


# -- windows and assigners -------------------------------------------------------------------


def test_window_is_an_ordered_hashable_value():
    a, b = Window(0.0, 10.0), Window(5.0, 15.0)
    assert a < b and sorted([b, a]) == [a, b]
    assert {a: 1}[Window(0, 10)] == 1
    assert a.intersects(b) and not a.intersects(Window(10.0, 20.0))
    assert a.cover(b) == Window(0.0, 15.0)
    assert a.max_timestamp < 10.0 < math.nextafter(a.max_timestamp, INF) + 1e-12
    assert repr(a) == "Window(0.0, 10.0)"
    with pytest.raises(AttributeError):
        a.start = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 9.999, 10.0, -0.1, -10.0, 1e9 + 0.3, 123456.789])
def test_tumbling_assigns_the_one_window_that_contains_the_timestamp(t):
    for size, offset in ((10.0, 0.0), (0.1, 0.0), (10.0, 3.0), (7.5, 1.25)):
        (w,) = TumblingEventTimeWindows(size, offset).assign(t)
        assert w.start <= t < w.end
        assert w.end - w.start == pytest.approx(size)
    assert TumblingEventTimeWindows(10.0).assign(25.0) == (Window(20.0, 30.0),)
    assert TumblingEventTimeWindows(10.0, offset=3.0).assign(2.0) == (Window(-7.0, 3.0),)


def test_sliding_assigns_every_window_that_contains_the_timestamp():
    windows = SlidingEventTimeWindows(10.0, 5.0).assign(12.0)
    assert sorted(windows) == [Window(5.0, 15.0), Window(10.0, 20.0)]
    assert len(SlidingEventTimeWindows(10.0, 3.0).assign(7.0)) == 3  # starts 0, 3, 6
    for w in SlidingEventTimeWindows(10.0, 3.0).assign(7.0):
        assert w.start <= 7.0 < w.end
    assert SlidingEventTimeWindows(5.0, 10.0).assign(7.0) == ()  # gaps between windows


@pytest.mark.parametrize(
    "make",
    [
        lambda: TumblingEventTimeWindows(0),
        lambda: SlidingEventTimeWindows(10, -1),
        lambda: EventTimeSessionWindows("30"),
        lambda: TumblingProcessingTimeWindows(INF),
    ],
)
def test_assigners_refuse_sizes_that_are_not_positive_finite_numbers(make):
    with pytest.raises(ValueError, match="must be"):
        make()


# -- firing --------------------------------------------------------------------------------


def test_a_window_fires_once_when_the_watermark_reaches_its_end(context_factory):
    h = harness(counting(TumblingEventTimeWindows(10.0)), context_factory)
    assert h.feed([("a", 1.0, 1), ("a", 9.5, 2), ("b", 3.0, 5), ("a", 12.0, 7)]) == []
    assert h.watermark(9.99) == []
    assert sorted(h.watermark(10.0)) == [("a", Window(0.0, 10.0), (2, 3)), ("b", Window(0.0, 10.0), (1, 5))]
    assert h.op.open_windows == 1  # no allowed lateness: purged on firing
    assert h.watermark(15.0) == []
    assert h.finish() == [("a", Window(10.0, 20.0), (1, 7))]
    assert h.op.open_windows == 0


@pytest.mark.parametrize("kind", ["aggregate", "reduce", "process"])
def test_sliding_windows_count_each_record_in_every_window(context_factory, kind):
    h = harness(counting(SlidingEventTimeWindows(10.0, 5.0), kind=kind), context_factory)
    h.feed([("a", 1.0, 1), ("a", 6.0, 10), ("a", 11.0, 100)])
    out = h.finish()
    got = {(w.start, w.end): v if kind != "reduce" else None for _, w, v in out}
    assert sorted(got) == [(-5.0, 5.0), (0.0, 10.0), (5.0, 15.0), (10.0, 20.0)]
    if kind != "reduce":
        assert got == {
            (-5.0, 5.0): (1, 1),
            (0.0, 10.0): (2, 11),
            (5.0, 15.0): (2, 110),
            (10.0, 20.0): (1, 100),
        }
    else:
        sums = {(w.start, w.end): v[2] for _, w, v in out}
        assert sums == {(-5.0, 5.0): 1, (0.0, 10.0): 11, (5.0, 15.0): 110, (10.0, 20.0): 100}


def test_windows_fire_in_end_order_when_the_watermark_jumps(context_factory):
    h = harness(counting(TumblingEventTimeWindows(1.0)), context_factory)
    h.feed([("a", t, 1) for t in (5.5, 0.5, 3.5, 1.5)])
    assert [w.start for _, w, _ in h.watermark(100.0)] == [0.0, 1.0, 3.0, 5.0]


def test_windows_ending_together_fire_in_the_order_their_keys_first_arrived(context_factory):
    h = harness(counting(TumblingEventTimeWindows(10.0)), context_factory)
    h.feed([("c", 15.0, 1), ("b", 1.0, 1), ("c", 2.0, 1), ("a", 3.0, 1), ("b", 12.0, 1), ("a", 25.0, 1)])
    assert [(k, w.start) for k, w, _ in h.watermark(100.0)] == [
        ("b", 0.0),
        ("c", 0.0),
        ("a", 0.0),
        ("c", 10.0),
        ("b", 10.0),
        ("a", 20.0),
    ]


def test_allowed_lateness_keeps_a_fired_window_until_its_end_plus_lateness(context_factory):
    h = harness(counting(TumblingEventTimeWindows(10.0), lateness=5.0), context_factory)
    h.feed([("a", 1.0, 1), ("b", 2.0, 1), ("a", 11.0, 1)])
    assert [(k, w.start) for k, w, _ in h.watermark(10.0)] == [("a", 0.0), ("b", 0.0)]
    assert h.op.open_windows == 3  # fired, kept for late records until 15
    assert h.feed([("b", 9.0, 1)]) == [("b", Window(0.0, 10.0), (2, 2))]
    assert h.watermark(14.0) == []
    assert h.op.open_windows == 3
    assert [(k, w.start) for k, w, _ in h.watermark(15.0)] == []
    assert h.op.open_windows == 1  # [0, 10) purged for both keys, [10, 20) of "a" open
    assert h.finish() == [("a", Window(10.0, 20.0), (1, 1))]


# -- sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["aggregate", "reduce", "process"])
def test_sessions_merge_when_a_record_bridges_the_gap(context_factory, kind):
    h = harness(counting(EventTimeSessionWindows(gap=10.0), kind=kind), context_factory)
    h.feed([("a", 0.0, 1), ("a", 25.0, 2), ("b", 3.0, 4)])
    assert h.op.open_windows == 3
    h.feed([("a", 12.0, 8)])  # [12, 22) overlaps neither [0, 10) nor [25, 35)
    assert h.op.open_windows == 4
    h.feed([("a", 8.0, 16)])  # [8, 18) bridges [0, 10) and [12, 22)
    h.feed([("a", 17.0, 32)])  # [17, 27) bridges [0, 22) and [25, 35)
    assert h.op.open_windows == 2
    out = sorted(h.finish())
    assert [(k, w) for k, w, _ in out] == [("a", Window(0.0, 35.0)), ("b", Window(3.0, 13.0))]
    if kind == "reduce":
        assert [v[2] for _, _, v in out] == [1 + 2 + 8 + 16 + 32, 4]
    else:
        assert [v for _, _, v in out] == [(5, 59), (1, 4)]


def test_sessions_fire_at_their_end_and_a_later_record_opens_a_new_one(context_factory):
    h = harness(counting(EventTimeSessionWindows(gap=5.0)), context_factory)
    h.feed([("a", 1.0, 1), ("a", 4.0, 1)])
    assert h.watermark(8.9) == []
    assert h.watermark(9.0) == [("a", Window(1.0, 9.0), (2, 2))]
    h.feed([("a", 9.5, 1)])
    assert h.finish() == [("a", Window(9.5, 14.5), (1, 1))]


# -- lateness ------------------------------------------------------------------------------


def test_records_within_the_allowed_lateness_refire_the_window_and_later_ones_go_to_the_side_output(
    context_factory,
):
    h = harness(counting(TumblingEventTimeWindows(10.0), lateness=5.0), context_factory)
    h.feed([("a", 1.0, 1)])
    assert h.watermark(10.0) == [("a", Window(0.0, 10.0), (1, 1))]
    # late but within the lateness: the window updates and fires again at once
    assert h.feed([("a", 2.0, 10)]) == [("a", Window(0.0, 10.0), (2, 11))]
    assert h.op.open_windows == 1
    assert h.watermark(14.9) == []  # nothing new to emit
    assert h.watermark(15.0) == []  # purged at end + lateness, no second firing
    assert h.op.open_windows == 0
    late = ("a", 3.0, 100)
    assert h.feed([late, ("a", 16.0, 1)]) == []
    assert h.side == {"late": [late]}
    assert h.op.late_emitted == 1


def test_sliding_record_late_for_some_windows_only_updates_the_others(context_factory):
    h = harness(counting(SlidingEventTimeWindows(10.0, 5.0)), context_factory)
    h.watermark(10.0)
    h.feed([("a", 7.0, 1)])  # [0, 10) is late, [5, 15) is not
    assert h.side == {}
    assert h.finish() == [("a", Window(5.0, 15.0), (1, 1))]


def test_session_record_that_merges_into_a_live_session_is_not_late(context_factory):
    h = harness(counting(EventTimeSessionWindows(gap=10.0), lateness=0.0), context_factory)
    h.feed([("a", 20.0, 1)])
    h.watermark(29.0)
    h.feed([("a", 15.0, 1)])  # own window [15, 25) is late, but it merges into [20, 30)
    h.feed([("a", 5.0, 1)])  # [5, 15) touches nothing alive: too late
    assert h.side == {"late": [("a", 5.0, 1)]}
    assert h.finish() == [("a", Window(15.0, 30.0), (2, 2))]


def test_session_extended_after_firing_fires_again_as_the_merged_window(context_factory):
    h = harness(counting(EventTimeSessionWindows(gap=10.0), lateness=20.0), context_factory)
    h.feed([("a", 0.0, 1), ("a", 14.0, 1)])
    assert h.watermark(12.0) == [("a", Window(0.0, 10.0), (1, 1))]
    assert h.feed([("a", 5.0, 1)]) == []  # [5, 15) bridges into [0, 24): not due yet
    assert h.watermark(24.0) == [("a", Window(0.0, 24.0), (3, 3))]
    assert h.feed([("a", 13.0, 1)]) == [("a", Window(0.0, 24.0), (4, 4))]  # inside, due: at once


def test_without_a_late_tag_too_late_records_are_dropped_counted_and_logged_once(context_factory, caplog):
    h = harness(counting(TumblingEventTimeWindows(10.0), late_tag=None), context_factory)
    h.watermark(100.0)
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        h.feed([("a", 1.0, 1), ("a", 2.0, 2)])
        h.finish()
    assert h.op.late_dropped == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "('a', 1.0, 1)" in messages[0] and "late_records" in messages[0]
    assert "dropped 2 records" in messages[1]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, "1970-01-01", float("nan")])
def test_a_bad_timestamp_names_the_window_operator_and_shows_the_record(context_factory, bad):
    h = harness(counting(TumblingEventTimeWindows(10.0)), context_factory)
    with pytest.raises((TypeError, ValueError)) as info:
        h.feed([("a", 1.0, 1), ("a", bad, 2)])
    assert "window_aggregate" in str(info.value)
    assert repr(("a", bad, 2)) in str(info.value)


def test_a_window_without_timestamps_or_keys_is_refused():
    with pytest.raises(ValueError, match="assign_timestamps"):
        WindowOperator(TumblingEventTimeWindows(1.0), kind="reduce", reduce_fn=max)
    op = WindowOperator(TumblingEventTimeWindows(1.0), kind="reduce", timestamp_fn=float, reduce_fn=max)
    with pytest.raises(TypeError, match="key_by"):
        op.process_batch([1.0])
    with pytest.raises(ValueError, match="kind"):
        WindowOperator(TumblingEventTimeWindows(1.0), kind="fold", timestamp_fn=float)


# -- snapshot and restore ------------------------------------------------------------------


def test_open_windows_restore_into_a_fresh_operator_and_fire_exactly_once(context_factory):
    make = lambda: counting(TumblingEventTimeWindows(10.0), lateness=5.0)  # noqa: E731
    h = harness(make(), context_factory)
    h.feed([("a", 1.0, 1), ("b", 2.0, 2), ("a", 11.0, 3)])
    fired = h.watermark(10.0)  # [0, 10) fired, kept for lateness; [10, 20) open
    assert len(fired) == 2
    snap = h.snapshot(1)
    h.notify(1)
    after_original = h.feed([("a", 12.0, 4)]) + h.watermark(20.0) + h.finish()

    fresh = harness(make(), context_factory, restored=restored_for([snap], 1))
    assert fresh.op.watermark == 10.0  # the watermark is part of the snapshot: fired windows stay fired
    # upstream watermarks restart low after a restore: they must not fire anything again
    assert fresh.watermark(5.0) == [] and fresh.watermark(10.0) == []
    after_restore = fresh.feed([("a", 12.0, 4)]) + fresh.watermark(20.0) + fresh.finish()
    assert after_restore == after_original == [("a", Window(10.0, 20.0), (2, 7))]


def test_windows_are_stored_as_plain_tuples_and_the_earlier_window_tuples_still_restore(context_factory):
    make = lambda: counting(TumblingEventTimeWindows(10.0), lateness=5.0)  # noqa: E731
    h = harness(make(), context_factory)
    h.feed([("a", 1.0, 1), ("a", 11.0, 3)])
    snap = h.snapshot(1)
    entries = snap.keyed_state["windows"]["a"]
    # a plain (start, end) tuple pickles without naming the Window class in every value
    assert [type(window) for window, _, _ in entries] == [tuple, tuple]
    assert [window for window, _, _ in entries] == [(0.0, 10.0), (10.0, 20.0)]
    expected = h.watermark(20.0) + h.finish()
    # checkpoints written before stored Window named tuples: they restore the same
    older = OperatorSnapshot(
        operator_state=snap.operator_state,
        keyed_state={"windows": {"a": tuple((Window(*w), acc, e) for w, acc, e in entries)}},
    )
    for stored in (snap, older):
        fresh = harness(make(), context_factory, restored=restored_for([stored], 1))
        assert list(fresh.op.windows["a"]) == [Window(0.0, 10.0), Window(10.0, 20.0)]
        assert fresh.watermark(20.0) + fresh.finish() == expected


def test_a_late_record_after_restore_refires_the_restored_window(context_factory):
    make = lambda: counting(TumblingEventTimeWindows(10.0), lateness=5.0)  # noqa: E731
    h = harness(make(), context_factory)
    h.feed([("a", 1.0, 1)])
    h.watermark(12.0)
    fresh = harness(make(), context_factory, restored=restored_for([h.snapshot(1)], 1))
    assert fresh.feed([("a", 2.0, 1)]) == [("a", Window(0.0, 10.0), (2, 2))]
    fresh.watermark(15.0)
    assert fresh.feed([("a", 3.0, 1)]) == []
    assert fresh.side == {"late": [("a", 3.0, 1)]}


def test_restore_at_another_parallelism_splits_windows_by_key_group_and_fires_each_once(context_factory):
    make = lambda: counting(EventTimeSessionWindows(gap=5.0), lateness=10.0)  # noqa: E731
    records = [(f"k{i % 40}", float(i % 17), 1) for i in range(400)]
    reference = harness(make(), context_factory)
    reference.feed(records)
    expected = sorted(reference.finish())

    # two subtasks, each with its share of the keys, checkpoint at watermark 8
    olds = []
    emitted = []
    for index in range(2):
        h = harness(make(), context_factory, index=index, parallelism=2)
        mine = [r for r in records if _subtask(r[0], 2) == index]
        h.feed(mine)
        emitted += h.watermark(8.0)
        olds.append(h.snapshot(4))
    # resume at parallelism 1 and 3: every window fires exactly once over old and new
    for parallelism in (1, 3):
        out = list(emitted)
        for index in range(parallelism):
            h = harness(
                make(),
                context_factory,
                index=index,
                parallelism=parallelism,
                restored=restored_for(olds, 4, index, parallelism),
            )
            out += h.finish()
        final = {}
        for k, w, v in out:
            final[(k, w)] = max(final.get((k, w), v), v)
        assert sorted((k, w, v) for (k, w), v in final.items()) == expected
        assert len(out) == len(set(out))


def _subtask(k, parallelism):
    from onceflow.state_backends import key_group_for, subtask_for_key_group

    return subtask_for_key_group(128, parallelism, key_group_for(k, 128))


ASSIGNERS = {
    "tumbling": lambda: TumblingEventTimeWindows(5.0),
    "sliding": lambda: SlidingEventTimeWindows(6.0, 2.0),
    "session": lambda: EventTimeSessionWindows(gap=3.0),
}


@pytest.mark.parametrize("name", sorted(ASSIGNERS))
@pytest.mark.parametrize("kind", ["aggregate", "reduce", "process"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshot_anywhere_restore_and_replay_gives_the_same_output(context_factory, name, kind, seed):
    """A random out-of-order stream with late records; snapshot at a random step, restore a fresh
    operator and replay what followed: its output equals the uninterrupted operator's."""
    rng = random.Random(seed)
    steps = []
    top = 0.0
    for i in range(60):
        batch = []
        for _ in range(rng.randint(0, 8)):
            t = i + rng.uniform(-3, 0) if rng.random() > 0.1 else i - rng.uniform(5, 30)
            batch.append((f"k{rng.randint(0, 4)}", round(t, 3), rng.randint(1, 9)))
            top = max(top, t)
        steps.append(("feed", batch))
        steps.append(("wm", top - 3))
    make = lambda: counting(ASSIGNERS[name](), lateness=4.0, kind=kind)  # noqa: E731

    def run(h, todo):
        out = []
        for what, arg in todo:
            if what == "feed":
                out += h.feed(arg)
            elif arg > h.op.watermark:
                out += h.watermark(arg)
        return out + h.finish(), h.side.get("late", [])

    at = rng.randint(1, len(steps) - 1)
    first = harness(make(), context_factory)
    for what, arg in steps[:at]:
        if what == "feed":
            first.feed(arg)
        elif arg > first.op.watermark:
            first.watermark(arg)
    snap = first.snapshot(1)
    late_before = list(first.side.get("late", []))
    expected, expected_late = run(first, steps[at:])

    fresh = harness(make(), context_factory, restored=restored_for([snap], 1))
    got, got_late = run(fresh, steps[at:])
    assert sorted(got) == sorted(expected)
    assert got_late == expected_late[len(late_before) :]


# -- processing time -----------------------------------------------------------------------


def test_processing_time_windows_fire_when_the_clock_passes_their_end(context_factory):
    clock = FakeClock(100.0)
    op = WindowOperator(
        TumblingProcessingTimeWindows(10.0, clock=clock.now), kind="reduce", reduce_fn=lambda a, b: a + b
    )
    assert Capability.PROCESSING_TIME in op.capabilities
    h = Harness(op, context_factory, key_fn=lambda r: "k")
    h.feed([1, 2])
    clock.advance(5.0)
    h.feed([3])
    assert h.tick() == []
    assert h.watermark(1e12) == []  # event time does not fire processing-time windows
    clock.advance(5.0)
    assert h.tick() == [("k", Window(100.0, 110.0), 6)]
    h.feed([4])
    snap = h.snapshot(1)
    fresh = Harness(
        WindowOperator(
            TumblingProcessingTimeWindows(10.0, clock=clock.now), kind="reduce", reduce_fn=lambda a, b: a + b
        ),
        context_factory,
        key_fn=lambda r: "k",
        restored=restored_for([snap], 1),
    )
    clock.advance(30.0)
    assert fresh.tick() == [("k", Window(110.0, 120.0), 4)]
    fresh.feed([5])
    assert fresh.finish() == [("k", Window(140.0, 150.0), 5)]  # end of input fires what is open
