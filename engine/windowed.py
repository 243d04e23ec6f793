"""Windows on a stream: ``KeyedStream.window(assigner)`` and ``Stream.window_all(assigner)``.

Only records the window operator spec in the job graph, through the keyed
stream it came from (``KeyedStream._keyed``), so windows get the same uid,
name and parallelism rules as every keyed operator. ``window_all`` is a
window on a stream keyed by one constant at parallelism 1.

Every event-time window's outputs carry the event timestamp
``window.max_timestamp``, so another ``.window()`` (or a process function or
a join) can follow directly: ``reduce`` and ``aggregate`` outputs hold their
window, so their stream computes it; a ``process`` window returns records of
any shape, so the operator stamps them and the time travels with the batch
(``CarriedTimestamps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onceflow.engine._api_args import check_fn, describe_output, on_error_mode, use_timestamps
from onceflow.engine.errors import JobDefinitionError
from onceflow.operators.base import describe_callable
from onceflow.operators.event_time import CarriedTimestamps

if TYPE_CHECKING:
    from onceflow.engine.api import KeyedStream, Stream


class WindowedStream:
    """A keyed stream grouped into windows; end it with ``reduce``, ``aggregate`` or ``process``.

    ``all_records=True`` (``Stream.window_all``): one window per time range over
    every record, at parallelism 1; outputs are ``(window, value)`` and the
    process function is ``fn(window, values)``.
    """

    def __init__(
        self,
        keyed: KeyedStream,
        assigner: Any,
        lateness: float = 0.0,
        late_tag: str | None = None,
        *,
        all_records: bool = False,
    ) -> None:
        self._keyed = keyed
        self._assigner = assigner
        self._lateness = lateness
        self._late_tag = late_tag
        self._all = all_records

    def allowed_lateness(self, seconds: float) -> WindowedStream:
        """Keep windows open ``seconds`` past their end: late records update and re-fire them."""
        if seconds < 0:
            msg = f"allowed_lateness must be >= 0, got {seconds!r}"
            raise JobDefinitionError(msg)
        return WindowedStream(
            self._keyed, self._assigner, float(seconds), self._late_tag, all_records=self._all
        )

    def late_records(self, tag: str) -> WindowedStream:
        """Send records later than the allowed lateness to side output ``tag`` instead of dropping them."""
        return WindowedStream(self._keyed, self._assigner, self._lateness, str(tag), all_records=self._all)

    def _window(
        self,
        kind: str,
        fns: dict[str, Any],
        shown: Any,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
    ) -> Stream:
        from onceflow.operators.window_slices import window_operator
        from onceflow.operators.windows import all_window_time, keyed_window_time

        assigner, lateness, tag, keyed = self._assigner, self._lateness, self._late_tag, not self._all
        if not keyed:
            if parallelism not in (None, 1):
                msg = f"window_all runs in one subtask: parallelism must be 1, got {parallelism!r}"
                raise JobDefinitionError(msg)
            parallelism = 1
        timestamp_fn = use_timestamps(self._keyed._timestamp_fn)  # noqa: SLF001 - one API
        event_time = getattr(assigner, "event_time", False)
        carried = CarriedTimestamps() if kind == "process" and event_time else None
        stream = self._keyed._keyed(  # noqa: SLF001
            f"window_{kind}" if keyed else f"window_all_{kind}",
            lambda: window_operator(
                assigner,
                kind=kind,
                timestamp_fn=timestamp_fn,
                allowed_lateness=lateness,
                late_tag=tag,
                keyed=keyed,
                stamp_outputs=carried is not None and carried.used,
                **fns,
            ),
            shown,
            name,
            parallelism,
            uid,
        )
        if carried is not None:
            stream._timestamp_fn = carried  # noqa: SLF001
        elif event_time:
            stream._timestamp_fn = keyed_window_time if keyed else all_window_time  # noqa: SLF001
        late = f", late records -> {tag!r}" if tag is not None else ""
        describe_output(
            stream,
            f"{assigner!r} {kind}, allowed lateness {lateness} s{late}: {describe_callable(shown)}",
        )
        return stream

    def reduce(
        self,
        fn: Callable[[Any, Any], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Fold each window's records with ``fn``; emit ``(key, window, value)`` when it fires.

        Sliding windows fold per slice and then fold the slices' values, so ``fn``
        must be associative and return a new value rather than change its first argument.
        """
        check_fn(fn, "reduce")
        on_error_mode(on_error, "window reduce", dead_letters=False)
        return self._window("reduce", {"reduce_fn": fn}, fn, name, parallelism, uid)

    def aggregate(
        self,
        add: Callable[[Any, Any], Any],
        merge: Callable[[Any, Any], Any],
        result: Callable[[Any], Any],
        init: Callable[[], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Aggregate incrementally and emit ``(key, window, result(acc))`` when a window fires.

        ``acc`` starts as ``init()`` and takes ``acc = add(acc, record)``;
        ``merge`` combines two accumulators when session windows merge.
        """
        for f, label in ((add, "add"), (merge, "merge"), (result, "result"), (init, "init")):
            check_fn(f, f"aggregate {label}")
        on_error_mode(on_error, "window aggregate", dead_letters=False)
        fns = {"add_fn": add, "merge_fn": merge, "result_fn": result, "init_fn": init}
        return self._window("aggregate", fns, add, name, parallelism, uid)

    def process(
        self,
        fn: Callable[[Any, Any, list], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Call ``fn(key, window, values)`` (``fn(window, values)`` after window_all) when a window fires.

        Emits the items it returns.
        """
        check_fn(fn, "process")
        on_error_mode(on_error, "window process", dead_letters=False)
        return self._window("process", {"process_fn": fn}, fn, name, parallelism, uid)
