"""Keep one subtask's named keyed state in plain dicts on the heap.

This module only holds state in memory. Writing it to storage is
``arrow_snapshot``'s (and, for incremental checkpoints, ``changelog``'s) job,
and deciding when to snapshot is the engine's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onceflow.state_backends.disk import DiskSnapshot

FULL = "full"
"""A capture of every entry, written as one state file per subtask (full checkpoints)."""
BASE = "base"
"""A capture of every entry that later deltas build on (incremental checkpoints)."""
DELTA = "delta"
"""A capture of the entries changed or deleted since the previous capture."""


@dataclass(frozen=True)
class KeyedCapture:
    """What :meth:`HeapKeyedState.capture` took at a barrier.

    ``kind`` is :data:`FULL`, :data:`BASE` or :data:`DELTA`. ``tables`` holds
    every entry (full, base) or the changed entries (delta); ``deleted`` holds
    the keys deleted since the previous capture (delta only), per state name.
    """

    kind: str
    tables: dict[str, dict[Any, Any]] | DiskSnapshot
    deleted: dict[str, list[Any]] = field(default_factory=dict)


class HeapKeyedState:
    """Named ``{key: value}`` tables for one operator subtask.

    Operators fetch a table once with :meth:`table` and then read and write the
    returned dict directly: the per-record cost is a plain dict operation, with no
    wrapper in between. :meth:`snapshot` and :meth:`capture` copy the tables
    shallowly: the values are shared with the live tables, so the operator
    that captures copies any value that could still change in place
    (``onceflow.operators.event_time.frozen_values``) before the background
    writer serializes it.

    Incremental checkpoints need the keys changed since the previous capture.
    Rather than wrapping every dict write, an operator adds the keys of a whole
    batch to the table's dirty set (:meth:`dirty_keys`: one C-level
    ``set.update`` per batch) and :meth:`capture` looks only at those keys, so
    the work at a barrier is proportional to what changed, not to the state.
    A key marked dirty but left unchanged is merely written again.
    """

    __slots__ = ("tables", "incremental", "_dirty", "_base_needed")

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self.incremental = False
        """Set by the operator in ``open`` when the run takes incremental checkpoints."""
        self._dirty: dict[str, set[Any]] = {}
        self._base_needed = False
        """Only after :meth:`restore`: a fresh state starts empty, so its first delta is all of it."""

    def table(self, name: str) -> dict[Any, Any]:
        """Return the live dict for state ``name``, creating it on first use.

        The same dict object is returned on every call, including after
        :meth:`restore`, so an operator may fetch it once in ``open``.
        """
        try:
            return self.tables[name]
        except KeyError:
            table: dict[Any, Any] = {}
            self.tables[name] = table
            return table

    def dirty_keys(self, name: str) -> set[Any] | None:
        """Return the live set of keys of ``name`` changed since the last capture; None unless incremental.

        The same set object is returned until :meth:`restore`, so an operator
        may fetch it once in ``open`` and ``update`` it per batch.
        """
        if not self.incremental:
            return None
        self.table(name)
        try:
            return self._dirty[name]
        except KeyError:
            keys: set[Any] = set()
            self._dirty[name] = keys
            return keys

    def prepare(self, name: str, keys: Iterable[Any]) -> dict[Any, Any]:
        """Return the dict an operator reads and writes for a batch with ``keys``: the live table.

        The disk backend loads the batch's keys here; on the heap every key is
        already in the table.
        """
        return self.table(name)

    def done(self, name: str, keys: Iterable[Any]) -> None:
        """End a batch with ``keys``; with incremental checkpoints they are marked changed (a set update)."""
        if self.incremental:
            dirty = self.dirty_keys(name)
            if dirty is not None:
                dirty.update(keys)

    def close(self) -> None:
        """Nothing to release on the heap."""

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """Capture every table synchronously at a barrier.

        Each table is copied shallowly (O(keys), no value copies), so later puts
        and deletes never leak into the snapshot that a background writer is
        serializing. A value changed in place would leak: the operator copies
        such values (see the class doc).
        """
        return {name: dict(table) for name, table in self.tables.items()}

    def capture(self) -> KeyedCapture:
        """Capture the state at a barrier: everything (full or base) or the changes (delta).

        Incremental: the first capture after a restore is a base (the files it
        would build on belong to another attempt and possibly another
        parallelism); every other one holds the dirty keys' current values and
        the dirty keys now absent (deleted), and empties the dirty sets in
        place. A state that started empty needs no base: its first delta holds
        every key written since.
        """
        if not self.incremental:
            return KeyedCapture(FULL, self.snapshot())
        if self._base_needed:
            self._base_needed = False
            for keys in self._dirty.values():
                keys.clear()
            return KeyedCapture(BASE, self.snapshot())
        changed: dict[str, dict[Any, Any]] = {}
        deleted: dict[str, list[Any]] = {}
        for name, keys in self._dirty.items():
            if not keys:
                continue
            table = self.tables[name]
            present = {k: table[k] for k in keys if k in table}
            if present:
                changed[name] = present
            if len(present) < len(keys):
                deleted[name] = [k for k in keys if k not in table]
            keys.clear()
        return KeyedCapture(DELTA, changed, deleted)

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Replace all state with a copy of ``tables``.

        Called after ``open`` and before any record. The live dicts are refilled
        in place rather than swapped, because operators may already hold them
        (fetched in ``open``); tables absent from ``tables`` end up empty. The
        next incremental capture is a base.
        """
        for name, table in self.tables.items():
            if name not in tables:
                table.clear()
        for name, restored in tables.items():
            table = self.table(name)
            table.clear()
            table.update(restored)
        for keys in self._dirty.values():
            keys.clear()
        self._base_needed = True

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())
