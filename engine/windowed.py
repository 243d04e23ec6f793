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
        pre_aggregate: bool = False,
    ) -> Stream:
        from onceflow.operators.window_slices import window_operator
        from onceflow.operators.windows import all_window_time, keyed_window_time

        assigner, lateness, tag, keyed = self._assigner, self._lateness, self._late_tag, not self._all
        if not keyed:
            if parallelism not in (None, 1):
                msg = f"window_all runs in one subtask: parallelism must be 1, got {parallelism!r}"
                raise JobDefinitionError(msg)
            parallelism = 1
        source = self._keyed
        if pre_aggregate:
            source = self._pre_aggregated(kind, fns, name, uid) or source
        pre_aggregated = source is not self._keyed
        timestamp_fn = use_timestamps(source._timestamp_fn)  # noqa: SLF001 - one API
        event_time = getattr(assigner, "event_time", False)
        carried = CarriedTimestamps() if kind == "process" and event_time else None
        stream = source._keyed(  # noqa: SLF001
            f"window_{kind}" if keyed else f"window_all_{kind}",
            lambda: window_operator(
                assigner,
                kind=kind,
                timestamp_fn=timestamp_fn,
                allowed_lateness=lateness,
                late_tag=tag,
                keyed=keyed,
                stamp_outputs=carried is not None and carried.used,
                pre_aggregated=pre_aggregated,
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
        late += ", pre-aggregated before the key exchange" if pre_aggregated else ""
        describe_output(
            stream,
            f"{assigner!r} {kind}, allowed lateness {lateness} s{late}: {describe_callable(shown)}",
        )
        return stream

    def _pre_aggregated(
        self, kind: str, fns: dict[str, Any], name: str | None, uid: str | None
    ) -> KeyedStream | None:
        """Put a ``WindowCombiner`` after each input, before the key exchange; None where it cannot be.

        It can for ``reduce`` and ``aggregate`` over tumbling or sliced sliding
        event-time windows of a stream whose records have a timestamp function,
        without a late-records tag (the side output would get partials, not
        records). Each combiner takes its input's parallelism, so it chains to
        the operator before it and folds in that operator's subtask.
        """
        from onceflow.engine.graph import EdgeSpec, OperatorKind, Partitioning
        from onceflow.operators.window_combine import (
            WindowCombiner,
            combiner_slices,
            partial_key,
            partial_time,
        )
        from onceflow.operators.windows import record_folds

        keyed = self._keyed
        timestamp_fn = keyed._timestamp_fn  # noqa: SLF001 - one API
        slices = combiner_slices(self._assigner)
        if (
            kind == "process"
            or slices is None
            or self._late_tag is not None
            or timestamp_fn is None
            or type(timestamp_fn) is CarriedTimestamps
        ):
            return None
        length, offset = slices
        first, add = record_folds(
            kind, reduce_fn=fns.get("reduce_fn"), add_fn=fns.get("add_fn"), init_fn=fns.get("init_fn")
        )
        job = keyed._job  # noqa: SLF001
        inputs = []
        for i, (node, edge) in enumerate(keyed._inputs):  # noqa: SLF001
            key_fn = edge.key_fn

            def make(
                i: int, p: int, key_fn: Any = key_fn, label: str = f"{name or 'window'}-combine"
            ) -> WindowCombiner:
                return WindowCombiner(
                    length=length,
                    offset=offset,
                    key_fn=key_fn,
                    timestamp_fn=timestamp_fn,
                    first=first,
                    add=add,
                    name=label,
                )

            suffix = "-combine" if len(keyed._inputs) == 1 else f"-combine-{i}"  # noqa: SLF001
            combiner = job._add(  # noqa: SLF001
                OperatorKind.TRANSFORM,
                "window_combine",
                make,
                name=f"{name}{suffix}" if name is not None else None,
                parallelism=job.graph.spec(node).parallelism,
                uid=f"{uid}{suffix}" if uid is not None else None,
                description=f"partials per key and {length} s slice before the key exchange",
                inputs=[(node, EdgeSpec(Partitioning.FORWARD, tag=edge.tag))],
            )
            inputs.append((combiner, EdgeSpec(Partitioning.HASH, key_fn=partial_key, explicit=True)))
        return type(keyed)(job, inputs, partial_time)

    def reduce(
        self,
        fn: Callable[[Any, Any], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
        pre_aggregate: bool = True,
    ) -> Stream:
        """Fold each window's records with ``fn``; emit ``(key, window, value)`` when it fires.

        Records are folded in parts and the parts folded together: per slice for
        sliding windows, and with ``pre_aggregate`` (the default) per upstream
        subtask before the key exchange (tumbling and sliding event-time
        windows), so ``fn`` must be associative, indifferent to the order in
        which parts of one window meet, and return a new value rather than
        change its first argument. ``pre_aggregate=False`` sends every record
        across the exchange and folds them in one place.
        """
        check_fn(fn, "reduce")
        on_error_mode(on_error, "window reduce", dead_letters=False)
        return self._window("reduce", {"reduce_fn": fn}, fn, name, parallelism, uid, pre_aggregate)

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
        pre_aggregate: bool = True,
    ) -> Stream:
        """Aggregate incrementally and emit ``(key, window, result(acc))`` when a window fires.

        ``acc`` starts as ``init()`` and takes ``acc = add(acc, record)``;
        ``merge(a, b)`` combines two accumulators of one key and window: when
        session windows merge, the slices of a sliding window, and with
        ``pre_aggregate`` (the default) the partial accumulators that each
        upstream subtask folds before the key exchange (tumbling and sliding
        event-time windows). ``merge`` must then be associative and
        indifferent to the order in which partials meet; ``pre_aggregate=False``
        sends every record across the exchange and ``add``s them in one place.
        """
        for f, label in ((add, "add"), (merge, "merge"), (result, "result"), (init, "init")):
            check_fn(f, f"aggregate {label}")
        on_error_mode(on_error, "window aggregate", dead_letters=False)
        fns = {"add_fn": add, "merge_fn": merge, "result_fn": result, "init_fn": init}
        return self._window("aggregate", fns, add, name, parallelism, uid, pre_aggregate)

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
