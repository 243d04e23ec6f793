"""Transport between worker processes: socket pairs, one message per peer and round, credits per channel.

Every pair of workers shares one socket pair (a full mesh); each worker also
has a control pipe to the runner. A channel with both ends in one worker is a
``LocalChannel``; across workers the elements and credits of a scheduler round
for one peer are pickled onto the pair's socket as one length-prefixed frame
(:class:`~onceflow.engine.transport.peers.PeerTransport`, whose wire format
this is). Each cross-process channel has its own credit count (``capacity``
elements in flight), so backpressure holds across processes without a shared
budget that a blocked channel could starve.

The worker's own loop does all the reading and writing, on non-blocking
sockets, with no thread besides it. Why not a receiver thread: a thread that
reads each peer's message must take the GIL for it, and a worker that has just
released the GIL to write its own message then waits for that thread to give
it back; on a busy machine the thread can be descheduled while holding it.
Those waits cost the worker loops of a two-worker run more than the work they
shared. Why two workers sending to each other never block each other: a
frame the kernel does not take at once waits in this worker's ``_unsent``
buffer, and the rest goes out at the next ``take_in`` (every round) or when
``wait`` sees the socket writable; meanwhile this worker keeps reading. The
runner's control messages are single tuples, queued in ``commands`` by
``take_in``.
"""

from __future__ import annotations

import contextlib
import pickle
import selectors
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection

from onceflow.engine.transport.peers import PeerTransport

__all__ = ["PipeTransport", "connect_workers"]

_FRAME = struct.Struct("<Q")
"""The length of a frame's pickled message, ahead of it."""
_READ_SIZE = 1 << 20


class PipeTransport(PeerTransport):
    """One worker's sockets to its peers and its pipe to the runner, read and written by the worker's loop.

    Life cycle: create, let subtasks take their channel ends with ``channel``,
    then ``start`` (only then does every inbox exist). The worker's loop calls
    ``take_in`` and ``flush`` once per round and ``wait`` when it has nothing to do.
    """

    def __init__(
        self,
        control: Connection,
        peers: dict[int, socket.socket],
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
        self._unsent: dict[int, bytearray] = {peer: bytearray() for peer in peers}
        """Per peer, the bytes of frames its socket did not take yet (in order)."""
        self._unread: dict[int, bytearray] = {peer: bytearray() for peer in peers}
        """Per peer, bytes read that do not make a whole frame yet."""
        self._selector = selectors.DefaultSelector()

    def start(self) -> None:
        """Make the peer sockets non-blocking and watch them and the control pipe; channel ends exist now."""
        for peer, sock in self.peers.items():
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, peer)
        self._selector.register(self.control, selectors.EVENT_READ, None)

    # -- sending ---------------------------------------------------------------

    def ship(self, peer: int, messages: list) -> None:
        """Write one round's messages to ``peer`` as a frame; what the socket does not take waits."""
        data = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        frame = _FRAME.pack(len(data)) + data
        unsent = self._unsent[peer]
        if not unsent:
            try:
                sent = self.peers[peer].send(frame)
            except BlockingIOError:
                sent = 0
            if sent == len(frame):
                return
            frame = frame[sent:]
        unsent += frame
        self._send_unsent(peer)

    def _send_unsent(self, peer: int) -> None:
        """Write what waits for ``peer`` until its socket is full; watch it for room while some is left."""
        unsent = self._unsent[peer]
        sock = self.peers[peer]
        while unsent:
            try:
                sent = sock.send(unsent)
            except BlockingIOError:
                self._watch(peer, writable=True)
                return
            del unsent[:sent]
        self._watch(peer, writable=False)

    def _watch(self, peer: int, *, writable: bool) -> None:
        events = selectors.EVENT_READ | selectors.EVENT_WRITE if writable else selectors.EVENT_READ
        with contextlib.suppress(KeyError):  # a peer that closed its end is no longer watched
            if self._selector.get_key(self.peers[peer]).events != events:
                self._selector.modify(self.peers[peer], events, peer)

    def send(self, message: tuple) -> None:
        """Send a control message to the runner."""
        self.control.send(message)

    # -- receiving -------------------------------------------------------------

    def take_in(self) -> bool:
        """Queue the runner's commands, apply the peers' whole frames, send what waits; whether any came."""
        got = self._take_commands()
        for peer, sock in self.peers.items():
            if self._unsent[peer]:
                self._send_unsent(peer)
            got = self._read(peer, sock) or got
        return got

    def _take_commands(self) -> bool:
        if self.closed:
            return False
        control = self.control
        commands = self.commands
        got = False
        try:
            while control.poll():
                commands.append(control.recv())
                got = True
        except (EOFError, OSError):
            self.closed = True
            commands.append(("stop",))
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(control)
            return True
        return got

    def _read(self, peer: int, sock: socket.socket) -> bool:
        """Read what ``peer`` sent and apply every whole frame; a peer that closed its end is let go."""
        unread = self._unread[peer]
        while True:
            try:
                chunk = sock.recv(_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # reset by a peer that died: the runner sees its exit
                chunk = b""
            if not chunk:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                break
            unread += chunk
            if len(chunk) < _READ_SIZE:
                break
        if len(unread) < _FRAME.size:
            return False
        start = 0
        size = len(unread)
        with memoryview(unread) as view:
            while size - start >= _FRAME.size:
                (length,) = _FRAME.unpack_from(view, start)
                end = start + _FRAME.size + length
                if end > size:
                    break
                self.apply(pickle.loads(view[start + _FRAME.size : end]))
                start = end
        del unread[:start]
        return start > 0

    def wait(self, timeout: float) -> None:
        """Sleep until a peer or the runner sent something, or for ``timeout``; send what waits meanwhile."""
        for key, events in self._selector.select(timeout):
            if events & selectors.EVENT_WRITE:
                self._send_unsent(key.data)


def connect_workers(workers: int) -> dict[tuple[int, int], socket.socket]:
    """Create the full mesh of socket pairs: ``ends[a, b]`` is worker ``a``'s end towards ``b``."""
    ends: dict[tuple[int, int], socket.socket] = {}
    for a in range(workers):
        for b in range(a + 1, workers):
            ends[a, b], ends[b, a] = socket.socketpair()
            _widen(ends[a, b], ends[b, a])
    return ends


def _widen(*socks: socket.socket, size: int = 4 << 20) -> None:
    """Give a socket pair large kernel buffers, so a frame seldom has to wait in ``_unsent``."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
