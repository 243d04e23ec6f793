"""PipeTransport over real socket pairs: a message per peer and round, merged watermarks, bulk credits."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from onceflow.engine.elements import Barrier, Batch, Watermark
from onceflow.engine.transport.base import ChannelId
from onceflow.engine.transport.peers import WATERMARK_HOLD, PeerTransport
from onceflow.engine.transport.pipes import PipeTransport, connect_workers


def _pair(capacity: int = 4) -> tuple[dict[int, PipeTransport], list]:
    ctx = multiprocessing.get_context("fork")
    ends = connect_workers(2)
    controls = [ctx.Pipe(duplex=True) for _ in range(2)]
    transports = {
        w: PipeTransport(
            controls[w][1], {1 - w: ends[w, 1 - w]}, worker=w, worker_of=lambda i: i, capacity=capacity
        )
        for w in (0, 1)
    }
    return transports, controls


def _one_channel(capacity: int = 4) -> tuple[dict[int, PipeTransport], ChannelId, Any, Any]:
    """Two started transports and one channel from worker 0 to worker 1: its id, output and input ends."""
    transports, _controls = _pair(capacity)
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    return transports, cid, out, inp


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "nothing arrived within the timeout"
        time.sleep(0.001)


def _arrived(transport: PipeTransport, condition) -> bool:
    """Take in what arrived, as the worker's loop does once per round, then check ``condition``."""
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
    transports, cid, out, inp = _one_channel()
    shipped = _count_ships(transports[0])
    out.put(Batch([1, 2], [1, 2]))
    out.put(Watermark(1.0))
    out.put(Watermark(2.0))  # replaces 1.0: nothing between them
    out.put(Barrier(1))
    out.put(Watermark(3.0))  # a barrier in between: kept apart
    out.put(Watermark(4.0, idle=True))  # idleness is never merged
    assert len(out) == 3  # watermarks take no credit; the batch, the barrier and the idle marker do
    transports[0].flush()
    assert len(shipped) == 1
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 5))
    got = [inp.poll() for _ in range(5)]
    assert type(got[0]) is Batch and got[0].records == [1, 2]
    assert got[1:] == [Watermark(2.0), Barrier(1), Watermark(3.0), Watermark(4.0, idle=True)]
    assert inp.poll() is None


def test_credits_come_back_in_bulk_with_the_consumers_flush_and_bound_what_is_unread() -> None:
    transports, cid, out, inp = _one_channel(capacity=3)
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


def test_a_watermark_after_a_flush_is_sent_again_and_the_inbox_keeps_the_later_one() -> None:
    transports, cid, out, inp = _one_channel()
    shipped = _count_ships(transports[0])
    out.put(Watermark(1.0))
    transports[0].flush()
    out.put(Watermark(2.0))
    transports[0].flush()
    assert shipped == [[("d", cid, Watermark(1.0))], [("d", cid, Watermark(2.0))]]
    _until(lambda: _arrived(transports[1], lambda: inp.queue and inp.queue[-1] == Watermark(2.0)))
    assert list(inp.queue) == [Watermark(2.0)]  # queued after 1.0 with nothing between: replaced it


def test_watermarks_take_no_credit_so_a_stream_of_them_never_stalls_the_producer() -> None:
    transports, cid, out, inp = _one_channel(capacity=2)
    for n in range(50):  # one per round, as a source step sends them, none read yet
        out.put(Watermark(float(n)))
        transports[0].flush()
        assert out.has_room()
    out.put(Batch([1]))
    out.put(Watermark(50.0))
    transports[0].flush()
    _until(lambda: _arrived(transports[1], lambda: inp.queue and inp.queue[-1] == Watermark(50.0)))
    assert [type(e).__name__ for e in inp.queue] == ["Watermark", "Batch", "Watermark"]
    assert [inp.poll(), inp.poll().records, inp.poll()] == [Watermark(49.0), [1], Watermark(50.0)]
    assert transports[1].credits == {0: {cid: 1}}  # only the batch earns one


def test_runner_commands_are_queued_in_order() -> None:
    transports, controls = _pair()
    transports[1].start()
    controls[1][0].send(("trigger", 1, False))
    controls[1][0].send(("stop",))
    _until(lambda: _arrived(transports[1], lambda: len(transports[1].commands) == 2))
    assert list(transports[1].commands) == [("trigger", 1, False), ("stop",)]


def test_two_workers_sending_more_than_their_sockets_hold_to_each_other_never_block() -> None:
    """Each ship returns at once; what the kernel did not take goes out as the loops read and wait."""
    transports, _controls = _pair()
    cids = {0: ChannelId(0, 0, 1), 1: ChannelId(0, 1, 0)}
    outs = {w: transports[w].channel(cids[w]) for w in (0, 1)}
    inps = {w: transports[1 - w].channel(cids[w]) for w in (0, 1)}
    for t in transports.values():
        t.start()
    payload = [b"x" * 1024] * (16 * 1024)  # 16 MiB each way: more than both socket buffers
    started = time.monotonic()
    for w in (0, 1):
        outs[w].put(Batch(payload))
        transports[w].flush()
    assert time.monotonic() - started < 5.0
    deadline = time.monotonic() + 30.0
    while not (len(inps[0]) and len(inps[1])):
        assert time.monotonic() < deadline, "the frames did not get through"
        for t in transports.values():
            t.take_in()
            t.wait(0.01)
    assert [len(inps[w].poll().records) for w in (0, 1)] == [len(payload), len(payload)]


def test_wait_returns_when_a_peer_sends_and_a_closed_runner_pipe_means_stop() -> None:
    transports, controls = _pair()
    cid = ChannelId(0, 0, 1)
    out = transports[0].channel(cid)
    inp = transports[1].channel(cid)
    for t in transports.values():
        t.start()
    out.put(Watermark(1.0))
    transports[0].flush()
    started = time.monotonic()
    transports[1].wait(10.0)
    assert time.monotonic() - started < 5.0
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 1))
    controls[1][0].close()
    _until(lambda: _arrived(transports[1], lambda: transports[1].closed))
    assert list(transports[1].commands) == [("stop",)]


def test_a_peer_that_closed_its_end_is_let_go() -> None:
    transports, _controls = _pair()
    for t in transports.values():
        t.start()
    transports[0].peers[1].close()
    assert transports[1].take_in() is False
    transports[1].wait(0.01)  # no longer woken by the closed socket
    assert transports[1].take_in() is False


def test_watermarks_alone_wait_out_the_hold_and_leave_merged_with_the_next_message() -> None:
    transports, cid, out, inp = _one_channel()
    shipped = _count_ships(transports[0])
    out.put(Batch([1], [1]))
    transports[0].flush(now=100.0)
    assert len(shipped) == 1
    # Rounds within the hold that put only watermarks send nothing; each replaces the one held.
    for i, now in enumerate((100.001, 100.005, 100.019)):
        out.put(Watermark(float(i)))
        transports[0].flush(now=now)
    assert len(shipped) == 1
    # A record batch takes the held watermark along, in channel order.
    out.put(Batch([2], [2]))
    transports[0].flush(now=100.0195)
    assert len(shipped) == 2
    assert [m[2] for m in shipped[1]][0] == Watermark(2.0)
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 3))
    got = [inp.poll() for _ in range(3)]
    assert got[0].records == [1] and got[1] == Watermark(2.0) and got[2].records == [2]


def test_held_watermarks_leave_after_the_hold_before_an_idle_wait_and_idleness_at_once() -> None:
    transports, cid, out, inp = _one_channel()
    shipped = _count_ships(transports[0])
    transports[0].flush(now=0.0)
    out.put(Watermark(1.0))
    transports[0].flush(now=10.0)  # nothing sent to this peer before: no hold
    assert len(shipped) == 1
    out.put(Watermark(2.0))
    transports[0].flush(now=10.001)
    assert len(shipped) == 1
    out.put(Watermark(3.0))
    transports[0].flush(now=10.001 + WATERMARK_HOLD)  # the hold is over
    assert len(shipped) == 2 and [m[2] for m in shipped[1]] == [Watermark(3.0)]
    out.put(Watermark(4.0))
    transports[0].flush(now=10.03)
    assert len(shipped) == 2
    transports[0].flush()  # before the worker waits idle: everything goes
    assert len(shipped) == 3 and [m[2] for m in shipped[2]] == [Watermark(4.0)]
    out.put(Watermark(5.0, idle=True))  # an idle marker lets consumers stop waiting: never held
    transports[0].flush(now=10.031)
    assert len(shipped) == 4
    _until(lambda: _arrived(transports[1], lambda: inp.queue and inp.queue[-1] == Watermark(5.0, idle=True)))
    # the inbox keeps the latest of consecutive watermarks; the idle marker comes after it
    assert list(inp.queue) == [Watermark(4.0), Watermark(5.0, idle=True)]


def test_credits_are_never_held_back() -> None:
    transports, cid, out, inp = _one_channel()
    shipped_back = _count_ships(transports[1])
    out.put(Batch([1], [1]))
    transports[0].flush(now=0.0)
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 1))
    assert inp.poll().records == [1]
    transports[1].flush(now=0.0)
    inp_credit_rounds = len(shipped_back)
    out.put(Batch([2], [2]))
    transports[0].flush(now=0.001)
    _until(lambda: _arrived(transports[1], lambda: len(inp) == 1))
    inp.poll()
    transports[1].flush(now=0.002)  # within any hold: the credit goes at once
    assert len(shipped_back) == inp_credit_rounds + 1
    assert shipped_back[-1] == [("c", cid, 1)]
