"""Named state with a time-to-live: expired entries are never returned and leave the snapshots."""

from __future__ import annotations

import re

import pytest
from event_time_harness import Harness, restored_for

from onceflow import KeyedProcessFunction
from onceflow.operators.bad_records import BatchFailure
from onceflow.operators.process_function import KeyedProcessOperator
from onceflow.operators.testing import FakeClock


class Remember(KeyedProcessFunction):
    """Per key, each with ttl 10 s: the last value, the values seen, a map of them; emits what it had."""

    def process_element(self, record, ctx):
        key, value = record
        last = ctx.value_state("last", ttl=10.0)
        seen = ctx.list_state("seen", ttl=10.0)
        pages = ctx.map_state("pages", ttl=10.0)
        out = [(key, last.value(), seen.get(), dict(pages.items()))]
        last.update(value)
        seen.add(value)
        pages.put(value, True)
        return out


def harness(clock, context_factory, **kw) -> Harness:
    op = KeyedProcessOperator(Remember(), None, clock=clock.now)
    return Harness(op, context_factory, key_fn=lambda r: r[0], **kw)


def test_state_expires_ttl_seconds_after_its_last_write(context_factory):
    clock = FakeClock(100.0)
    h = harness(clock, context_factory)
    assert h.feed([("a", 1)]) == [("a", None, [], {})]
    clock.advance(9.0)
    assert h.feed([("a", 2)]) == [("a", 1, [1], {1: True})]  # 9 s: alive, and the write renews it
    clock.advance(9.0)
    assert h.feed([("a", 3)]) == [("a", 2, [1, 2], {1: True, 2: True})]
    clock.advance(10.0)
    assert h.feed([("a", 4)]) == [("a", None, [], {})]  # 10 s after the last write: gone


def test_expired_entries_are_dropped_from_snapshots_and_live_ones_expire_after_a_restore(context_factory):
    clock = FakeClock(0.0)
    h = harness(clock, context_factory)
    h.feed([("old", 1)])
    clock.advance(6.0)
    h.feed([("new", 2)])
    clock.advance(5.0)  # old written 11 s ago: expired; new 5 s ago: alive
    snap = h.snapshot(1)
    tables = {name: set(table) for name, table in snap.keyed_state.items()}
    assert tables == {
        "value:last": {"new"},
        "list:seen": {"new"},
        "map:pages": {"new"},
        "ttl:value:last": {"new"},
        "ttl:list:seen": {"new"},
        "ttl:map:pages": {"new"},
    }
    fresh = harness(clock, context_factory, restored=restored_for([snap], 1))
    assert fresh.feed([("new", 3), ("old", 4)]) == [("new", 2, [2], {2: True}), ("old", None, [], {})]
    clock.advance(10.0)
    assert fresh.feed([("new", 5)]) == [("new", None, [], {})]


def test_a_bad_ttl_or_two_ttls_for_one_state_name_the_operator(context_factory):
    class Bad(KeyedProcessFunction):
        def __init__(self, ttls):
            self.ttls = ttls

        def process_element(self, record, ctx):
            for ttl in self.ttls:
                ctx.value_state("x", ttl=ttl)

    for ttls, match in (([-1.0], "ttl must be a finite number"), ([5.0, 6.0], "ttl=5.0 and ttl=6.0")):
        op = KeyedProcessOperator(Bad(ttls), None)
        h = Harness(op, context_factory, key_fn=lambda r: r)
        with pytest.raises(BatchFailure) as failed:  # the runtime fails naming the record
            h.feed(["a"])
        assert isinstance(failed.value.error, TypeError) and re.search(match, str(failed.value.error))
