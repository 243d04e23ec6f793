"""The one loop that steps subtasks; every executor runs its subtasks with it.

It does not know where the coordinator is or how elements move: the local
executor reports snapshot acks to its coordinator in-process, a worker process
sends them over its control pipe; both plug that in as callbacks. Transports
(:mod:`onceflow.engine.transport`) move the elements; the scheduler only calls
``Subtask.step``.

Why one thread stepping subtasks rather than a thread per subtask: in CPython
threads share one core anyway and pay for a lock hand-off on every queue
operation; a loop pays one method call per batch and is deterministic.
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from onceflow.engine.task import Subtask

__all__ = ["SWITCH_INTERVAL", "AckSource", "Round", "Scheduler"]

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (CPython's default: 0.005).

This loop never blocks while it has work, so the snapshot writer (and the
local executor's checkpoint completion) get the GIL back after each of their
file operations only when the interval forces a switch: at 5 ms, a small
checkpoint of a process worker took so long that a 0.1 s interval completed
2 checkpoints in a 5 s run. A switch costs microseconds, and happens only
while another thread waits.
"""


class Round(Enum):
    """What the executor's ``end_round`` callback found after a round."""

    IDLE = "idle"
    """Nothing new from outside: wait if the subtasks made no progress either."""
    PROGRESSED = "progressed"
    """Something arrived (a checkpoint trigger): go round again at once."""
    STOP = "stop"
    """The executor is done with this loop: return."""


class AckSource(Protocol):
    """Where finished snapshot writes are reported (``SnapshotWriter``): its queue and its count."""

    acks: queue.SimpleQueue[Any]
    outstanding: int


class Scheduler:
    """Steps runnable subtasks round-robin, one batch at a time, until told to stop.

    One round:

    1. step every subtask: a source reads one batch (so sources cannot flood
       the channels ahead of the rest), any other subtask consumes input until
       it has none or its outputs are full;
    2. tick processing-time subtasks (timers, idleness);
    3. drain the snapshot writer's acks into ``acknowledge``;
    4. ``end_round(now)``: the executor's part (coordinator or control pipe);
    5. when neither the subtasks nor ``end_round`` progressed, ``idle(n)``
       for the ``n``-th idle round in a row; the executor decides how to wait.

    Cost: per batch, one ``step`` call; everything else is per round.
    """

    def __init__(
        self,
        subtasks: list[Subtask],
        writer: AckSource,
        *,
        acknowledge: Callable[[Any], None],
        end_round: Callable[[float], Round],
        idle: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subtasks = subtasks
        self.ticking = [st for st in subtasks if st.needs_ticks]
        self.writer = writer
        self._acknowledge = acknowledge
        self._end_round = end_round
        self._idle = idle
        self._clock = clock

    def run(self) -> None:
        """Loop rounds until ``end_round`` returns ``Round.STOP``; exceptions propagate.

        While it loops, the interpreter's thread switch interval is
        :data:`SWITCH_INTERVAL` (restored after).
        """
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            self._loop()
        finally:
            sys.setswitchinterval(previous)

    def _loop(self) -> None:
        subtasks = self.subtasks
        ticking = self.ticking
        writer = self.writer
        clock = self._clock
        end_round = self._end_round
        idle_rounds = 0
        while True:
            # Step 1
            progressed = False
            for subtask in subtasks:
                while subtask.step():
                    progressed = True
                    if subtask.reader is not None:
                        break
            # Step 2
            now = clock()
            for subtask in ticking:
                subtask.tick(now)
            # Step 3
            if writer.outstanding:
                self.drain_acks()
            # Step 4
            outcome = end_round(now)
            if outcome is Round.STOP:
                return
            # Step 5
            if progressed or outcome is Round.PROGRESSED:
                idle_rounds = 0
                continue
            idle_rounds += 1
            self._idle(idle_rounds)

    def drain_acks(self, timeout: float | None = None) -> bool:
        """Hand every queued ack to ``acknowledge``; wait up to ``timeout`` for the first one.

        Return whether there was any.
        """
        writer = self.writer
        acks = writer.acks
        got = False
        while True:
            try:
                ack = acks.get(timeout=timeout) if timeout and not got else acks.get_nowait()
            except queue.Empty:
                return got
            got = True
            writer.outstanding -= 1
            self._acknowledge(ack)
