"""Keyed process functions: per-key named state, event- and processing-time timers, side outputs.

``KeyedStream.process(fn)`` runs a :class:`KeyedProcessFunction` (or any object
with ``process_element(value, ctx)`` and optionally ``on_timer(timestamp,
ctx)``); both return an iterable of output records or None::

    class Timeout(KeyedProcessFunction):
        def process_element(self, click, ctx):
            ctx.value_state("last").update(ctx.timestamp)
            ctx.timers.register_event_time(ctx.timestamp + 1800)

        def on_timer(self, timestamp, ctx):
            if ctx.value_state("last").value() + 1800 == timestamp:
                yield f"{ctx.key} went quiet at {timestamp}"

State is scoped to the key of the current record or timer. Timers are keyed
state too: a timer is one ``(key, time)`` pair (registering it twice keeps
one), fires once the watermark (event time) or the clock (processing time,
``time.time`` by default) reaches it, in time order, and is snapshotted with
its key group, so after a crash and restore it fires exactly once. Pending
event-time timers fire at end of input (the watermark jumps to +inf);
processing-time timers still pending then do not fire.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from onceflow.operators.bad_records import TimerFailure, failure_at
from onceflow.operators.base import Capability, Operator, OperatorSnapshot, RestoredState
from onceflow.operators.event_time import (
    CarriedTimestamps,
    carried_times,
    check_timestamp,
    frozen_copy,
    restored_watermark,
    timestamp_fn_failed,
)
from onceflow.operators.named_state import (
    TTL_PREFIX,
    ListState,
    MapState,
    ValueState,
    check_ttl,
    expired_keys,
)
from onceflow.state_backends.heap import HeapKeyedState

__all__ = [
    "KeyedProcessFunction",
    "KeyedProcessOperator",
    "ListState",
    "MapState",
    "ProcessContext",
    "TimerService",
    "ValueState",
]

_EVENT = "timers:event"
_PROCESSING = "timers:processing"


class KeyedProcessFunction:
    """Base class of keyed process functions; override ``process_element`` and maybe ``on_timer``.

    One copy of the object runs per subtask; keep per-key data in ``ctx``
    state, not in attributes (attributes are neither per key nor checkpointed).
    """

    def process_element(self, value: Any, ctx: ProcessContext) -> Iterable[Any] | None:
        """Handle one record of key ``ctx.key``; return records to emit (or None)."""
        raise NotImplementedError

    def on_timer(self, timestamp: float, ctx: ProcessContext) -> Iterable[Any] | None:
        """Handle a timer of key ``ctx.key`` firing at ``timestamp``; return records to emit."""
        return None


class TimerService:
    """Timers of the current key: register or delete event-time and processing-time timers."""

    __slots__ = ("_op",)

    def __init__(self, op: KeyedProcessOperator) -> None:
        self._op = op

    def register_event_time(self, timestamp: float) -> None:
        """Call ``on_timer(timestamp)`` once the watermark reaches ``timestamp``."""
        self._op._register(_EVENT, self._check(timestamp, "register_event_time"))  # noqa: SLF001

    def delete_event_time(self, timestamp: float) -> None:
        """Cancel the current key's event-time timer at ``timestamp`` (if any)."""
        self._op._delete(_EVENT, self._check(timestamp, "delete_event_time"))  # noqa: SLF001

    def register_processing_time(self, timestamp: float) -> None:
        """Call ``on_timer(timestamp)`` once the clock (``current_processing_time``) passes it."""
        self._op._register(_PROCESSING, self._check(timestamp, "register_processing_time"))  # noqa: SLF001

    def delete_processing_time(self, timestamp: float) -> None:
        """Cancel the current key's processing-time timer at ``timestamp`` (if any)."""
        self._op._delete(_PROCESSING, self._check(timestamp, "delete_processing_time"))  # noqa: SLF001

    def current_processing_time(self) -> float:
        """Return the operator's clock (``time.time`` unless a test injected another)."""
        return self._op.clock()

    def current_watermark(self) -> float:
        """Return the operator's event time: no record below it is expected any more."""
        return self._op.watermark

    def _check(self, timestamp: Any, method: str) -> float:
        op = self._op
        where = f"{op.name}: timers.{method}"
        if timestamp is None and op.timestamp_fn is None:
            msg = (
                f"{where}(None) while handling record {op.current_record!r}: this stream has no "
                "event timestamps; call assign_timestamps(...) before key_by"
            )
            raise TypeError(msg)
        try:
            return check_timestamp(timestamp, op.current_record, where)
        except TypeError as exc:
            msg = f"{where} needs a number of seconds, got {timestamp!r} (record {op.current_record!r})"
            raise TypeError(msg) from exc


class ProcessContext:
    """What ``process_element`` and ``on_timer`` see: the key, the time, state, timers, side outputs."""

    __slots__ = ("_op", "timers", "_states")

    def __init__(self, op: KeyedProcessOperator) -> None:
        self._op = op
        self.timers = TimerService(op)
        self._states: dict[tuple[str, str], Any] = {}

    @property
    def key(self) -> Any:
        """The key of the current record or timer."""
        return self._op.current_key

    @property
    def timestamp(self) -> float | None:
        """Event time of the current record, or of the firing timer (None without timestamps)."""
        return self._op.current_timestamp

    @property
    def time_domain(self) -> str | None:
        """In ``on_timer``: ``"event"`` or ``"processing"``; None in ``process_element``."""
        return self._op.current_domain

    @property
    def current_watermark(self) -> float:
        """The operator's current event time (-inf before the first watermark)."""
        return self._op.watermark

    def _state(self, kind: str, cls: type, name: str, ttl: float | None) -> Any:
        handle = self._states.get((kind, name))
        if handle is None:
            if not isinstance(name, str) or not name:
                msg = f"{self._op.name}: state names are non-empty strings, got {name!r}"
                raise TypeError(msg)
            seconds = check_ttl(ttl, f"{self._op.name}: {kind}_state({name!r})")
            table = self._op.state.table(f"{kind}:{name}")
            expiry = self._op.state.table(f"{TTL_PREFIX}{kind}:{name}") if seconds is not None else None
            handle = self._states[(kind, name)] = cls(self._op, table, seconds, expiry)
        elif ttl != handle._ttl:  # noqa: SLF001 - one module's handles
            msg = (
                f"{self._op.name}: {kind}_state({name!r}) is used with ttl={handle._ttl!r} "  # noqa: SLF001
                f"and ttl={ttl!r}; give one state one time-to-live"
            )
            raise TypeError(msg)
        return handle

    def value_state(self, name: str, *, ttl: float | None = None) -> ValueState:
        """Return the named value state of the current key (``ttl``: seconds since its last write)."""
        return self._state("value", ValueState, name, ttl)

    def list_state(self, name: str, *, ttl: float | None = None) -> ListState:
        """Return the named list state of the current key (``ttl``: seconds since its last write)."""
        return self._state("list", ListState, name, ttl)

    def map_state(self, name: str, *, ttl: float | None = None) -> MapState:
        """Return the named map state of the current key (``ttl``: seconds since its last ``put``)."""
        return self._state("map", MapState, name, ttl)

    def output(self, tag: str, value: Any) -> None:
        """Emit ``value`` to side output ``tag`` (read it with ``stream.side_output(tag)``)."""
        self._op.side_outputs.setdefault(tag, []).append(value)


class Stamped(list):
    """Outputs of one call with event times of their own (``timestamps``, parallel).

    For functions built on this operator whose outputs are not at the time of
    the record being handled: an interval-join pair is at the later of its two
    records' times.
    """

    __slots__ = ("timestamps",)

    def __init__(self) -> None:
        super().__init__()
        self.timestamps: list[float] = []


def describe_current(ctx: ProcessContext, record: Any) -> None:
    """Name what the function was handling when it raises (a dead letter's or an error's ``record``).

    For functions built on this operator whose unit of work is not the input
    record or the timer, such as a window join's ``(key, window, lefts, rights)``.
    """
    ctx._op.current_record = record  # noqa: SLF001 - one module's context


class KeyedProcessOperator(Operator):
    """Runs a keyed process function over a keyed stream.

    Cost per record: the timestamp function (if the stream has one), one user
    call, and a dict operation per state access; a timer costs a set insert
    and a heap push.
    """

    capabilities = Capability.PROCESSING_TIME | Capability.SIDE_OUTPUTS
    element_methods: tuple[str, ...] = ("process_element",)
    """The methods the function must have to handle records (one per input)."""

    def __init__(
        self,
        fn: Any,
        timestamp_fn: Callable[[Any], float] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        name: str = "process",
        stamp_outputs: bool = False,
    ) -> None:
        missing = [m for m in self.element_methods if not callable(getattr(fn, m, None))]
        if missing:
            needs = ", ".join(f"{m}(value, ctx)" for m in self.element_methods)
            msg = f"{name}: needs an object with {needs}, got {fn!r}"
            raise TypeError(msg)
        self.fn = fn
        self.timestamp_fn = timestamp_fn
        self.clock = clock
        self.name = name
        self.stamping = stamp_outputs and timestamp_fn is not None
        """Stamp outputs with the time of the record or timer being handled (``TIMESTAMPED_OUTPUT``);
        only when records have times."""
        if self.stamping:
            self.capabilities = type(self).capabilities | Capability.TIMESTAMPED_OUTPUT
        self.state = HeapKeyedState()
        self.side_outputs = {}
        self.watermark = -math.inf
        self.current_key: Any = None
        self.current_timestamp: float | None = None
        self.current_domain: str | None = None
        self.current_record: Any = None
        self._timers = {_EVENT: self.state.table(_EVENT), _PROCESSING: self.state.table(_PROCESSING)}
        self._heaps: dict[str, list[tuple[float, int, Any]]] = {_EVENT: [], _PROCESSING: []}
        self._seq = itertools.count()
        self.ctx_view = ProcessContext(self)
        on_timer = getattr(fn, "on_timer", None)
        self._on_timer = on_timer if callable(on_timer) else None

    # -- records -----------------------------------------------------------------------

    def process_batch(self, records: list) -> list:
        """Process functions need keys; the runtime calls ``process_keyed_batch`` after ``key_by``."""
        msg = f"{self.name}: a keyed process function needs a keyed stream (key_by before process)"
        raise TypeError(msg)

    def process_keyed_batch(self, records: list, keys: list) -> list:
        """Call ``process_element`` for every record with its key, time and state in ``ctx``."""
        return self._process_records(records, keys, self.fn.process_element, self.timestamp_fn)

    def _process_records(
        self,
        records: list,
        keys: list,
        element: Callable[[Any, ProcessContext], Iterable[Any] | None],
        ts_fn: Callable[[Any], float] | None,
    ) -> list:
        """Call ``element(record, ctx)`` per record, ``ctx`` set to its key and ``ts_fn``'s time.

        When ``element`` raises: ``BatchFailure`` (the runtime fails naming the
        record, or makes it a dead letter and passes the rest in again). The
        failing record's outputs are dropped; unlike a ``reduce``, state it
        wrote, timers it registered and side outputs it emitted before raising
        stay (the function is the user's code): deterministic on a replay, so
        still exactly once.
        """
        out: list = []
        stamps = self.output_timestamps = [] if self.stamping else None
        ctx = self.ctx_view
        self.current_domain = None
        if ts_fn is None:
            self.current_timestamp = None  # not the other input's (or a timer's) time
        elif type(ts_fn) is CarriedTimestamps:
            carried = iter(carried_times(records, self.input_timestamps, self.name)).__next__
            ts_fn = lambda _record: carried()  # noqa: E731 - called once per record, in order
        remaining = iter(records)
        for record, key in zip(remaining, keys):
            self.current_key = key
            self.current_record = record
            if ts_fn is not None:
                try:
                    t = ts_fn(record)
                except Exception as exc:
                    raise timestamp_fn_failed(self.name, exc, record) from exc
                if (type(t) is not float and type(t) is not int) or t != t:  # noqa: PLR0124
                    t = check_timestamp(t, record, self.name)
                self.current_timestamp = t
            try:
                result = element(record, ctx)
                if result is not None and type(result) is not list and type(result) is not Stamped:
                    result = list(result)  # a generator that raises adds nothing to ``out``
            except Exception as exc:
                self.current_record = None
                raise failure_at(records, remaining, exc, out) from None
            if result is not None:
                out += result
                if stamps is not None:
                    if type(result) is Stamped:
                        stamps += result.timestamps
                    elif len(result) == 1:
                        stamps.append(t)
                    else:
                        stamps += [t] * len(result)
        self.current_record = None
        return out

    # -- timers ------------------------------------------------------------------------

    def _register(self, domain: str, timestamp: float) -> None:
        key = self.current_key
        table = self._timers[domain]
        pending = table.get(key)
        if pending is None:
            table[key] = {timestamp}
        elif timestamp in pending:
            return
        else:
            pending.add(timestamp)
        heapq.heappush(self._heaps[domain], (timestamp, next(self._seq), key))

    def _delete(self, domain: str, timestamp: float) -> None:
        table = self._timers[domain]
        pending = table.get(self.current_key)
        if pending is not None:
            pending.discard(timestamp)
            if not pending:
                del table[self.current_key]

    def _fire(self, domain: str, now: float) -> list:
        out: list = []
        stamps = self.output_timestamps = [] if self.stamping else None
        heap = self._heaps[domain]
        table = self._timers[domain]
        on_timer = self._on_timer
        ctx = self.ctx_view
        label = "event" if domain == _EVENT else "processing"
        while heap and heap[0][0] <= now:
            timestamp, _, key = heapq.heappop(heap)
            pending = table.get(key)
            if pending is None or timestamp not in pending:
                continue  # deleted, or a duplicate entry of one that fired
            pending.discard(timestamp)
            if not pending:
                del table[key]
            if on_timer is None:
                continue
            self.current_key = key
            self.current_timestamp = timestamp
            self.current_domain = label
            self.current_record = f"<{label}-time timer {timestamp!r} of key {key!r}>"
            try:
                result = on_timer(timestamp, ctx)
                if result is not None and type(result) is not list and type(result) is not Stamped:
                    result = list(result)
            except Exception as exc:
                record, self.current_record, self.current_domain = self.current_record, None, None
                raise TimerFailure(exc, record, key, timestamp, out) from None
            if result is not None:
                out += result
                if stamps is not None:
                    # an event-time timer's outputs are at its time; a processing-time one's
                    # at the watermark (no later record can make them late)
                    if type(result) is Stamped:
                        stamps += result.timestamps
                    else:
                        stamps += [timestamp if domain == _EVENT else self.watermark] * len(result)
        self.current_domain = None
        self.current_record = None
        return out

    def on_watermark(self, watermark: float) -> list:
        """Fire event-time timers the watermark reached, in time order.

        Called again with the same watermark after a ``TimerFailure``, it fires
        the timers that were still due (those that fired are gone from state).
        """
        if watermark < self.watermark:
            return []
        self.watermark = watermark
        return self._fire(_EVENT, watermark)

    def on_processing_time(self, now: float) -> list:
        """Fire processing-time timers the clock passed (``now`` is the runtime's monotonic tick)."""
        if not self._heaps[_PROCESSING]:
            return []
        return self._fire(_PROCESSING, self.clock())

    @property
    def pending_timers(self) -> int:
        """How many timers are registered (both domains)."""
        return sum(len(v) for table in self._timers.values() for v in table.values())

    # -- state ---------------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Named state (without expired entries) and timers as immutable copies (keyed), and the watermark."""
        keyed: dict[str, dict[Any, Any]] = {}
        expired = expired_keys(self.state.tables, self.clock())
        for name, full in self.state.tables.items():
            gone = expired.get(name)
            table = {k: v for k, v in full.items() if k not in gone} if gone else full
            if not table:
                continue
            if name.startswith("timers:"):
                keyed[name] = {k: tuple(sorted(v)) for k, v in table.items()}
            elif name.startswith("list:"):
                keyed[name] = {k: frozen_copy(tuple(v)) for k, v in table.items()}
            elif name.startswith("map:"):
                keyed[name] = {k: {n: frozen_copy(x) for n, x in v.items()} for k, v in table.items()}
            else:
                keyed[name] = {k: frozen_copy(v) for k, v in table.items()}
        return OperatorSnapshot(operator_state={"watermark": self.watermark}, keyed_state=keyed)

    def restore_state(self, restored: RestoredState) -> None:
        """Load this subtask's keys' state and timers; resume at the restored watermark."""
        self.watermark = restored_watermark(restored, self.ctx.subtask_index, self.ctx.parallelism)
        converted: dict[str, dict[Any, Any]] = {}
        for name, table in restored.keyed_state.items():
            if name.startswith("timers:"):
                converted[name] = {k: set(v) for k, v in table.items()}
            elif name.startswith("list:"):
                converted[name] = {k: list(v) for k, v in table.items()}
            elif name.startswith("map:"):
                converted[name] = {k: dict(v) for k, v in table.items()}
            else:
                converted[name] = dict(table)
        self.state.restore(converted)
        for domain, table in self._timers.items():
            heap = [(t, next(self._seq), key) for key, pending in table.items() for t in sorted(pending)]
            heapq.heapify(heap)
            self._heaps[domain] = heap
