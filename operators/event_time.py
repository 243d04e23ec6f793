"""Event time: the timestamp assigner and the helpers every event-time operator shares.

``Stream.assign_timestamps(fn, max_delay=..., idle_timeout=...)`` creates a
:class:`TimestampAssigner`. It passes records through unchanged, remembers the
largest timestamp it has seen and emits the watermark ``max_timestamp -
max_delay`` ("no record older than this will follow"): bounded
out-of-orderness, or monotonous timestamps with ``max_delay=0``. It declares
``Capability.EMITS_WATERMARKS``, so the subtask reads ``emitted_watermark`` and
``emitted_idle`` after every batch and tick and sends them downstream in-band;
a downstream subtask takes the minimum over its non-idle inputs. The arithmetic
of both is in ``onceflow.operators.watermarks``.

Event-time operators (windows, keyed process functions) keep their own copy of
the watermark, snapshot it, and restore it: after a crash the engine's
watermarks restart at minus infinity, and an operator ignores every watermark
that does not move past the one it restored, so the low restarted watermarks
never fire a window or timer a second time.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Collection
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

from onceflow.operators.base import Capability, Operator, OperatorSnapshot, RestoredState
from onceflow.operators.watermarks import bounded_out_of_orderness, has_been_idle

log = logging.getLogger("onceflow")

__all__ = [
    "CarriedTimestamps",
    "LateRecords",
    "TimestampAssigner",
    "carried_times",
    "check_timestamp",
    "event_times",
    "frozen_copy",
    "frozen_values",
    "restored_watermark",
]

_IMMUTABLE = (int, float, str, bytes, bool, type(None), frozenset, complex)


def frozen_copy(value: Any) -> Any:
    """Return ``value`` if it is immutable (also tuples of immutables, at any depth), else a deep copy.

    Snapshots are written by a background thread while processing goes on, so
    anything an operator may still change in place must be copied at the
    barrier; numbers, strings and tuples of them, by far the common case, cost
    a type check per item and no copy. Nested tuples (an accumulator holding
    records, ``(price, (bid, bid))``) are walked, not deep-copied: a deep copy
    costs some 30 times a walk, at every checkpoint, for every window of every key.
    The copy is a pickle round trip (a small dict: 1 us against 3.5 us for
    ``copy.deepcopy``). A value pickle refuses cannot be checkpointed at all:
    it is returned as it is, and the snapshot writer, which pickles it too,
    fails the checkpoint with an error naming the operator, key and type.
    """
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is tuple and _immutable_tuple(value):
        return value
    try:
        return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - reported by the snapshot writer, which knows the key
        return value


_EXACTLY_IMMUTABLE = frozenset(_IMMUTABLE)
_IMMUTABLE_OR_TUPLE = _EXACTLY_IMMUTABLE | {tuple}


def frozen_values(table: dict[Any, Any]) -> dict[Any, Any]:
    """Return ``table`` if every value is immutable, else a dict with :func:`frozen_copy` of each value.

    For a keyed table captured at a barrier (a shallow copy, or the changed
    entries): a user function may change its state object in place
    (``state.append(record)``), and a change made after the barrier must not
    reach the snapshot the background writer serializes later, or the records
    read again after a restore would be applied twice. The value types are
    checked in bulk, at C speed (about 15 ns per value and per tuple item), so
    numbers, strings and tuples of them, the common case, cost no copy and no
    Python call per value.
    """
    if _immutable_values(table.values()):
        return table
    return {key: frozen_copy(value) for key, value in table.items()}


def _immutable_values(values: Collection[Any]) -> bool:
    """Whether every value's exact type is immutable, tuples included if their items are (any depth).

    One level of tuples per pass, each pass C-level ``map``/``compress``/``chain`` calls only.
    """
    while True:
        types = set(map(type, values))
        if types <= _EXACTLY_IMMUTABLE:
            return True
        if not types <= _IMMUTABLE_OR_TUPLE:
            return False
        if types != {tuple}:
            values = list(compress(values, map(is_, map(type, values), repeat(tuple))))
        values = list(chain.from_iterable(values))


def _immutable_tuple(value: tuple) -> bool:
    """Whether ``value`` holds only immutables and tuples of them (any depth), so it can be shared."""
    for item in value:
        if type(item) is tuple:
            if not _immutable_tuple(item):
                return False
        elif not isinstance(item, _IMMUTABLE):
            return False
    return True


def check_timestamp(value: Any, record: Any, operator: str) -> float:
    """Return ``value`` as a float timestamp or raise a ``TypeError``/``ValueError`` naming ``operator``.

    Accepts ints and floats (seconds); refuses bools, None, strings, NaN.
    """
    if (type(value) is float or type(value) is int) and value == value:  # noqa: PLR0124 - NaN check
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = (
            f"{operator}: the timestamp function returned {value!r} ({type(value).__name__}) "
            f"for record {record!r}; it must return the event time as a number of seconds"
        )
        raise TypeError(msg)
    if math.isnan(value):
        msg = f"{operator}: the timestamp function returned NaN for record {record!r}"
        raise ValueError(msg)
    return float(value)


def timestamp_fn_failed(operator: str, exc: Exception, record: Any) -> ValueError:
    """Build the error for a timestamp function that raised, naming ``operator`` and showing ``record``.

    Callers check timestamps inline (it runs per record) and call this only on
    the failure path, so every operator words the failure the same way.
    """
    msg = f"{operator}: the timestamp function raised {type(exc).__name__}: {exc} for record {record!r}"
    return ValueError(msg)


def restored_watermark(
    restored: RestoredState, subtask_index: int, parallelism: int, field: str = "watermark"
) -> float:
    """Pick this subtask's watermark out of the restored operator states.

    At the same parallelism a subtask takes back exactly its own watermark. After
    a rescale its keys (or splits) come from several old subtasks, so it takes
    the smallest: a lower watermark only delays firing (every window and timer
    keeps a "fired" record of its own), a higher one could declare records late
    that the old subtask would still have accepted.
    """
    found = [
        (index, state.get(field, -math.inf))
        for index, state in restored.operator_states
        if isinstance(state, dict)
    ]
    if not found:
        return -math.inf
    if restored.old_parallelism == parallelism:
        for index, wm in found:
            if index == subtask_index:
                return wm
    return min(wm for _, wm in found)


class TimestampAssigner(Operator):
    """Compute each record's event time and emit watermarks ``max_delay`` behind the largest.

    ``fn(record)`` returns the event time in seconds. A result that is not a
    number (or an exception) fails the job with an error naming this operator
    and showing the record. With ``idle_timeout``, a subtask that sees no record
    for that many seconds of processing time is marked idle, so downstream
    operators stop waiting for its watermark; the next record ends idleness.

    Cost: one call of ``fn`` and two comparisons per record.
    """

    capabilities = Capability.EMITS_WATERMARKS | Capability.PROCESSING_TIME
    """Processing time only with ``idle_timeout`` (narrowed in ``__init__``)."""

    def __init__(
        self,
        fn: Callable[[Any], float],
        *,
        max_delay: float = 0.0,
        idle_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "assign_timestamps",
    ) -> None:
        self.fn = fn
        self.max_delay = float(max_delay)
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.name = name
        self.max_timestamp = -math.inf
        self.emitted_watermark = -math.inf
        self.emitted_idle = False
        if idle_timeout is None:
            self.capabilities = Capability.EMITS_WATERMARKS
        self._last_activity: float | None = None

    def open(self, ctx: Any) -> None:
        """Start the idleness clock."""
        super().open(ctx)
        self._last_activity = self.clock()

    def process_batch(self, records: list) -> list:
        """Check every record's timestamp, raise the watermark, pass the records on."""
        fn = self.fn
        top = self.max_timestamp
        for record in records:
            try:
                t = fn(record)
            except Exception as exc:
                raise timestamp_fn_failed(self.name, exc, record) from exc
            if (type(t) is not float and type(t) is not int) or t != t:  # noqa: PLR0124
                t = check_timestamp(t, record, self.name)
            if t > top:
                top = t
        if records:
            self.max_timestamp = top
            wm = bounded_out_of_orderness(top, self.max_delay)
            if wm > self.emitted_watermark:
                self.emitted_watermark = wm
            if self.idle_timeout is not None:
                self.emitted_idle = False
                self._last_activity = self.clock()
        return records

    def on_processing_time(self, now: float) -> list:
        """Mark the subtask idle after ``idle_timeout`` seconds without a record."""
        if self.idle_timeout is not None and not self.emitted_idle:
            last = self._last_activity if self._last_activity is not None else self.clock()
            if has_been_idle(last, self.clock(), self.idle_timeout):
                self.emitted_idle = True
        return []

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Capture the largest timestamp seen and the watermark emitted (numbers: nothing to copy)."""
        return OperatorSnapshot(
            operator_state={"max_timestamp": self.max_timestamp, "watermark": self.emitted_watermark}
        )

    def restore_state(self, restored: RestoredState) -> None:
        """Resume the watermark where this subtask left it, so it never goes backwards."""
        index, parallelism = self.ctx.subtask_index, self.ctx.parallelism
        self.emitted_watermark = restored_watermark(restored, index, parallelism)
        self.max_timestamp = restored_watermark(restored, index, parallelism, "max_timestamp")


class CarriedTimestamps:
    """The timestamp function of a stream whose records carry their event times in their batches.

    The output of a ``process`` window (``window.max_timestamp``), a keyed or
    co-process function (the time of the record or timer being handled) or a
    join (an interval-join pair: the later of its two times) has records of any
    shape, so no function of a record can tell its time: the producing
    operator stamps each output (``Capability.TIMESTAMPED_OUTPUT``), the
    batches carry the stamps, and the consuming operator reads them
    (``Operator.input_timestamps``). One instance per producing operator;
    :attr:`used` is set at graph time by each consumer that needs them, so a
    producer nobody reads the times of does not stamp.
    """

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False

    def __call__(self, record: Any) -> float:
        """Refuse: the times are in the batch, not in the record."""
        msg = "carried event times are read from the batch (Operator.input_timestamps), not from a record"
        raise TypeError(msg)


def carried_times(records: list, carried: list | None, operator: str) -> list:
    """Return the carried event times of a batch, or raise naming ``operator`` if they did not arrive."""
    if carried is None or len(carried) != len(records):
        got = "none" if carried is None else f"{len(carried)}"
        msg = (
            f"{operator}: a batch of {len(records)} records arrived with {got} carried event times; "
            "only operators that stamp their outputs (process windows, process functions, joins) "
            "can feed event time without assign_timestamps"
        )
        raise RuntimeError(msg)
    return carried


def event_times(
    records: list, timestamp_fn: Callable[[Any], Any], operator: str, carried: list | None = None
) -> list:
    """Return the event time of every record of a batch, checked, or raise naming ``operator``.

    One comprehension for the batch (the common, valid case), then one type
    check per value; only a failure looks for the record to show. A
    :class:`CarriedTimestamps` stream's times are ``carried`` (the batch's).
    """
    if type(timestamp_fn) is CarriedTimestamps:
        return carried_times(records, carried, operator)
    try:
        times = [timestamp_fn(record) for record in records]
    except Exception:
        for record in records:
            try:
                timestamp_fn(record)
            except Exception as exc:
                raise timestamp_fn_failed(operator, exc, record) from exc
        raise
    for i, t in enumerate(times):
        if (type(t) is not float and type(t) is not int) or t != t:  # noqa: PLR0124 - NaN
            times[i] = check_timestamp(t, records[i], operator)
    return times


class LateRecords:
    """Where an event-time operator's late records go: a side output, never silently nowhere.

    With a tag (``late_records(tag)`` on a windowed stream or a join) a late
    record is appended to the operator's ``side_outputs[tag]`` (the operator
    declares ``Capability.SIDE_OUTPUTS``) and counted in :attr:`emitted`.
    Without one it is counted in :attr:`dropped` and the first one is logged
    with the fix; :meth:`log_total` logs the count when the input ends. What
    "late" means is the operator's decision; this class only routes.
    """

    __slots__ = ("operator", "tag", "side_outputs", "lateness", "dropped", "emitted")

    def __init__(
        self, operator: str, tag: str | None, side_outputs: dict[str, list], lateness: float
    ) -> None:
        self.operator = operator
        self.tag = tag
        self.side_outputs = side_outputs
        self.lateness = lateness
        self.dropped = 0
        self.emitted = 0

    def add(self, record: Any, watermark: float, tag: str | None = None) -> None:
        """Route one late record: to side output ``tag`` (default: this one's), or count and warn once."""
        tag = tag if tag is not None else self.tag
        if tag is not None:
            self.side_outputs.setdefault(tag, []).append(record)
            self.emitted += 1
            return
        if self.dropped == 0:
            log.warning(
                "%s: dropped a record later than the allowed lateness (%s s) at watermark %s: %r; "
                "use .late_records(tag) to keep such records (the total is logged at the end)",
                self.operator,
                self.lateness,
                watermark,
                record,
            )
        self.dropped += 1

    def log_total(self, subtask_index: int) -> None:
        """Log how many records were dropped as late, if any (at end of input)."""
        if self.dropped:
            log.warning(
                "%s subtask %s: dropped %d records later than the allowed lateness (%s s)",
                self.operator,
                subtask_index,
                self.dropped,
                self.lateness,
            )
