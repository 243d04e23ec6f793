"""Stateless per-record transforms, each a batch-at-a-time loop over a user function.

Cost per record: one call of the user function inside a list comprehension.
When the user function raises, the operator tells the runtime which record
failed (:func:`~onceflow.operators.bad_records.failure_at`); the outputs of
the records before it are recomputed only if the runtime goes on with the
batch, which is safe because these functions are pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from onceflow.operators.bad_records import failure_at
from onceflow.operators.base import Capability, Operator
from onceflow.operators.formats import rows_to_batch


class _OneCallPerRecord(Operator):
    """A batch loop over ``fn`` with a built-in iterator (``map`` or ``filter``) in C.

    On an exception the iterator's progress says which record failed, so the
    function is never called again just to find it.
    """

    capabilities = Capability.NONE
    _loop: Callable[..., Iterable[Any]]

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process_batch(self, records: list) -> list:
        """Return the batch's output; raise ``BatchFailure`` if ``fn`` raises."""
        remaining = iter(records)
        try:
            return list(self._loop(self.fn, remaining))
        except Exception as exc:
            raise failure_at(records, remaining, exc, self._apply) from None

    def _apply(self, records: list) -> list:
        return list(self._loop(self.fn, records))


class MapOperator(_OneCallPerRecord):
    """Apply ``fn`` to every record: ``[fn(r) for r in records]``."""

    _loop = map


class FilterOperator(_OneCallPerRecord):
    """Keep the records for which ``fn`` is truthy."""

    _loop = filter


class FlatMapOperator(Operator):
    """Replace every record by the items of the iterable ``fn`` returns."""

    capabilities = Capability.NONE

    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def process_batch(self, records: list) -> list:
        """Return the concatenated outputs; raise ``BatchFailure`` if ``fn`` (or its iterable) raises."""
        fn = self.fn
        remaining = iter(records)
        try:
            return [item for record in remaining for item in fn(record)]
        except Exception as exc:
            raise failure_at(records, remaining, exc, self._apply) from None

    def _apply(self, records: list) -> list:
        fn = self.fn
        return [item for record in records for item in fn(record)]


class MapBatchesOperator(Operator):
    """Apply ``fn`` to a whole batch: the vectorized fast path.

    With ``arrow=True``, ``fn`` receives an Arrow RecordBatch (rows of dicts are
    converted once) and may return a RecordBatch or Table, which travels on as
    Arrow to the next ``map_batches(arrow=True)`` or Arrow-aware sink and is
    turned into rows (dicts) only where an operator needs rows. Without it,
    ``fn`` gets and returns a list. None means no output.
    """

    capabilities = Capability.ARROW_INPUT
    """Narrowed to none without ``arrow=True``."""

    def __init__(self, fn: Callable[[Any], Any], *, arrow: bool = False) -> None:
        self.fn = fn
        self.arrow = arrow
        if not arrow:
            self.capabilities = Capability.NONE

    def process_batch(self, records: Any) -> Any:
        """Return ``fn(batch)``: a list, or an Arrow RecordBatch with ``arrow=True``."""
        if self.arrow:
            batch: Any = records
            if type(records) is list:
                batch = rows_to_batch(records)
            out = self.fn(batch)
            if out is None:
                return []
            if hasattr(out, "to_batches"):  # a Table: one batch downstream
                out = out.combine_chunks().to_batches()
                return out[0] if len(out) == 1 else [r for b in out for r in b.to_pylist()]
            if hasattr(out, "num_rows"):
                return out
            return list(out)
        out = self.fn(records if type(records) is list else records.to_pylist())
        if out is None:
            return []
        return out if type(out) is list else list(out)
