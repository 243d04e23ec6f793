"""The transport seam: which channels exist and what a channel end must offer.

A transport decides how batches and control elements (barriers, watermarks,
end of data) move from one subtask to another: a deque inside one process,
pipes between processes, or (later) Ray between actors. It does not decide
where subtasks run or when they step; executors place subtasks and the
scheduler steps them. A new executor implements a :class:`Transport` and its
placement, nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, order=True)
class ChannelId:
    """One channel: edge number ``edge`` (in plan order), upstream subtask ``src``, downstream ``dst``."""

    edge: int
    src: int
    dst: int


class ChannelEnd(Protocol):
    """One end of a FIFO channel from one producer subtask to one consumer subtask.

    The producer calls ``has_room`` before it steps and ``put`` while it steps;
    the consumer calls ``poll``. Every element put is polled exactly once, in
    the order put: barrier alignment relies on that order. All four methods run
    on the scheduler's thread and are called once per batch, never per record.
    """

    def put(self, element: Any) -> None:
        """Append an element; the producer checked ``has_room`` before its step."""

    def poll(self) -> Any:
        """Remove and return the oldest element, or None when none has arrived."""

    def has_room(self) -> bool:
        """Whether the producer may step again (False is backpressure)."""

    def __len__(self) -> int:
        """Elements queued or in flight (for diagnostics)."""


class Transport(ABC):
    """Supplies this process's end of every channel its subtasks read or write."""

    @abstractmethod
    def channel(self, cid: ChannelId) -> ChannelEnd:
        """Return the end of channel ``cid`` that a subtask of this process uses.

        Called once per end while subtasks are built, before any element
        moves; a channel with both ends in this process returns one object for
        both calls.
        """


class WorkerTransport(Protocol):
    """What a worker outside the runner needs of its transport besides channel ends.

    ``commands`` holds the runner's control messages in the order sent,
    ``wait`` sleeps until anything may have arrived, ``send`` reports to the
    runner, and ``closed`` says the runner is gone (send nothing more).
    """

    commands: deque
    closed: bool

    def channel(self, cid: ChannelId) -> ChannelEnd:
        """Return this worker's end of ``cid``."""

    def flush(self, now: float | None = None) -> None:
        """Send each peer what this round buffered for it (elements and credits); once per round.

        ``now``: the round's clock; a transport may then hold back what only
        carries watermarks for a moment. Without it, everything goes.
        """

    def take_in(self) -> bool:
        """Apply what peers sent since the last call; return whether anything came. Once per round."""

    def start(self) -> None:
        """Start taking elements in; every channel end was taken before."""

    def wait(self, timeout: float) -> None:
        """Sleep until something may have arrived (elements, credits, commands), at most ``timeout`` s."""

    def send(self, message: tuple) -> None:
        """Send a report to the runner."""
