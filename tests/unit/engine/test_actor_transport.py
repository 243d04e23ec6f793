"""RayTransport without Ray: calls applied in each sender's order, credits bound what is in flight."""

from __future__ import annotations

from onceflow.engine.transport.actors import DRIVER, RayTransport
from onceflow.engine.transport.base import ChannelId


def _pair(capacity: int = 2):
    """Two transports (workers 0 and 1) whose calls are queued, to be delivered in any order."""
    calls: list[tuple[int, int, int, list]] = []
    transports = {}
    for w in (0, 1):
        transports[w] = RayTransport(
            worker=w,
            worker_of=lambda i: i,
            capacity=capacity,
            call=lambda peer, seq, messages, w=w: calls.append((peer, w, seq, messages)),
        )
    return transports, calls


def test_credits_bound_unread_batches_and_come_back_on_read() -> None:
    transports, calls = _pair(capacity=2)
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    out.put("b1")
    out.put("b2")
    assert not out.has_room()
    transports[0].flush()
    assert len(calls) == 1  # both batches in one call
    peer, sender, seq, messages = calls.pop()
    transports[peer].receive(sender, seq, messages)
    assert inp.poll() == "b1"
    assert not out.has_room()  # the credit has not travelled yet
    transports[1].flush()
    peer, sender, seq, messages = calls.pop()
    transports[peer].receive(sender, seq, messages)
    assert out.has_room() and len(out) == 1
    assert inp.poll() == "b2" and inp.poll() is None


def test_calls_out_of_order_and_before_start_are_applied_in_order() -> None:
    transports, calls = _pair(capacity=10)
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    transports[0].start()
    for n in range(3):
        out.put(f"b{n}")
        transports[0].flush()
    delivered = [c for c in calls if c[0] == 1]
    for _peer, sender, seq, messages in reversed(delivered):
        transports[1].receive(sender, seq, messages)
    transports[1].receive(DRIVER, 1, [("stop",)])
    transports[1].receive(DRIVER, 0, [("trigger", 1, False)])
    assert inp.poll() is None  # held until the worker's subtasks exist
    transports[1].start()
    assert [inp.poll() for _ in range(3)] == ["b0", "b1", "b2"]
    assert list(transports[1].commands) == [("trigger", 1, False), ("stop",)]
