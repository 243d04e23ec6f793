"""Keep one subtask's named keyed state in plain dicts on the heap.

This module only holds state in memory. Writing it to storage is
``arrow_snapshot``'s job, and deciding when to snapshot is the engine's.
"""

from __future__ import annotations

from typing import Any


class HeapKeyedState:
    """Named ``{key: value}`` tables for one operator subtask.

    Operators fetch a table once with :meth:`table` and then read and write the
    returned dict directly: the per-record cost is a plain dict operation, with no
    wrapper in between. Values are treated as immutable by contract (an operator
    replaces a value instead of mutating it in place), which is what makes the
    shallow :meth:`snapshot` safe while processing goes on.
    """

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}

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

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """Capture every table synchronously at a barrier.

        Each table is copied shallowly (O(keys), no value copies), so later puts
        and deletes never leak into the snapshot that a background writer is
        serializing. In-place mutation of a value would leak; the immutability
        contract forbids it.
        """
        return {name: dict(table) for name, table in self.tables.items()}

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Replace all state with a copy of ``tables``.

        Called after ``open`` and before any record. The live dicts are refilled
        in place rather than swapped, because operators may already hold them
        (fetched in ``open``); tables absent from ``tables`` end up empty.
        """
        for name, table in self.tables.items():
            if name not in tables:
                table.clear()
        for name, restored in tables.items():
            table = self.table(name)
            table.clear()
            table.update(restored)

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())
