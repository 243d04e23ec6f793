"""Two keyed inputs: ``KeyedStream.connect``, ``interval_join`` and ``window_join``.

Only records the two-input operator's spec in the job graph, through the first
keyed stream (``KeyedStream._two_inputs``), so the operator gets the same uid,
name and parallelism rules as every keyed operator. Every check of the two
inputs runs here, when the job is defined, and names the operators that feed
each input::

    (orders.key_by(lambda o: o["id"])
        .interval_join(payments.key_by(lambda p: p["order"]), lower=0.0, upper=3600.0)
        .process(lambda order, payment: [(order["id"], payment["amount"])], name="paid", uid="paid"))
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from onceflow.engine._api_args import (
    check_fn,
    copy_per_subtask,
    describe_output,
    on_error_mode,
    use_timestamps,
)
from onceflow.engine.errors import JobDefinitionError
from onceflow.engine.graph import OnError
from onceflow.operators.base import describe_callable
from onceflow.operators.event_time import CarriedTimestamps

if TYPE_CHECKING:
    from onceflow.engine.api import KeyedStream, Stream

__all__ = ["ConnectedStreams", "IntervalJoinedStreams", "WindowJoinedStreams", "check_second_input"]


def input_names(stream: Any) -> str:
    """Name the operators whose output ``stream`` is, for error messages: ``'a'`` or ``'a', 'b'``."""
    graph = stream._job.graph  # noqa: SLF001 - one API
    return ", ".join(repr(graph.spec(node).name) for node, _ in stream._inputs)  # noqa: SLF001


def _key_fns(stream: Any) -> list[Callable[[Any], Any]]:
    return [e.key_fn for _, e in stream._inputs if e.key_fn is not None]  # noqa: SLF001


def _declared_key_type(fn: Callable[[Any], Any]) -> type | None:
    """Return the return annotation of a key function, if it is a plain class (else None: unknown)."""
    try:
        annotation = inspect.get_annotations(fn, eval_str=True).get("return")
    except Exception:  # noqa: BLE001 - an annotation we cannot read tells nothing
        return None
    return annotation if isinstance(annotation, type) else None


def _key_family(t: type) -> type:
    return float if t in (int, float, bool) else t


def check_second_input(first: KeyedStream, other: Any, method: str) -> KeyedStream:
    """Refuse a second input that cannot be joined with ``first``, naming the operators of both.

    Checks: the second input is a keyed stream of the same job, not the same
    stream (a self-join reads one output twice: ``map`` one side first), and
    the key functions do not declare (by return annotation) key types that can
    never be equal. Key types without annotations are compared at run time by
    the operator, on the first record of each input.
    """
    first_names = input_names(first)
    if not isinstance(other, type(first)):
        shown = input_names(other) if hasattr(other, "_inputs") and hasattr(other, "_job") else repr(other)
        msg = (
            f"{method}(): both inputs must be keyed, but the second input (the output of {shown}) is "
            f"{type(other).__name__}, not a KeyedStream; call .key_by(...) on it so records with equal "
            f"keys of both inputs meet in one subtask (first input: keyed output of {first_names})"
        )
        raise JobDefinitionError(msg)
    if other._job is not first._job:  # noqa: SLF001
        msg = f"{method}(): the second input (output of {input_names(other)}) belongs to another job"
        raise JobDefinitionError(msg)
    other_names = input_names(other)
    shared = {n for n, _ in first._inputs} & {n for n, _ in other._inputs}  # noqa: SLF001
    if shared:
        msg = (
            f"{method}(): both inputs read the output of the same operator ({first_names} and "
            f"{other_names}); to join a stream with itself, put a .map(...) on one side first"
        )
        raise JobDefinitionError(msg)
    declared = {
        which: {_declared_key_type(fn) for fn in _key_fns(stream)} - {None}
        for which, stream in (("first", first), ("second", other))
    }
    if declared["first"] and declared["second"]:
        firsts = {_key_family(t) for t in declared["first"] if t is not None}
        seconds = {_key_family(t) for t in declared["second"] if t is not None}
        if not firsts & seconds:
            kinds = " / ".join(sorted(t.__name__ for t in declared["first"] if t is not None))
            others = " / ".join(sorted(t.__name__ for t in declared["second"] if t is not None))
            msg = (
                f"{method}(): the key types cannot match: the first input (output of {first_names}) is "
                f"keyed by {kinds}, the second (output of {other_names}) by {others}; no key of one "
                "can equal a key of the other, so make both key_by functions return the same type"
            )
            raise JobDefinitionError(msg)
    return other


def _check_timestamps(first: KeyedStream, second: KeyedStream, method: str) -> None:
    """Refuse event-time joins of inputs without event timestamps, naming the operators."""
    missing = [
        f"the {which} input (output of {input_names(s)})"
        for which, s in (("first", first), ("second", second))
        if s._timestamp_fn is None  # noqa: SLF001
    ]
    if missing:
        msg = (
            f"{method}() joins by event time, but {' and '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no event timestamps; call "
            "assign_timestamps(...) before key_by (after any map or flat_map)"
        )
        raise JobDefinitionError(msg)


class _TwoInputs:
    """Two keyed inputs waiting for the function that combines them."""

    _method = "connect"

    def __init__(self, first: KeyedStream, second: KeyedStream) -> None:
        self._first = first
        self._second = second

    def _operator(
        self,
        make_fn: Callable[[], Any],
        shown: Any,
        description: str,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
        on_error: OnError,
    ) -> Stream:
        from onceflow.operators.co_process import KeyedCoProcessOperator

        first, second = self._first, self._second
        names = (f"output of {input_names(first)}", f"output of {input_names(second)}")
        timestamp_fns = (use_timestamps(first._timestamp_fn), use_timestamps(second._timestamp_fn))  # noqa: SLF001
        carried = CarriedTimestamps() if None not in timestamp_fns else None
        method = self._method
        stream = first._keyed(  # noqa: SLF001 - one API
            method,
            lambda: KeyedCoProcessOperator(
                make_fn(),
                timestamp_fns,
                input_names=names,
                name=name or method,
                stamp_outputs=carried is not None and carried.used,
            ),
            shown,
            name,
            parallelism,
            uid,
            on_error,
            second=second,
        )
        describe_output(stream, f"{description}: {describe_callable(shown)}")
        stream._timestamp_fn = carried  # noqa: SLF001
        return stream


class _EventTimeJoin(_TwoInputs):
    """A join by event time: it can send its late records to a side output."""

    _late_tags: tuple[str | None, str | None] = (None, None)

    def late_records(self, tag: str, *, second: str | None = None) -> Any:
        """Send late records to side output ``tag`` (the second input's to ``second``, if given).

        A record is late when the join's watermark already passed it (a window
        join: every window it belongs to), so what it could have joined with
        may be gone. Read them with ``stream.side_output(tag)`` on the join's
        output. Without a tag late records are counted and logged, never joined.
        """
        joined = copy.copy(self)
        joined._late_tags = (str(tag), None if second is None else str(second))  # noqa: SLF001 - a copy of self
        return joined

    def _late_description(self) -> str:
        first, second = self._late_tags
        if first is None:
            return ""
        return f", late records -> {first!r}" + (f" / {second!r}" if second is not None else "")


class ConnectedStreams(_TwoInputs):
    """Two keyed streams for one keyed co-process function (``KeyedStream.connect``)."""

    def process(
        self,
        fn: Any,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Run a keyed co-process function over both inputs: one state and one set of timers per key.

        ``fn`` has ``process_element1(value, ctx)`` (first input),
        ``process_element2(value, ctx)`` (second input) and optionally
        ``on_timer(timestamp, ctx)``; each returns an iterable of outputs or
        None. See ``onceflow.operators.KeyedCoProcessFunction``.

        ``on_error="dead_letter"``: a record (or timer) whose method raises is
        a dead letter naming its ``input`` (1 or 2) and ``key``; its outputs
        are dropped, but state it wrote and timers it registered before
        raising stay.
        """
        mode = on_error_mode(on_error, "connect().process")
        missing = [m for m in ("process_element1", "process_element2") if not callable(getattr(fn, m, None))]
        if missing:
            msg = (
                f"connect().process() needs an object with process_element1(value, ctx) and "
                f"process_element2(value, ctx) (a KeyedCoProcessFunction), got {fn!r} without "
                f"{', '.join(missing)}"
            )
            raise JobDefinitionError(msg)
        make = lambda: copy_per_subtask(fn)  # noqa: E731
        return self._operator(make, fn.process_element1, "connect", name, parallelism, uid, mode)


class IntervalJoinedStreams(_EventTimeJoin):
    """Two keyed streams paired by an event-time interval (``KeyedStream.interval_join``)."""

    _method = "interval_join"

    def __init__(self, first: KeyedStream, second: KeyedStream, lower: Any, upper: Any) -> None:
        super().__init__(first, second)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lower, upper))
        if not numbers or not all(math.isfinite(v) for v in (lower, upper)):
            msg = (
                f"interval_join(lower={lower!r}, upper={upper!r}) of {input_names(first)} with "
                f"{input_names(second)}: the bounds must be finite numbers of seconds"
            )
            raise JobDefinitionError(msg)
        if lower > upper:
            msg = (
                f"interval_join(lower={lower!r}, upper={upper!r}) of {input_names(first)} with "
                f"{input_names(second)} is an empty interval: lower must be <= upper (a right record "
                "pairs with a left one when left.ts + lower <= right.ts <= left.ts + upper)"
            )
            raise JobDefinitionError(msg)
        _check_timestamps(first, second, "interval_join")
        self._lower = float(lower)
        self._upper = float(upper)

    def process(
        self,
        fn: Callable[[Any, Any], Iterable[Any] | None],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Call ``fn(left, right)`` for every pair within the interval; emit the items it returns.

        State expires with the watermark: a record is kept only while a record
        of the other input could still pair with it. ``on_error="dead_letter"``:
        a record for which ``fn`` raises joins nothing and is kept nowhere; it
        is a dead letter naming its ``input`` (1 or 2) and ``key``.
        """
        from onceflow.operators.joins import IntervalJoinFunction

        check_fn(fn, "interval_join().process")
        mode = on_error_mode(on_error, "interval_join().process")
        lower, upper, tags = self._lower, self._upper, self._late_tags
        return self._operator(
            lambda: IntervalJoinFunction(fn, lower, upper, tags),
            fn,
            f"interval join [{lower}, {upper}] s{self._late_description()}",
            name,
            parallelism,
            uid,
            mode,
        )


class WindowJoinedStreams(_EventTimeJoin):
    """Two keyed streams grouped by key and window (``KeyedStream.window_join``)."""

    _method = "window_join"

    def __init__(self, first: KeyedStream, second: KeyedStream, assigner: Any) -> None:
        super().__init__(first, second)
        if not callable(getattr(assigner, "assign", None)):
            msg = f"window_join() needs a window assigner (TumblingEventTimeWindows...), not {assigner!r}"
            raise JobDefinitionError(msg)
        if not getattr(assigner, "event_time", False) or getattr(assigner, "merging", False):
            msg = (
                f"window_join({assigner!r}) of {input_names(first)} with {input_names(second)}: "
                "only event-time windows that do not merge are supported "
                "(TumblingEventTimeWindows, SlidingEventTimeWindows)"
            )
            raise JobDefinitionError(msg)
        _check_timestamps(first, second, "window_join")
        self._assigner = assigner

    def process(
        self,
        fn: Callable[[Any, Any, list, list], Iterable[Any] | None],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Call ``fn(key, window, lefts, rights)`` when a window ends; emit the items it returns.

        Called for every key and window in which either input had a record,
        so a join is a loop over both lists (nothing when one is empty).
        ``on_error="dead_letter"``: a window for which ``fn`` raises is a dead
        letter whose ``record`` is ``(key, window, lefts, rights)``.
        """
        from onceflow.operators.joins import WindowJoinFunction

        check_fn(fn, "window_join().process")
        mode = on_error_mode(on_error, "window_join().process")
        assigner, tags = self._assigner, self._late_tags
        return self._operator(
            lambda: WindowJoinFunction(fn, assigner, tags),
            fn,
            f"window join {assigner!r}{self._late_description()}",
            name,
            parallelism,
            uid,
            mode,
        )
