"""KeyedProcessOperator driven by hand: named state, timers, side outputs, snapshot and restore."""

from __future__ import annotations

import math
import re

import pytest
from event_time_harness import Harness, restored_for

from onceflow import KeyedProcessFunction
from onceflow.operators.bad_records import BatchFailure
from onceflow.operators.base import Capability
from onceflow.operators.process_function import KeyedProcessOperator
from onceflow.operators.testing import FakeClock

INF = math.inf


class SessionTimeout(KeyedProcessFunction):
    """Counts clicks per user; emits (user, count, last) when a user is quiet for 10 s of event time."""

    def process_element(self, click, ctx):
        count = ctx.value_state("count")
        count.update((count.value() or 0) + 1)
        ctx.list_state("pages").add(click[2])
        seen = ctx.map_state("seen")
        seen.put(click[2], seen.get(click[2], 0) + 1)
        last = ctx.value_state("last")
        if last.value() is not None:
            ctx.timers.delete_event_time(last.value() + 10.0)
        last.update(max(ctx.timestamp, last.value() or -INF))
        ctx.timers.register_event_time(last.value() + 10.0)
        if click[2] == "spam":
            ctx.output("spam", click)
        return None

    def on_timer(self, timestamp, ctx):
        assert ctx.time_domain == "event" and ctx.timestamp == timestamp
        out = (
            ctx.key,
            ctx.value_state("count").value(),
            ctx.list_state("pages").get(),
            dict(ctx.map_state("seen").items()),
            timestamp,
        )
        for name in ("count", "last"):
            ctx.value_state(name).clear()
        ctx.list_state("pages").clear()
        ctx.map_state("seen").clear()
        yield out


def operator(fn=None, clock=None) -> KeyedProcessOperator:
    kw = {"clock": clock.now} if clock is not None else {}
    return KeyedProcessOperator(fn or SessionTimeout(), lambda c: c[1], **kw)


def harness(op, context_factory, **kw) -> Harness:
    return Harness(op, context_factory, key_fn=lambda c: c[0], **kw)


def test_named_state_per_key_and_an_event_timer_that_fires_once(context_factory):
    h = harness(operator(), context_factory)
    clicks = [("ann", 1.0, "home"), ("bob", 2.0, "home"), ("ann", 4.0, "cart"), ("ann", 3.0, "home")]
    assert h.feed(clicks) == []
    assert h.op.pending_timers == 2  # ann's timer moved from 11 to 14; bob's at 12
    assert h.watermark(11.0) == []  # ann's old timer was deleted
    assert h.watermark(12.0) == [("bob", 1, ["home"], {"home": 1}, 12.0)]
    assert h.watermark(13.0) == []
    assert h.watermark(14.0) == [("ann", 3, ["home", "cart", "home"], {"home": 2, "cart": 1}, 14.0)]
    assert h.watermark(100.0) == []
    assert h.op.pending_timers == 0
    assert all(not table for table in h.op.state.tables.values())  # cleared state is gone


def test_timers_fire_in_timestamp_order_across_keys_and_each_key_time_pair_once(context_factory):
    class Many(KeyedProcessFunction):
        def process_element(self, value, ctx):
            for t in value[2]:
                ctx.timers.register_event_time(t)

        def on_timer(self, timestamp, ctx):
            return [(ctx.key, timestamp)]

    h = harness(operator(Many()), context_factory)
    h.feed([("a", 0.0, [5.0, 1.0, 5.0]), ("b", 0.0, [3.0, 1.0]), ("a", 0.0, [1.0])])
    assert h.op.pending_timers == 4
    out = h.watermark(10.0)
    assert out == sorted(out, key=lambda kt: kt[1])
    assert sorted(out) == [("a", 1.0), ("a", 5.0), ("b", 1.0), ("b", 3.0)]
    assert h.finish() == []


def test_a_timer_registered_in_on_timer_fires_when_its_time_comes(context_factory):
    class Ticker(KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timers.register_event_time(ctx.timestamp + 1)

        def on_timer(self, timestamp, ctx):
            if timestamp < 5:
                ctx.timers.register_event_time(timestamp + 1)
            return [timestamp]

    h = harness(operator(Ticker()), context_factory)
    h.feed([("a", 0.0, None)])
    assert h.watermark(2.5) == [1.0, 2.0]
    assert h.finish() == [3.0, 4.0, 5.0]  # end of input fires every event-time timer


def test_side_outputs_and_current_watermark(context_factory):
    class Watch(KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.output("seen", (ctx.key, ctx.current_watermark))
            return [value]

    h = harness(operator(Watch()), context_factory)
    h.feed([("a", 1.0, "x")])
    h.watermark(7.0)
    h.feed([("b", 8.0, "y")])
    assert h.side == {"seen": [("a", -INF), ("b", 7.0)]}


def test_processing_time_timers_fire_when_the_clock_passes_them(context_factory):
    clock = FakeClock(1000.0)

    class Later(KeyedProcessFunction):
        def process_element(self, value, ctx):
            now = ctx.timers.current_processing_time()
            ctx.timers.register_processing_time(now + 5.0)
            if value[2] == "cancel":
                ctx.timers.delete_processing_time(now + 5.0)

        def on_timer(self, timestamp, ctx):
            assert ctx.time_domain == "processing"
            return [(ctx.key, timestamp)]

    h = harness(operator(Later(), clock), context_factory)
    assert Capability.PROCESSING_TIME in h.op.capabilities
    h.feed([("a", 0.0, "go"), ("b", 0.0, "cancel")])
    clock.advance(4.0)
    assert h.tick() == []
    assert h.watermark(INF) == []  # event time does not fire processing-time timers
    clock.advance(1.0)
    assert h.tick() == [("a", 1005.0)]
    clock.advance(100.0)
    assert h.tick() == []


def test_pending_timers_and_state_survive_a_restore_and_fire_exactly_once(context_factory):
    h = harness(operator(), context_factory)
    h.feed([("ann", 1.0, "home"), ("bob", 5.0, "home"), ("cy", 9.0, "x")])
    assert h.watermark(12.0) == [("ann", 1, ["home"], {"home": 1}, 11.0)]  # fired before the checkpoint
    snap = h.snapshot(7)
    h.notify(7)
    original = h.feed([("bob", 6.0, "cart")]) + h.watermark(30.0)

    fresh = harness(operator(), context_factory, restored=restored_for([snap], 7))
    assert fresh.op.watermark == 12.0
    assert fresh.op.pending_timers == 2  # bob@15, cy@19; ann's fired timer is not in the snapshot
    # upstream watermarks restart low after a restore; ann's timer must not fire again
    assert fresh.watermark(1.0) == [] and fresh.watermark(12.0) == []
    replayed = fresh.feed([("bob", 6.0, "cart")]) + fresh.watermark(30.0)
    assert (
        replayed
        == original
        == [
            ("bob", 2, ["home", "cart"], {"home": 1, "cart": 1}, 16.0),
            ("cy", 1, ["x"], {"x": 1}, 19.0),
        ]
    )


def test_timers_move_with_their_key_groups_on_a_rescale(context_factory):
    users = [f"user-{i}" for i in range(50)]
    snaps = []
    for index in range(2):
        h = harness(operator(), context_factory, index=index, parallelism=2)
        h.feed([(u, float(i), "p") for i, u in enumerate(users) if _subtask(u, 2) == index])
        snaps.append(h.snapshot(2))
    fired = []
    for parallelism in (1, 3):
        fired = []
        for index in range(parallelism):
            fresh = harness(
                operator(),
                context_factory,
                index=index,
                parallelism=parallelism,
                restored=restored_for(snaps, 2, index, parallelism),
            )
            fired += fresh.finish()
        assert sorted(f[0] for f in fired) == sorted(users)  # each user's timer fires once


def _subtask(key, parallelism):
    from onceflow.state_backends import key_group_for, subtask_for_key_group

    return subtask_for_key_group(128, parallelism, key_group_for(key, 128))


def test_processing_time_timers_pending_at_a_checkpoint_fire_once_after_restore(context_factory):
    clock = FakeClock(0.0)

    class Once(KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.timers.register_processing_time(10.0)

        def on_timer(self, timestamp, ctx):
            return [ctx.key]

    h = harness(operator(Once(), clock), context_factory)
    h.feed([("a", 0.0, None), ("b", 0.0, None)])
    snap = h.snapshot(1)
    clock.advance(20.0)
    fresh = harness(operator(Once(), clock), context_factory, restored=restored_for([snap], 1))
    assert sorted(fresh.tick()) == ["a", "b"]
    assert fresh.tick() == []


def test_registering_a_timer_without_timestamps_names_the_operator_and_the_record(context_factory):
    class Needs(KeyedProcessFunction):
        def process_element(self, value, ctx):
            assert ctx.timestamp is None
            ctx.timers.register_event_time(ctx.timestamp)

    h = Harness(KeyedProcessOperator(Needs(), None), context_factory, key_fn=lambda r: r)
    match = r"process: timers.register_event_time\(None\).*'click-7'.*assign_timestamps"
    with pytest.raises(BatchFailure) as failed:
        h.feed(["click-7"])
    assert isinstance(failed.value.error, TypeError)
    assert re.search(match, str(failed.value.error))


def test_a_bad_timestamp_names_the_operator_and_shows_the_record(context_factory):
    h = harness(operator(), context_factory)
    with pytest.raises(TypeError, match=r"process: .*'noon'.*\('ann', 'noon', 'home'\)"):
        h.feed([("ann", "noon", "home")])


def test_state_names_must_be_strings(context_factory):
    class Bad(KeyedProcessFunction):
        def process_element(self, value, ctx):
            ctx.value_state(3)

    h = harness(operator(Bad()), context_factory)
    with pytest.raises(BatchFailure) as failed:
        h.feed([("a", 1.0, None)])
    assert isinstance(failed.value.error, TypeError) and "state names" in str(failed.value.error)


def test_an_object_without_process_element_is_refused():
    with pytest.raises(TypeError, match="process_element"):
        KeyedProcessOperator(object())
