"""PipeTransport over real socket pipes: a message per peer and round, merged watermarks, bulk credits."""

from __future__ import annotations

import multiprocessing
import time

from onceflow.engine.elements import Barrier, Batch, Watermark
from onceflow.engine.transport.base import ChannelId
from onceflow.engine.transport.peers import PeerTransport
from onceflow.engine.transport.pipes import PipeTransport, connect_workers


def _pair(capacity: int = 4) -> tuple[dict[int, PipeTransport], list]:
    ctx = multiprocessing.get_context("fork")
    ends = connect_workers(ctx, 2)
    controls = [ctx.Pipe(duplex=True) for _ in range(2)]
    transports = {
        w: PipeTransport(
            controls[w][1], {1 - w: ends[w, 1 - w]}, worker=w, worker_of=lambda i: i, capacity=capacity
        )
        for w in (0, 1)
    }
    return transports, controls


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "nothing arrived within the timeout"
        time.sleep(0.001)


def _arrived(transport: PipeTransport, condition) -> bool:
    """Let the worker's loop take in what its receiver read, then check ``condition``."""
    transport.take_in()
    return condition()


def _count_ships(transport: PeerTransport) -> list:
    shipped: list = []
    ship = transport.ship

    def counting(peer: int, messages: list) -> None:
        shipped.append(messages)
        ship(peer, messages)

    transport.ship = counting  # type: ignore[method-assign]
    return shipped


def test_a_round_leaves_as_one_message_with_consecutive_watermarks_merged() -> None:
    transports, _controls = _pair()
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    shipped = _count_ships(transports[0])
    out.put(Batch([1, 2], [1, 2]))
    out.put(Watermark(1.0))
    out.put(Watermark(2.0))  # replaces 1.0: nothing between them
    out.put(Barrier(1))
    out.put(Watermark(3.0))  # a barrier in between: kept apart
    out.put(Watermark(4.0, idle=True))  # idleness is never merged
    assert len(out) == 5
    transports[0].flush()
    assert len(shipped) == 1
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 5))
    got = [inp.poll() for _ in range(5)]
    assert type(got[0]) is Batch and got[0].records == [1, 2]
    assert got[1:] == [Watermark(2.0), Barrier(1), Watermark(3.0), Watermark(4.0, idle=True)]
    assert inp.poll() is None


def test_credits_come_back_in_bulk_with_the_consumers_flush_and_bound_what_is_unread() -> None:
    transports, _controls = _pair(capacity=3)
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    for n in range(3):
        out.put(Batch([n]))
    assert not out.has_room()
    transports[0].flush()
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 3))
    assert [inp.poll().records for _ in range(3)] == [[0], [1], [2]]
    assert not out.has_room()  # the credits have not travelled yet
    shipped = _count_ships(transports[1])
    transports[1].flush()
    assert shipped == [[("c", cid, 3)]]
    _until(lambda: _arrived(transports[0], out.has_room))
    assert len(out) == 0


def test_a_watermark_after_a_flush_is_sent_again_not_merged_into_the_sent_one() -> None:
    transports, _controls = _pair()
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    out.put(Watermark(1.0))
    transports[0].flush()
    out.put(Watermark(2.0))
    transports[0].flush()
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 2))
    assert [inp.poll(), inp.poll()] == [Watermark(1.0), Watermark(2.0)]
    assert len(out) == 2


def test_runner_commands_are_queued_in_order() -> None:
    transports, controls = _pair()
    transports[1].start()
    controls[1][0].send(("trigger", 1, False))
    controls[1][0].send(("stop",))
    _until(lambda: len(transports[1].commands) == 2)
    assert list(transports[1].commands) == [("trigger", 1, False), ("stop",)]
