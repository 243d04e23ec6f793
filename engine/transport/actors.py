"""Transport between Ray actors: per-peer message lists sent as actor calls, with a credit count per channel.

A channel with both ends in one actor is a ``LocalChannel``. Across actors,
the elements and credits of a scheduler round for one peer leave as one actor
call (``deliver(sender, seq, messages)``), as every
:class:`~onceflow.engine.transport.peers.PeerTransport` sends them. Each
cross-actor channel has its own credit count (``capacity`` elements sent and
not yet read by the consumer), so backpressure holds across nodes and memory
stays bounded.

Ray runs an actor's calls on a thread pool and does not promise their order
(the actor must also serve calls while its scheduler loop runs), so every
sender numbers its calls and :meth:`RayTransport.receive` applies them in
that order; the driver's control messages come through the same path
(sender ``-1``). Messages arriving before the actor's subtasks exist are
held until :meth:`RayTransport.start`.

Wire format, inside one call: that of
:class:`~onceflow.engine.transport.peers.PeerTransport`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from onceflow.engine.transport.peers import PeerTransport

__all__ = ["RayTransport"]

DRIVER = -1
"""The sender number of the driver's control messages."""


Send = Callable[[int, int, list], None]
"""``send(peer, seq, messages)``: one actor call to worker ``peer`` (fire and forget)."""


class RayTransport(PeerTransport):
    """One actor's channel ends, its per-peer outboxes, and the ordered intake of calls from peers.

    Life cycle: create, let subtasks take their channel ends with ``channel``,
    then ``start`` (only then does every inbox exist). The worker's loop calls
    ``flush`` at the end of every round, reads ``commands`` and waits on
    ``wakeup``, which ``receive`` sets after anything arrived. ``send``
    queues a report for the driver, which collects them with ``take_reports``.
    """

    def __init__(self, *, worker: int, worker_of: Callable[[int], int], capacity: int, call: Send) -> None:
        super().__init__(worker=worker, worker_of=worker_of, capacity=capacity)
        self._call = call
        self._next_out: dict[int, int] = {}
        self.closed = False
        """Never set: the driver releases a Ray worker by ``stop`` or by killing the actor."""
        self._lock = threading.Lock()
        self._ready = False
        self._next_in: dict[int, int] = {}
        self._held: dict[int, dict[int, list]] = {}
        self._reports: deque = deque()
        self.reported = threading.Event()

    # -- sending ---------------------------------------------------------------

    def ship(self, peer: int, messages: list) -> None:
        """Send one round's messages to ``peer`` as a numbered actor call (fire and forget)."""
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
            self.apply(held.pop(expected))
            expected += 1
        self._next_in[sender] = expected
