"""Stateless per-record transforms, each a batch-at-a-time loop over a user function.

Cost per record: one call of the user function inside a list comprehension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from operators.base import Operator


class MapOperator(Operator):
    """Apply ``fn`` to every record."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process_batch(self, records: list) -> list:
        """Return ``[fn(r) for r in records]``."""
        return list(map(self.fn, records))


class FilterOperator(Operator):
    """Keep the records for which ``fn`` is truthy."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process_batch(self, records: list) -> list:
        """Return the records that pass."""
        return list(filter(self.fn, records))


class FlatMapOperator(Operator):
    """Replace every record by the items of the iterable ``fn`` returns."""

    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def process_batch(self, records: list) -> list:
        """Return the concatenated outputs."""
        fn = self.fn
        return [item for record in records for item in fn(record)]


class MapBatchesOperator(Operator):
    """Apply ``fn`` to a whole batch (a list, or an Arrow RecordBatch).

    ``fn`` returns a list, an Arrow RecordBatch/Table (passed on as rows of
    dicts unless the next operator is also ``map_batches``), or None for
    nothing. The vectorized fast path for Arrow data.
    """

    def __init__(self, fn: Callable[[Any], Any], *, arrow: bool = False) -> None:
        self.fn = fn
        self.arrow = arrow

    def process_batch(self, records: list) -> list:
        """Return ``fn(batch)`` as a list of records."""
        if self.arrow:
            import pyarrow as pa

            batch: Any = records
            if isinstance(records, list):
                batch = pa.RecordBatch.from_pylist(records) if records else None
            if batch is None:
                return []
            out = self.fn(batch)
        else:
            out = self.fn(records)
        if out is None:
            return []
        if isinstance(out, list):
            return out
        to_pylist = getattr(out, "to_pylist", None)
        if to_pylist is not None:
            return to_pylist()
        return list(out)
