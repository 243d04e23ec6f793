"""Keyed co-process functions: one keyed function over two inputs, with shared state and timers.

``KeyedStream.connect(other).process(fn)`` runs a :class:`KeyedCoProcessFunction`
(or any object with ``process_element1(value, ctx)``, ``process_element2(value,
ctx)`` and optionally ``on_timer(timestamp, ctx)``)::

    class MatchPayments(KeyedCoProcessFunction):
        def process_element1(self, order, ctx):       # first input: orders
            paid = ctx.value_state("paid").value()
            if paid is not None:
                return [(order["id"], paid)]
            ctx.value_state("order").update(order)

        def process_element2(self, payment, ctx):     # second input: payments
            order = ctx.value_state("order").value()
            if order is not None:
                return [(order["id"], payment["amount"])]
            ctx.value_state("paid").update(payment["amount"])

Both inputs are keyed; records of equal keys (by the stable hash) reach the
same subtask and see the same ``ctx`` state and timers, exactly as in a
:class:`~onceflow.operators.process_function.KeyedProcessFunction`. The
operator's watermark is the minimum of the two inputs' (an idle input does not
hold it back) and a checkpoint barrier is aligned across both, which the task
does for every operator with several input channels.

Keys of the two inputs meet only if they are equal: an ``int`` key on one side
never meets the ``str`` of the same digits on the other. The operator compares
the kinds of the first keys it sees on each side and fails with both inputs
named when they differ, instead of silently joining nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from onceflow.operators.base import Capability
from onceflow.operators.event_time import LateRecords
from onceflow.operators.process_function import KeyedProcessOperator, ProcessContext

__all__ = ["KeyedCoProcessFunction", "KeyedCoProcessOperator", "key_kind"]


class KeyedCoProcessFunction:
    """Base class of keyed co-process functions; override ``process_element1``/``2`` and maybe ``on_timer``.

    ``process_element1`` handles the first input's records (the stream
    ``connect`` was called on), ``process_element2`` the second's. One copy
    runs per subtask; keep per-key data in ``ctx`` state.
    """

    def process_element1(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None:
        """Handle one record of the first input with key ``ctx.key``; return records to emit."""
        raise NotImplementedError

    def process_element2(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None:
        """Handle one record of the second input with key ``ctx.key``; return records to emit."""
        raise NotImplementedError

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> Iterable[Any] | None:
        """Handle a timer of key ``ctx.key`` firing at ``timestamp``; return records to emit."""
        return None


_NUMBER = "number (int, float or bool)"


def key_kind(key: Any) -> str:
    """Name the kind of a key for comparing the two inputs: equal keys always have the same kind.

    ``1``, ``1.0`` and ``True`` are one key, so numbers are one kind; a tuple's
    kind is its length and the kinds of its items.
    """
    t = type(key)
    if t is int or t is float or t is bool:
        return _NUMBER
    if t is tuple:
        return "tuple(" + ", ".join(key_kind(k) for k in key) + ")"
    return t.__name__


class KeyedCoProcessOperator(KeyedProcessOperator):
    """Runs a keyed co-process function over two keyed inputs with one state and one timer service.

    The first input's batches arrive through ``process_keyed_batch``, the
    second's through ``process_keyed_batch2`` (``Capability.TWO_INPUTS``);
    snapshot, restore and rescale are the keyed process operator's. Cost per
    record is the same as a keyed process function's; the key-kind check
    runs on the first batch of each input only.
    """

    capabilities = KeyedProcessOperator.capabilities | Capability.TWO_INPUTS
    element_methods = ("process_element1", "process_element2")

    def __init__(
        self,
        fn: Any,
        timestamp_fns: tuple[Callable[[Any], float] | None, Callable[[Any], float] | None] = (None, None),
        *,
        input_names: tuple[str, str] = ("first input", "second input"),
        clock: Callable[[], float] = time.time,
        name: str = "connect",
        stamp_outputs: bool = False,
    ) -> None:
        first, second = timestamp_fns
        super().__init__(
            fn,
            first if first is not None else second,
            clock=clock,
            name=name,
            stamp_outputs=stamp_outputs and first is not None and second is not None,
        )
        self.timestamp_fns = timestamp_fns
        self.input_names = input_names
        self._key_kinds: list[tuple[str, Any] | None] = [None, None]
        self._kinds_checked = False

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Call ``process_element1`` for every record of the first input."""
        if not self._kinds_checked and keys:
            self._check_key_kind(0, keys[0])
        return self._process_records(records, keys, self.fn.process_element1, self.timestamp_fns[0])

    def process_keyed_batch2(self, records: list, keys: list) -> list:
        """Call ``process_element2`` for every record of the second input."""
        if not self._kinds_checked and keys:
            self._check_key_kind(1, keys[0])
        return self._process_records(records, keys, self.fn.process_element2, self.timestamp_fns[1])

    def finish(self) -> list:
        """Log how many late records a join dropped (without a ``late_records`` tag), if any."""
        late = getattr(self.fn, "late", None)
        if isinstance(late, LateRecords):
            late.log_total(getattr(getattr(self, "ctx", None), "subtask_index", 0))
        return []

    def _check_key_kind(self, side: int, key: Any) -> None:
        """Refuse inputs whose keys can never be equal, naming both inputs and an example key of each."""
        if self._key_kinds[side] is None:
            self._key_kinds[side] = (key_kind(key), key)
        first, second = self._key_kinds
        if first is None or second is None:
            return
        self._kinds_checked = True
        if first[0] != second[0]:
            a, b = self.input_names
            msg = (
                f"{self.name}: the two inputs have keys of different types, so no key of one can "
                f"ever equal a key of the other: input 1 ({a}) has {first[0]} keys (e.g. {first[1]!r}), "
                f"input 2 ({b}) has {second[0]} keys (e.g. {second[1]!r}); make both key_by "
                "functions return the same type"
            )
            raise TypeError(msg)
