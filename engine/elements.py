"""What travels through channels: data batches and in-band control elements.

Channels carry these objects in FIFO order; that order is what makes a
barrier snapshot consistent. The runtime dispatches on ``type(element) is X``,
so these are small slotted classes rather than a hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass


class Batch:
    """A batch of records, their keys when it crossed a ``key_by``, and their event times if carried.

    Cost: one object per batch. ``records`` is a list (or an Arrow RecordBatch
    for ``map_batches``); ``keys`` is None or a list parallel to ``records``;
    ``timestamps`` is None or a list parallel to ``records``: the event time of
    each record of an operator that stamps its outputs
    (``Capability.TIMESTAMPED_OUTPUT``: a ``process`` window, a keyed or
    co-process function, a join), which no timestamp function could compute
    from records of any shape.
    """

    __slots__ = ("records", "keys", "timestamps")

    def __init__(self, records: list, keys: list | None = None, timestamps: list | None = None) -> None:
        self.records = records
        self.keys = keys
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Batch({len(self.records)} records{', keyed' if self.keys is not None else ''})"


@dataclass(frozen=True, slots=True)
class Barrier:
    """Checkpoint barrier ``checkpoint_id``; everything before it belongs to the checkpoint."""

    checkpoint_id: int
    final: bool = False


@dataclass(frozen=True, slots=True)
class Watermark:
    """No record with an event time below ``timestamp`` will follow on this channel.

    ``idle=True`` says the producer has gone quiet: consumers leave this channel
    out of their minimum until it sends records or a watermark again, so one
    idle split does not stall event time for the whole job.
    """

    timestamp: float
    idle: bool = False


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The producer will send no more records; barriers may still follow."""


END_OF_DATA = EndOfData()
