"""Barrier alignment for a subtask with several input channels; pure and tiny.

A channel that delivered ``Barrier(n)`` is not read again until every input
delivered it; then the subtask snapshots and forwards the barrier. A newer
barrier overtaking an unfinished alignment abandons the older checkpoint
(it was aborted by the coordinator); barriers of finished or abandoned
checkpoints, including an older barrier arriving after a newer one, are ignored.
"""

from __future__ import annotations

from enum import Enum


class AlignmentResult(Enum):
    """What a subtask must do after a barrier arrived."""

    IGNORE = "ignore"
    WAIT = "wait"
    ALIGNED = "aligned"


class BarrierAligner:
    """Tracks which inputs delivered the pending checkpoint's barrier."""

    __slots__ = ("blocked", "pending_id", "_count", "last_id")

    def __init__(self, num_inputs: int) -> None:
        self.blocked = [False] * num_inputs
        self.pending_id: int | None = None
        self._count = 0
        self.last_id = 0

    def on_barrier(self, channel: int, checkpoint_id: int) -> AlignmentResult:
        """Record that ``channel`` delivered ``Barrier(checkpoint_id)``."""
        if checkpoint_id <= self.last_id:
            return AlignmentResult.IGNORE
        if self.pending_id is not None and checkpoint_id < self.pending_id:
            # A newer barrier already abandoned this checkpoint; counting its late
            # barrier would align the newer one before every input delivered it.
            return AlignmentResult.IGNORE
        if self.pending_id is not None and checkpoint_id > self.pending_id:
            self._reset()
        if self.pending_id is None:
            self.pending_id = checkpoint_id
        if self.blocked[channel]:
            return AlignmentResult.WAIT
        self.blocked[channel] = True
        self._count += 1
        if self._count == len(self.blocked):
            self.last_id = checkpoint_id
            self._reset()
            return AlignmentResult.ALIGNED
        return AlignmentResult.WAIT

    def abort(self, checkpoint_id: int) -> None:
        """Abandon ``checkpoint_id``: unblock its channels and ignore its late barriers."""
        if self.pending_id is not None and self.pending_id <= checkpoint_id:
            self._reset()
        self.last_id = max(self.last_id, checkpoint_id)

    def _reset(self) -> None:
        self.pending_id = None
        self._count = 0
        self.blocked = [False] * len(self.blocked)
