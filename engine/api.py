"""The job definition API: ``Job``, ``Stream`` and ``KeyedStream``.

Calls here only record operator specs in a ``JobGraph``; nothing runs, no
thread starts and no file is touched until a runner executes the job. A job
file defines ``build(**params) -> Job``.

Example::

    job = Job("wordcount")
    (job.source(FileSource("data/words"), name="read")
        .flat_map(str.split, name="split")
        .map(lambda w: (w.lower(), 1))
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .map(lambda kv: f"{kv[0]},{kv[1]}")
        .sink(FileSink("out/wordcount"), name="write"))

Bad records: every operator call takes ``on_error="fail"`` (the default) or
``"dead_letter"``, which sends a record whose function raises to the sink of
``job.dead_letters(...)`` as a JSON line and goes on::

    (job.source(FileSource("data/events"))
        .map(json.loads, name="parse", on_error="dead_letter")
        ...)
    job.dead_letters(FileSink("out/dead-letters"))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from onceflow.engine._api_args import (
    check_event_time,
    check_fn,
    copy_per_subtask,
    describe_output,
    kept_timestamps,
    on_error_mode,
    use_timestamps,
)
from onceflow.engine.errors import JobDefinitionError
from onceflow.engine.graph import (
    DEAD_LETTER_TAG,
    EdgeSpec,
    JobGraph,
    OnError,
    OperatorKind,
    OperatorSpec,
    Partitioning,
)
from onceflow.engine.joins import (
    ConnectedStreams,
    IntervalJoinedStreams,
    WindowJoinedStreams,
    check_second_input,
)
from onceflow.engine.windowed import WindowedStream
from onceflow.operators.base import Sink, Source, describe_callable
from onceflow.operators.event_time import CarriedTimestamps
from onceflow.operators.keyed import ReduceOperator, StatefulMapOperator
from onceflow.operators.transforms import FilterOperator, FlatMapOperator, MapBatchesOperator, MapOperator

_FORWARD = EdgeSpec(Partitioning.FORWARD)

_Input = tuple[int, EdgeSpec]


class Job:
    """A named dataflow; add sources with :meth:`source`, end every stream with ``sink``."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name or "/" in name or name.startswith((".", "_")):
            msg = f"job name {name!r} is invalid; use a non-empty name without '/' or a leading '.'/'_'"
            raise JobDefinitionError(msg)
        self.name = name
        self.graph = JobGraph(name)
        self._names: set[str] = set()

    def source(
        self,
        source: Source,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Add a source and return the stream of its records.

        ``on_error="dead_letter"``: input the source cannot decode as records
        (a ``FileSource`` CSV or JSON-lines row) goes to ``job.dead_letters``.
        """
        mode = on_error_mode(on_error, "source")
        if not isinstance(source, Source):
            msg = f"job.source() needs an operators.Source (e.g. FileSource), got {source!r}"
            raise JobDefinitionError(msg)
        node = self._add(
            OperatorKind.SOURCE,
            "source",
            lambda i, p: source.create_reader(i, p),
            name=name,
            parallelism=parallelism,
            uid=uid,
            description=type(source).__name__,
            inputs=[],
            method=f"source:{type(source).__name__}",
            on_error=mode,
        )
        return Stream(self, [(node, _FORWARD)])

    def dead_letters(
        self,
        sink: Sink,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
    ) -> None:
        """Send the records of every ``on_error="dead_letter"`` operator whose function raised to ``sink``.

        Each dead letter is one ``str``: a JSON object with ``operator``,
        ``subtask``, ``error`` (``{"type", "message"}``), ``record`` (its repr,
        cut to about 1,000 characters) and, where known, ``source``: for a
        ``FileSource`` the ``file`` and ``line`` (1-based) of the record when
        the failing operator reads the source's batch directly, else the
        ``file`` and the ``lines`` ``[first, last]`` of the source batch it came
        from; for a ``RedisStreamSource`` the ``stream`` and entry ``id``. The
        sink is an ordinary transactional sink, so dead letters are committed
        exactly once with the checkpoint that covers them. One per job.
        """
        if not isinstance(sink, Sink):
            msg = f"dead_letters() needs an operators.Sink (e.g. FileSink), got {sink!r}"
            raise JobDefinitionError(msg)
        if self.graph.dead_letter_sink is not None:
            existing = self.graph.spec(self.graph.dead_letter_sink).name
            msg = f"job {self.name!r} already sends dead letters to {existing!r}; call dead_letters() once"
            raise JobDefinitionError(msg)
        node = self._add(
            OperatorKind.SINK,
            "dead_letters",
            lambda i, p: sink.create_writer(i, p),
            name=name,
            parallelism=parallelism,
            uid=uid,
            description=type(sink).__name__,
            inputs=[],
            method=f"dead_letters:{type(sink).__name__}",
        )
        self.graph.spec(node).config["sink"] = sink
        self.graph.dead_letter_sink = node
        self.graph.connect_dead_letters()
        self.graph.assign_default_uids()

    def _add(
        self,
        kind: OperatorKind,
        default_name: str,
        factory: Callable[[int, int], Any],
        *,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
        description: str,
        inputs: list[_Input],
        method: str | None = None,
        on_error: OnError = OnError.FAIL,
    ) -> int:
        if name is not None and (not isinstance(name, str) or not name):
            msg = f"operator name must be a non-empty string, got {name!r}"
            raise JobDefinitionError(msg)
        if uid is not None and (not isinstance(uid, str) or not uid or "/" in uid):
            msg = f"operator uid must be a non-empty string without '/', got {uid!r}"
            raise JobDefinitionError(msg)
        if parallelism is not None and (not isinstance(parallelism, int) or parallelism < 1):
            msg = f"operator {name or default_name!r}: parallelism must be an int >= 1, got {parallelism!r}"
            raise JobDefinitionError(msg)
        node_id = self.graph.dag.number_of_nodes()
        display = name or default_name
        if display in self._names:
            if name is not None and uid is None:
                msg = (
                    f"two operators are named {name!r}; names derive the default uid, "
                    "so give them distinct names or explicit uids"
                )
                raise JobDefinitionError(msg)
            display = f"{display}-{node_id}"
        self._names.add(display)
        spec = OperatorSpec(
            node_id=node_id,
            name=display,
            uid=uid or display,
            kind=kind,
            factory=factory,
            parallelism=parallelism,
            description=description,
            method=method or default_name,
            explicit_uid=uid is not None,
            on_error=on_error,
        )
        self.graph.add_operator(spec)
        for upstream, edge in inputs:
            self.graph.connect(upstream, node_id, edge)
        self.graph.connect_dead_letters()
        # A new operator changes the downstream structure of everything upstream of it.
        self.graph.assign_default_uids()
        return node_id


class Stream:
    """A stream of records flowing out of one or more operators.

    After ``assign_timestamps`` a stream knows each record's event time (the
    timestamp function travels with the stream through ``filter``, ``key_by``,
    repartitioning and unions of streams with the same function; ``map`` and
    ``flat_map`` change records, so call ``assign_timestamps`` after them).
    The output of a window, a keyed process function or a join has event
    times too (a window's ``max_timestamp``, the time of the record or timer
    handled, a join pair's later time), carried with the records through
    ``key_by`` and repartitioning, so another window, process function or
    join can follow directly.
    """

    def __init__(
        self, job: Job, inputs: list[_Input], timestamp_fn: Callable[[Any], float] | None = None
    ) -> None:
        self._job = job
        self._inputs = inputs
        self._timestamp_fn = timestamp_fn

    def _then(
        self,
        kind: OperatorKind,
        default_name: str,
        factory: Callable[[int, int], Any],
        fn: Any,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
        method: str | None = None,
        on_error: OnError = OnError.FAIL,
    ) -> int:
        return self._job._add(  # noqa: SLF001 - Stream and Job are one API
            kind,
            default_name,
            factory,
            name=name,
            parallelism=parallelism,
            uid=uid,
            description=describe_callable(fn) if fn is not None else "",
            inputs=self._inputs,
            method=method,
            on_error=on_error,
        )

    def _transform(
        self,
        method: str,
        make: Callable[[], Any],
        fn: Any,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
        timestamp_fn: Callable[[Any], float] | None = None,
        on_error: OnError = OnError.FAIL,
    ) -> Stream:
        check_fn(fn, method)
        node = self._then(
            OperatorKind.TRANSFORM, method, lambda i, p: make(), fn, name, parallelism, uid, on_error=on_error
        )
        return Stream(self._job, [(node, _FORWARD)], timestamp_fn)

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Replace every record by ``fn(record)``."""
        mode = on_error_mode(on_error, "map")
        return self._transform("map", lambda: MapOperator(fn), fn, name, parallelism, uid, on_error=mode)

    def filter(
        self,
        fn: Callable[[Any], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Keep the records for which ``fn(record)`` is truthy."""
        mode = on_error_mode(on_error, "filter")
        ts = kept_timestamps(self._timestamp_fn)
        return self._transform("filter", lambda: FilterOperator(fn), fn, name, parallelism, uid, ts, mode)

    def assign_timestamps(
        self,
        timestamp_fn: Callable[[Any], float],
        *,
        max_delay: float = 0.0,
        idle_timeout: float | None = None,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Give records an event time (seconds) and emit watermarks ``max_delay`` behind the largest.

        ``max_delay`` bounds how out of order records may arrive (0: in order);
        a subtask that sees no record for ``idle_timeout`` seconds is marked
        idle so it does not hold back event time for the others.
        """
        from onceflow.operators.event_time import TimestampAssigner

        check_fn(timestamp_fn, "assign_timestamps")
        on_error_mode(on_error, "assign_timestamps", dead_letters=False)
        if max_delay < 0 or (idle_timeout is not None and idle_timeout <= 0):
            msg = (
                "assign_timestamps: max_delay must be >= 0 and idle_timeout > 0, "
                f"got {max_delay!r}, {idle_timeout!r}"
            )
            raise JobDefinitionError(msg)
        stream = self._transform(
            "assign_timestamps",
            lambda: TimestampAssigner(timestamp_fn, max_delay=max_delay, idle_timeout=idle_timeout),
            timestamp_fn,
            name,
            parallelism,
            uid,
            timestamp_fn,
        )
        idle = f", idle after {idle_timeout} s" if idle_timeout is not None else ""
        shown = describe_callable(timestamp_fn)
        describe_output(stream, f"TimestampAssigner(max_delay {max_delay} s{idle}): {shown}")
        return stream

    def side_output(self, tag: str) -> Stream:
        """Return the stream of values the upstream operator emitted with ``ctx.output(tag, value)``.

        Window operators send records later than their allowed lateness to the
        tag given to ``late_records``.
        """
        if len(self._inputs) != 1:
            msg = "side_output() needs the stream of a single operator, not a union"
            raise JobDefinitionError(msg)
        if str(tag) == DEAD_LETTER_TAG:
            msg = f"side-output tag {DEAD_LETTER_TAG!r} is reserved for dead letters; use job.dead_letters()"
            raise JobDefinitionError(msg)
        node = self._inputs[0][0]
        return Stream(self._job, [(node, EdgeSpec(Partitioning.FORWARD, tag=str(tag)))])

    def flat_map(
        self,
        fn: Callable[[Any], Iterable[Any]],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Replace every record by the items of ``fn(record)``."""
        mode = on_error_mode(on_error, "flat_map")
        return self._transform(
            "flat_map", lambda: FlatMapOperator(fn), fn, name, parallelism, uid, on_error=mode
        )

    def map_batches(
        self,
        fn: Callable[[Any], Any],
        *,
        arrow: bool = False,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Apply ``fn`` to a whole batch: a list, or with ``arrow=True`` an Arrow RecordBatch."""
        on_error_mode(on_error, "map_batches", dead_letters=False)
        return self._transform(
            "map_batches", lambda: MapBatchesOperator(fn, arrow=arrow), fn, name, parallelism, uid
        )

    def key_by(self, key_fn: Callable[[Any], Any]) -> KeyedStream:
        """Partition by ``key_fn(record)``: every record of one key reaches the same subtask.

        Keys must be str, int, float, bool, bytes, None or tuples of these;
        ``1``, ``1.0`` and ``True`` are the same key (they compare equal).
        """
        check_fn(key_fn, "key_by")
        return KeyedStream(
            self._job,
            [(n, _repartition(e, Partitioning.HASH, key_fn)) for n, e in self._inputs],
            self._timestamp_fn,
        )

    def window_all(self, assigner: Any) -> WindowedStream:
        """Group every record (no key) into windows, in one subtask; outputs are ``(window, value)``."""
        check_event_time(assigner, self._timestamp_fn, "window_all", "before it")
        return WindowedStream(self.key_by(_all_records_key), assigner, all_records=True)

    def rebalance(self) -> Stream:
        """Spread batches round-robin over the next operator's subtasks."""
        return Stream(
            self._job,
            [(n, _repartition(e, Partitioning.REBALANCE)) for n, e in self._inputs],
            self._timestamp_fn,
        )

    def broadcast(self) -> Stream:
        """Send every batch to every subtask of the next operator."""
        return Stream(
            self._job,
            [(n, _repartition(e, Partitioning.BROADCAST)) for n, e in self._inputs],
            self._timestamp_fn,
        )

    def union(self, *others: Stream) -> Stream:
        """Merge this stream with others; the next operator reads all of them."""
        inputs = list(self._inputs)
        for other in others:
            if not isinstance(other, Stream) or other._job is not self._job:  # noqa: SLF001
                msg = f"union() takes streams of the same job, got {other!r}"
                raise JobDefinitionError(msg)
            inputs.extend(other._inputs)  # noqa: SLF001
        fns = {id(s._timestamp_fn) for s in (self, *others)}  # noqa: SLF001
        return Stream(self._job, inputs, self._timestamp_fn if len(fns) == 1 else None)

    def sink(
        self,
        sink: Sink,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
    ) -> None:
        """Write the stream to ``sink``; output becomes visible when checkpoints complete."""
        if not isinstance(sink, Sink):
            msg = f"sink() needs an operators.Sink (e.g. FileSink), got {sink!r}"
            raise JobDefinitionError(msg)
        node = self._then(
            OperatorKind.SINK,
            "sink",
            lambda i, p: sink.create_writer(i, p),
            None,
            name,
            parallelism,
            uid,
            method=f"sink:{type(sink).__name__}",
        )
        spec = self._job.graph.spec(node)
        spec.description = type(sink).__name__
        spec.config["sink"] = sink


def _repartition(
    edge: EdgeSpec, partitioning: Partitioning, key_fn: Callable[[Any], Any] | None = None
) -> EdgeSpec:
    """Return ``edge`` with a new partitioning, keeping its side-output tag."""
    return EdgeSpec(partitioning, key_fn=key_fn, explicit=True, tag=edge.tag)


class KeyedStream:
    """A stream partitioned by key; stateful operators keep state per key."""

    def __init__(
        self, job: Job, inputs: list[_Input], timestamp_fn: Callable[[Any], float] | None = None
    ) -> None:
        self._job = job
        self._inputs = inputs
        self._timestamp_fn = timestamp_fn

    def _keyed(
        self,
        method: str,
        make: Callable[[], Any],
        fn: Any,
        name: str | None,
        parallelism: int | None,
        uid: str | None,
        on_error: OnError = OnError.FAIL,
        second: KeyedStream | None = None,
    ) -> Stream:
        """Add a keyed operator reading this stream (and ``second`` as its second input, if given)."""
        check_fn(fn, method)
        inputs = self._inputs
        if second is not None:
            inputs = [*inputs, *((n, dataclasses.replace(e, side=1)) for n, e in second._inputs)]  # noqa: SLF001
        node = self._job._add(  # noqa: SLF001 - KeyedStream and Job are one API
            OperatorKind.KEYED,
            method,
            lambda i, p: make(),
            name=name,
            parallelism=parallelism,
            uid=uid,
            description=describe_callable(fn),
            inputs=inputs,
            on_error=on_error,
        )
        return Stream(self._job, [(node, _FORWARD)])

    def reduce(
        self,
        fn: Callable[[Any, Any], Any],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Fold each key's records with ``fn(acc, record)``, emitting the running value.

        With ``on_error="dead_letter"`` a record for which ``fn`` raises leaves
        its key's value as it was.
        """
        mode = on_error_mode(on_error, "reduce")
        return self._keyed("reduce", lambda: ReduceOperator(fn), fn, name, parallelism, uid, mode)

    def stateful_map(
        self,
        fn: Callable[[Any, Any], tuple[Any, Any]],
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Call ``fn(state_or_None, record) -> (new_state_or_None, output_or_None)`` per record.

        With ``on_error="dead_letter"`` a record for which ``fn`` raises (or
        returns something that is not a pair) leaves its key's state as it was.
        """
        mode = on_error_mode(on_error, "stateful_map")
        return self._keyed("stateful_map", lambda: StatefulMapOperator(fn), fn, name, parallelism, uid, mode)

    def process(
        self,
        fn: Any,
        *,
        name: str | None = None,
        parallelism: int | None = None,
        uid: str | None = None,
        on_error: str = "fail",
    ) -> Stream:
        """Run a keyed process function: named per-key state, timers and side outputs.

        ``fn`` has ``process_element(value, ctx)`` and optionally
        ``on_timer(timestamp, ctx)``; both return an iterable of outputs (or
        None). See ``onceflow.operators.KeyedProcessFunction``.

        ``on_error="dead_letter"``: a record (or timer) whose method raises is
        a dead letter naming its ``key``; its outputs are dropped, but state it
        wrote and timers it registered before raising stay.
        """
        from onceflow.operators.process_function import KeyedProcessOperator

        if not callable(getattr(fn, "process_element", None)):
            msg = f"process() needs an object with process_element(value, ctx), got {fn!r}"
            raise JobDefinitionError(msg)
        mode = on_error_mode(on_error, "process")
        timestamp_fn = use_timestamps(self._timestamp_fn)
        carried = CarriedTimestamps() if timestamp_fn is not None else None
        stream = self._keyed(
            "process",
            lambda: KeyedProcessOperator(
                copy_per_subtask(fn), timestamp_fn, stamp_outputs=carried is not None and carried.used
            ),
            fn.process_element,
            name,
            parallelism,
            uid,
            mode,
        )
        stream._timestamp_fn = carried  # noqa: SLF001 - one API
        return stream

    def window(self, assigner: Any) -> WindowedStream:
        """Group each key's records into windows (tumbling, sliding, session)."""
        check_event_time(assigner, self._timestamp_fn, "window", "before key_by")
        return WindowedStream(self, assigner)

    def connect(self, other: KeyedStream) -> ConnectedStreams:
        """Join with another keyed stream under one keyed co-process function (see ``engine.joins``)."""
        return ConnectedStreams(self, check_second_input(self, other, "connect"))

    def interval_join(self, other: KeyedStream, lower: float, upper: float) -> IntervalJoinedStreams:
        """Pair records of equal keys whose ``other`` timestamp is in ``[ts + lower, ts + upper]``."""
        return IntervalJoinedStreams(self, check_second_input(self, other, "interval_join"), lower, upper)

    def window_join(self, other: KeyedStream, assigner: Any) -> WindowJoinedStreams:
        """Group both streams' records by key and event-time window (a co-group)."""
        return WindowJoinedStreams(self, check_second_input(self, other, "window_join"), assigner)


def _all_records_key(record: Any) -> int:
    """Return the one key of ``window_all``, so every record meets in one subtask."""
    return 0
