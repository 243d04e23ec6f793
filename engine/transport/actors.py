"""Transport between Ray actors: per-peer message lists sent as actor calls, with a credit count per channel.

A channel with both ends in one actor is a ``LocalChannel``. Across actors, a
producer's elements are buffered per destination actor during a scheduler
round and sent at the end of the round as one actor call
(``deliver(sender, seq, messages)``), so a call carries every batch and
credit of the round for that peer instead of one call per batch. Each
cross-actor channel has its own credit count (``capacity`` elements sent and
not yet read by the consumer), so backpressure holds across nodes and memory
stays bounded; credits go back the same way, piggybacked on the round's call.

Ray runs an actor's calls on a thread pool and does not promise their order
(the actor must also serve calls while its scheduler loop runs), so every
sender numbers its calls and :meth:`RayTransport.receive` applies them in
that order; the driver's control messages come through the same path
(sender ``-1``). Messages arriving before the actor's subtasks exist are
held until :meth:`RayTransport.start`.

Wire format, inside one call: ``("d", cid, element)`` data on channel ``cid``;
``("c", cid, n)`` n credits back to its producer; anything else is a control
message for the worker, queued in ``commands``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from onceflow.engine.transport.base import ChannelEnd, ChannelId, CreditedOutput, Transport
from onceflow.engine.transport.local import LocalChannel

__all__ = ["ActorInput", "ActorOutput", "RayTransport"]

DRIVER = -1
"""The sender number of the driver's control messages."""


class ActorOutput(CreditedOutput):
    """The producer end of a channel to another actor; ``capacity`` elements may be unread."""

    __slots__ = ("outbox",)

    def __init__(self, outbox: list, cid: ChannelId, capacity: int) -> None:
        super().__init__(cid, capacity)
        self.outbox = outbox

    def put(self, element: Any) -> None:
        """Buffer an element for the end-of-round call to the consumer's actor."""
        self.outbox.append(("d", self.cid, element))
        self.sent += 1


class ActorInput:
    """The consumer end of a channel from another actor; every element read earns its producer a credit."""

    __slots__ = ("queue", "cid", "credits")

    def __init__(self, cid: ChannelId, queue: deque, credits: dict[ChannelId, int]) -> None:
        self.cid = cid
        self.queue = queue
        self.credits = credits

    def put(self, element: Any) -> None:
        """Refuse: this end is read only."""
        msg = "the consumer end of a channel cannot be written"
        raise RuntimeError(msg)

    def has_room(self) -> bool:
        """Return True: nothing is ever written to this end."""
        return True

    def poll(self) -> Any:
        """Return the oldest element received (its credit goes back with the next flush), or None."""
        if not self.queue:
            return None
        element = self.queue.popleft()
        cid = self.cid
        self.credits[cid] = self.credits.get(cid, 0) + 1
        return element

    def __len__(self) -> int:
        return len(self.queue)


Send = Callable[[int, int, list], None]
"""``send(peer, seq, messages)``: one actor call to worker ``peer`` (fire and forget)."""


class RayTransport(Transport):
    """One actor's channel ends, its per-peer outboxes, and the ordered intake of calls from peers.

    Life cycle: create, let subtasks take their channel ends with ``channel``,
    then ``start`` (only then does every inbox exist). The worker's loop calls
    ``flush`` at the end of every round, reads ``commands`` and waits on
    ``wakeup``, which ``receive`` sets after anything arrived. ``send``
    queues a report for the driver, which collects them with ``take_reports``.
    """

    def __init__(self, *, worker: int, worker_of: Callable[[int], int], capacity: int, call: Send) -> None:
        self.worker = worker
        self.worker_of = worker_of
        self.capacity = capacity
        self._call = call
        self.local: dict[ChannelId, LocalChannel] = {}
        self.inboxes: dict[ChannelId, deque] = {}
        self.outputs: dict[ChannelId, ActorOutput] = {}
        self.outboxes: dict[int, list] = {}
        self.credits: dict[int, dict[ChannelId, int]] = {}
        self._next_out: dict[int, int] = {}
        self.commands: deque = deque()
        self.wakeup = threading.Event()
        self.closed = False
        """Never set: the driver releases a Ray worker by ``stop`` or by killing the actor."""
        self._lock = threading.Lock()
        self._ready = False
        self._next_in: dict[int, int] = {}
        self._held: dict[int, dict[int, list]] = {}
        self._reports: deque = deque()
        self.reported = threading.Event()

    # -- channel ends ----------------------------------------------------------

    def channel(self, cid: ChannelId) -> ChannelEnd:
        """Return this actor's end of ``cid``: local, the producer end, or the consumer end."""
        src = self.worker_of(cid.src)
        dst = self.worker_of(cid.dst)
        if src == dst == self.worker:
            found = self.local.get(cid)
            if found is None:
                found = self.local[cid] = LocalChannel(self.capacity, str(cid))
            return found
        if src == self.worker:
            outbox = self.outboxes.setdefault(dst, [])
            out = self.outputs[cid] = ActorOutput(outbox, cid, self.capacity)
            return out
        queue: deque = deque()
        self.inboxes[cid] = queue
        return ActorInput(cid, queue, self.credits.setdefault(src, {}))

    # -- sending ---------------------------------------------------------------

    def flush(self) -> None:
        """Send each peer, in one call, the elements buffered for it and the credits it earned."""
        for peer, outbox in self.outboxes.items():
            credits = self.credits.get(peer)
            if not outbox and not credits:
                continue
            messages = list(outbox)
            outbox.clear()
            if credits:
                messages.extend(("c", cid, n) for cid, n in credits.items())
                credits.clear()
            self._send_call(peer, messages)
        for peer, credits in self.credits.items():
            if credits and peer not in self.outboxes:
                messages = [("c", cid, n) for cid, n in credits.items()]
                credits.clear()
                self._send_call(peer, messages)

    def _send_call(self, peer: int, messages: list) -> None:
        seq = self._next_out.get(peer, 0)
        self._next_out[peer] = seq + 1
        self._call(peer, seq, messages)

    def send(self, message: tuple) -> None:
        """Queue a report for the driver (an ack, drained, metrics, stopped or error)."""
        self._reports.append(message)
        self.reported.set()

    def take_reports(self, timeout: float) -> list:
        """Return the queued reports, waiting up to ``timeout`` seconds for the first."""
        if not self._reports:
            self.reported.wait(timeout)
        self.reported.clear()
        taken = []
        reports = self._reports
        while reports:
            taken.append(reports.popleft())
        return taken

    # -- receiving -------------------------------------------------------------

    def start(self) -> None:
        """Apply what arrived before the subtasks existed; from now on calls are applied as they come."""
        with self._lock:
            self._ready = True
            for sender in list(self._held):
                self._apply_in_order(sender)
        self.wakeup.set()

    def receive(self, sender: int, seq: int, messages: list) -> None:
        """Take call number ``seq`` of ``sender`` (a peer's index or ``DRIVER``), applying calls in order."""
        with self._lock:
            self._held.setdefault(sender, {})[seq] = messages
            if self._ready:
                self._apply_in_order(sender)
        self.wakeup.set()

    def _apply_in_order(self, sender: int) -> None:
        held = self._held[sender]
        expected = self._next_in.get(sender, 0)
        while expected in held:
            for message in held.pop(expected):
                kind = message[0]
                if kind == "d":
                    self.inboxes[message[1]].append(message[2])
                elif kind == "c":
                    self.outputs[message[1]].acked += message[2]
                else:
                    self.commands.append(message)
            expected += 1
        self._next_in[sender] = expected
