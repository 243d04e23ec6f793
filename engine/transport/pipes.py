"""Transport between worker processes: socket pipes, one message per peer and round, credits per channel.

Every pair of workers shares one duplex pipe (a full mesh); each worker also
has a control pipe to the runner. A channel with both ends in one worker is a
``LocalChannel``; across workers the elements and credits of a scheduler round
for one peer are pickled (protocol 5) onto the pair's pipe as one message
(:class:`~onceflow.engine.transport.peers.PeerTransport`, whose wire format
this is). Each cross-process channel has its own credit count (``capacity``
elements in flight), so backpressure holds across processes without a shared
budget that a blocked channel could starve. A receiver thread per worker
drains every pipe it reads, so two workers sending to each other can never
block each other; it only reads a peer's message as bytes, and the worker's
loop unpickles it (``take_in``), so the receiver seldom needs the GIL the
loop holds while it steps subtasks (each hand-off of the GIL costs both
threads). The runner's control messages are single tuples, queued in
``commands`` by the receiver.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any

from onceflow.engine.transport.peers import PeerTransport

__all__ = ["PipeTransport", "connect_workers"]


class PipeTransport(PeerTransport):
    """One worker's pipes to its peers and the runner, and the thread that reads them.

    Life cycle: create, let subtasks take their channel ends with ``channel``,
    then ``start`` the receiver (only then does every inbox exist). The
    worker's loop calls ``flush`` at the end of every round, reads
    ``commands`` and waits on ``wakeup``, which the receiver sets after
    anything arrived.
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
        super().__init__(worker=worker, worker_of=worker_of, capacity=capacity)
        self.control = control
        self.peers = peers
        self.closed = False
        """The runner's end of the control pipe closed: stop, and send nothing more."""
        self._received: deque[bytes] = deque()
        """Peers' messages as read, pickled; the worker's loop applies them with ``take_in``."""
        self._thread = threading.Thread(target=self._receive, name="onceflow-receiver", daemon=True)

    def take_in(self) -> bool:
        """Unpickle and apply the peers' messages read since the last call; return whether there were any."""
        received = self._received
        if not received:
            return False
        while received:
            self.apply(pickle.loads(received.popleft()))
        return True

    def ship(self, peer: int, messages: list) -> None:
        """Pickle one round's messages onto the pipe to ``peer``."""
        self.peers[peer].send(messages)

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
        control = self.control
        conns: list[Any] = [control, *self.peers.values()]
        while conns:
            ready: list[Any] = wait(conns)
            for conn in ready:
                try:
                    if conn is not control:
                        self._received.append(conn.recv_bytes())
                        self.wakeup.set()
                        continue
                    message = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    if conn is control:
                        self.closed = True
                        self.commands.append(("stop",))
                        self.wakeup.set()
                    continue
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
