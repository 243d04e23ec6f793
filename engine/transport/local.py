"""In-process transport: a bounded deque per channel, for subtasks stepped by one thread."""

from __future__ import annotations

from collections import deque
from typing import Any

from onceflow.engine.transport.base import ChannelId, Transport


class LocalChannel:
    """A deque bounded by ``capacity`` elements, for producers and consumers in one thread.

    The bound is checked before a producer steps, so one step may overshoot it
    by the output of a single batch; memory stays bounded all the same. Cost
    per batch: one ``deque.append`` and one ``popleft``, no lock.
    """

    __slots__ = ("queue", "capacity", "name", "put", "poll_left")

    def __init__(self, capacity: int, name: str = "") -> None:
        self.queue: deque = deque()
        self.capacity = capacity
        self.name = name
        self.put = self.queue.append
        self.poll_left = self.queue.popleft

    def poll(self) -> Any:
        """Return the oldest element or None."""
        return self.poll_left() if self.queue else None

    def has_room(self) -> bool:
        """Whether fewer than ``capacity`` elements are queued."""
        return len(self.queue) < self.capacity

    def __len__(self) -> int:
        return len(self.queue)


class LocalTransport(Transport):
    """Every channel inside this process: one ``LocalChannel`` per channel, created on first use."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.channels: dict[ChannelId, LocalChannel] = {}

    def channel(self, cid: ChannelId) -> LocalChannel:
        """Return the channel ``cid`` (the same object for its producer and its consumer)."""
        found = self.channels.get(cid)
        if found is None:
            found = self.channels[cid] = LocalChannel(self.capacity, str(cid))
        return found
