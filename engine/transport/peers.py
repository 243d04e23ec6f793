"""Channel ends between workers, and what pipes and Ray share: per-round messages bounded by credits.

A worker of the process executor (pipes) or the Ray executor (actor calls)
reaches the subtasks of other workers through a :class:`PeerTransport`: the
elements for a peer are buffered during a scheduler round and leave in one
message at its end, with the credits earned for that peer; the subclasses
only say how a message travels and comes in.
"""

from __future__ import annotations

import math
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from onceflow.engine.elements import Watermark
from onceflow.engine.transport.base import ChannelEnd, ChannelId, Transport
from onceflow.engine.transport.local import LocalChannel

__all__ = ["WATERMARK_HOLD", "CreditedInput", "CreditedOutput", "PeerTransport"]

WATERMARK_HOLD = 0.02
"""Seconds a worker may keep back watermarks for a peer that gets nothing else (:class:`PeerTransport`)."""


class CreditedOutput:
    """The producer end of a channel to another worker: buffered for the round's flush, bounded by credits.

    ``put`` appends to the outbox of the consumer's worker, which
    :meth:`PeerTransport.flush` sends as one message at the end of the
    scheduler round, together with every other channel's elements and credits
    for that worker. At most ``capacity`` elements may be put and not yet read
    by the consumer; the consumer's credits raise ``acked`` (written by the
    transport's receive path only).

    A watermark put right after another watermark of this channel, with
    nothing in between in the outbox, replaces it: watermarks only rise, so
    the consumer would have acted on the later one alone. A keyed operator
    forwards a watermark for each input batch that advanced it; within one
    round only the last of them leaves the worker. Idle markers are never
    merged. Cost per element: one append, or one comparison and a replacement.

    A watermark (not an idle marker) takes no credit: it carries no records,
    and the consumer's inbox replaces a queued watermark with a later one
    (:meth:`PeerTransport.apply`), so at most one follows each credited
    element there and what is in flight stays bounded. Spent on watermarks,
    credits stalled producers that send one per source batch while a combiner
    holds the records: the consumer's worker had to read and answer every one
    before the producer could step again.
    """

    __slots__ = ("cid", "capacity", "sent", "acked", "outbox", "_watermark_at")

    def __init__(self, outbox: list, cid: ChannelId, capacity: int) -> None:
        self.cid = cid
        self.capacity = capacity
        self.sent = 0
        self.acked = 0
        self.outbox = outbox
        self._watermark_at = -1
        """Index in ``outbox`` of this channel's last element when it is a non-idle watermark, else -1."""

    def put(self, element: Any) -> None:
        """Buffer ``element`` for the end-of-round message to the consumer's worker."""
        outbox = self.outbox
        if type(element) is Watermark and not element.idle:
            at = self._watermark_at
            if at >= 0 and at == len(outbox) - 1:
                outbox[at] = ("d", self.cid, element)
                return
            self._watermark_at = len(outbox)
            outbox.append(("d", self.cid, element))
            return
        self._watermark_at = -1
        outbox.append(("d", self.cid, element))
        self.sent += 1

    def flushed(self) -> None:
        """Forget the buffered watermark: the outbox was sent, nothing in it is left to merge with."""
        self._watermark_at = -1

    def has_room(self) -> bool:
        """Whether fewer than ``capacity`` credited elements are put and unread by the consumer."""
        return self.sent - self.acked < self.capacity

    def poll(self) -> Any:
        """Refuse: this end is written only."""
        msg = "the producer end of a channel cannot be read"
        raise RuntimeError(msg)

    def __len__(self) -> int:
        return self.sent - self.acked


class CreditedInput:
    """The consumer end of a channel from another worker; every element read earns its producer a credit.

    Except a watermark, which took none (see :class:`CreditedOutput`). Credits
    go back with the next flush to the producer's worker, in bulk.
    """

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
        if type(element) is Watermark and not element.idle:
            return element
        cid = self.cid
        self.credits[cid] = self.credits.get(cid, 0) + 1
        return element

    def __len__(self) -> int:
        return len(self.queue)


class PeerTransport(Transport):
    """A worker's channel ends towards its peers, with one message per peer and scheduler round.

    What pipes between processes and calls between Ray actors share: local
    channels for channels inside the worker, a :class:`CreditedOutput` and a
    :class:`CreditedInput` per cross-worker channel end, one outbox per peer
    that :meth:`flush` sends in a single message (every element of the round,
    then the credits earned), and :meth:`apply` for a peer's message.
    Subclasses say how a message travels (``ship``) and how it comes in.

    Why per round: a source step emits a batch and a watermark on every
    channel, and a consumer returns a credit for each; sent one by one that
    is four messages (four pickles, four system calls, four wakeups of the
    receiving worker) per batch and channel. Per round it is one each way.

    A round whose elements for a peer are all watermarks, with no credits to
    return, sends that peer nothing if the last message to it left less than
    :data:`WATERMARK_HOLD` seconds ago: the watermarks stay in the outbox,
    where each later one replaces its channel's, and leave with the next
    record batch, barrier or credit, the next round past the hold, or before
    this worker waits idle (``flush()`` without ``now``). A source subtask
    emits a watermark after every batch while a combiner holds its records:
    q7 of the Nexmark benchmark at parallelism 2 sent some 1,000 messages
    per worker and second, nine in ten of them a lone watermark, each one a
    pickle, two system calls and a wakeup of the peer and then a watermark
    advance there. A watermark only lets windows and timers fire; one held
    for a few milliseconds delays them by as much and changes no result
    (every record keeps its place before or after it on its channel).

    Wire format, one list per message: ``("d", cid, element)`` data on channel
    ``cid``; ``("c", cid, n)`` n credits back to its producer; anything else is
    a control message for the worker, queued in ``commands``.
    """

    def __init__(self, *, worker: int, worker_of: Callable[[int], int], capacity: int) -> None:
        self.worker = worker
        self.worker_of = worker_of
        self.capacity = capacity
        self.local: dict[ChannelId, LocalChannel] = {}
        self.inboxes: dict[ChannelId, deque] = {}
        self.outputs: dict[ChannelId, CreditedOutput] = {}
        self.outboxes: dict[int, list] = {}
        self.credits: dict[int, dict[ChannelId, int]] = {}
        self.commands: deque = deque()
        self.wakeup = threading.Event()
        self._shipped_at: dict[int, float] = {}
        """Per peer, the ``now`` of the last flush that sent it a message."""
        self._outputs_to: dict[int, list[CreditedOutput]] = {}
        """Per peer, the producer ends whose elements go into its outbox."""

    def channel(self, cid: ChannelId) -> ChannelEnd:
        """Return this worker's end of ``cid``: local, the producer end, or the consumer end."""
        src = self.worker_of(cid.src)
        dst = self.worker_of(cid.dst)
        if src == dst == self.worker:
            found = self.local.get(cid)
            if found is None:
                found = self.local[cid] = LocalChannel(self.capacity, str(cid))
            return found
        if src == self.worker:
            outbox = self.outboxes.setdefault(dst, [])
            out = self.outputs[cid] = CreditedOutput(outbox, cid, self.capacity)
            self._outputs_to.setdefault(dst, []).append(out)
            return out
        queue: deque = deque()
        self.inboxes[cid] = queue
        return CreditedInput(cid, queue, self.credits.setdefault(src, {}))

    def flush(self, now: float | None = None) -> None:
        """Send each peer, in one message, the elements buffered for it and the credits it earned.

        With ``now`` (the end of a scheduler round), an outbox of watermarks
        alone waits while the peer's last message is younger than
        :data:`WATERMARK_HOLD`; without it, everything goes.
        """
        for peer, messages in self._take(now):
            self._shipped_at[peer] = -math.inf if now is None else now
            self.ship(peer, messages)
            for out in self._outputs_to.get(peer, ()):
                out.flushed()

    def _take(self, now: float | None) -> Iterator[tuple[int, list]]:
        for peer, outbox in self.outboxes.items():
            credits = self.credits.get(peer)
            if not outbox and not credits:
                continue
            if (
                not credits
                and now is not None
                and now - self._shipped_at.get(peer, -math.inf) < WATERMARK_HOLD
                and all(type(m[2]) is Watermark and not m[2].idle for m in outbox)
            ):
                continue
            messages = list(outbox)
            outbox.clear()
            if credits:
                messages.extend(("c", cid, n) for cid, n in credits.items())
                credits.clear()
            yield peer, messages
        for peer, credits in self.credits.items():
            if credits and peer not in self.outboxes:
                messages = [("c", cid, n) for cid, n in credits.items()]
                credits.clear()
                yield peer, messages

    def wait(self, timeout: float) -> None:
        """Sleep until ``wakeup`` is set (a transport that takes messages in on a thread of its own sets it).

        A message arriving after the clear sets it again and wakes the next
        wait; one that arrived before is already applied, and the next round
        handles it.
        """
        self.wakeup.wait(timeout)
        self.wakeup.clear()

    def take_in(self) -> bool:
        """Apply the peers' messages that arrived but are not applied yet; return whether there were any.

        Called by the worker's loop once per round. A transport that applies
        messages as they arrive (Ray) has nothing to do here.
        """
        return False

    @abstractmethod
    def ship(self, peer: int, messages: list) -> None:
        """Send one round's ``messages`` to worker ``peer``, after every earlier message to it."""

    def apply(self, messages: list) -> None:
        """Take one message of a peer (or the runner): elements to inboxes, credits, commands.

        A watermark whose inbox ends with a watermark replaces it (idle markers
        excepted), as on the producer's side: that bounds the watermarks
        queued, which take no credit.
        """
        inboxes = self.inboxes
        for message in messages:
            kind = message[0]
            if kind == "d":
                element = message[2]
                inbox = inboxes[message[1]]
                if (
                    type(element) is Watermark
                    and not element.idle
                    and inbox
                    and type(inbox[-1]) is Watermark
                    and not inbox[-1].idle
                ):
                    inbox[-1] = element
                else:
                    inbox.append(element)
            elif kind == "c":
                self.outputs[message[1]].acked += message[2]
            else:
                self.commands.append(message)
