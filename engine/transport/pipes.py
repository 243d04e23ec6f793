"""Transport between worker processes: socket pipes with a credit count per channel.

Every pair of workers shares one duplex pipe (a full mesh); each worker also
has a control pipe to the runner. A channel with both ends in one worker is a
``LocalChannel``; across workers its elements are pickled (protocol 5) onto
the pair's pipe. Each cross-process channel has its own credit count
(``capacity`` elements in flight), so backpressure holds across processes
without a shared budget that a blocked channel could starve. A receiver thread
per worker drains every pipe it reads, so two workers sending to each other
can never block each other.

Wire format, one tuple per message: ``("d", cid, element)`` data on channel
``cid``; ``("c", cid, n)`` n credits back to its producer; anything else is a
control message for the worker, queued in ``commands``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any

from onceflow.engine.transport.base import ChannelEnd, ChannelId, CreditedOutput, Transport
from onceflow.engine.transport.local import LocalChannel

__all__ = ["PipeTransport", "RemoteInput", "RemoteOutput", "connect_workers"]


class RemoteOutput(CreditedOutput):
    """The producer end of a channel to another worker; ``capacity`` elements may be in flight."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection, cid: ChannelId, capacity: int) -> None:
        super().__init__(cid, capacity)
        self.conn = conn

    def put(self, element: Any) -> None:
        """Send an element (pickled) to the consumer's worker."""
        self.conn.send(("d", self.cid, element))
        self.sent += 1


class RemoteInput:
    """The consumer end of a channel from another worker; every element read returns a credit."""

    __slots__ = ("conn", "cid", "queue")

    def __init__(self, conn: Connection, cid: ChannelId, queue: deque) -> None:
        self.conn = conn
        self.cid = cid
        self.queue = queue

    def put(self, element: Any) -> None:
        """Refuse: this end is read only."""
        msg = "the consumer end of a channel cannot be written"
        raise RuntimeError(msg)

    def has_room(self) -> bool:
        """Return True: nothing is ever written to this end."""
        return True

    def poll(self) -> Any:
        """Return the oldest element received (and credit its producer), or None."""
        if not self.queue:
            return None
        element = self.queue.popleft()
        self.conn.send(("c", self.cid, 1))
        return element

    def __len__(self) -> int:
        return len(self.queue)


class PipeTransport(Transport):
    """One worker's pipes to its peers and the runner, and the thread that reads them.

    Life cycle: create, let subtasks take their channel ends with ``channel``,
    then ``start`` the receiver (only then does every inbox exist). The
    worker's loop reads ``commands`` and waits on ``wakeup``, which the
    receiver sets after anything arrived.
    """

    def __init__(
        self,
        control: Connection,
        peers: dict[int, Connection],
        *,
        worker: int,
        worker_of: Callable[[int], int],
        capacity: int,
    ) -> None:
        self.control = control
        self.peers = peers
        self.worker = worker
        self.worker_of = worker_of
        self.capacity = capacity
        self.local: dict[ChannelId, LocalChannel] = {}
        self.inboxes: dict[ChannelId, deque] = {}
        self.outputs: dict[ChannelId, RemoteOutput] = {}
        self.commands: deque = deque()
        self.wakeup = threading.Event()
        self.closed = False
        """The runner's end of the control pipe closed: stop, and send nothing more."""
        self._thread = threading.Thread(target=self._receive, name="onceflow-receiver", daemon=True)

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
            out = self.outputs[cid] = RemoteOutput(self.peers[dst], cid, self.capacity)
            return out
        queue: deque = deque()
        self.inboxes[cid] = queue
        return RemoteInput(self.peers[src], cid, queue)

    def send(self, message: tuple) -> None:
        """Send a control message to the runner."""
        self.control.send(message)

    def start(self) -> None:
        """Start reading; every channel end was taken before."""
        self._thread.start()

    def _receive(self) -> None:
        try:
            self._receive_loop()
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's main loop
            self.commands.append(("receiver-failed", exc))
            self.wakeup.set()

    def _receive_loop(self) -> None:
        conns: list[Any] = [self.control, *self.peers.values()]
        while conns:
            ready: list[Any] = wait(conns)
            for conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    if conn is self.control:
                        self.closed = True
                        self.commands.append(("stop",))
                        self.wakeup.set()
                    continue
                kind = message[0]
                if kind == "d":
                    self.inboxes[message[1]].append(message[2])
                elif kind == "c":
                    self.outputs[message[1]].acked += message[2]
                else:
                    self.commands.append(message)
                self.wakeup.set()


def connect_workers(ctx: BaseContext, workers: int) -> dict[tuple[int, int], Connection]:
    """Create the full mesh of duplex pipes: ``ends[a, b]`` is worker ``a``'s end towards ``b``."""
    ends: dict[tuple[int, int], Connection] = {}
    for a in range(workers):
        for b in range(a + 1, workers):
            ends[a, b], ends[b, a] = ctx.Pipe(duplex=True)
            _widen(ends[a, b], ends[b, a])
    return ends


def _widen(*conns: Connection, size: int = 4 << 20) -> None:
    """Give a socket pipe large kernel buffers so senders rarely block on a busy receiver."""
    for conn in conns:
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            sock.close()
