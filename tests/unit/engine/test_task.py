"""A subtask asks its operators' declared capabilities, once, and never probes them for hooks."""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from typing import Any

import pyarrow as pa
import pytest

from onceflow.engine.elements import END_OF_DATA, Barrier, Batch, Watermark
from onceflow.engine.errors import OperatorError
from onceflow.engine.graph import DEAD_LETTER_TAG, OnError, OperatorKind, OperatorSpec, Partitioning
from onceflow.engine.plan import TaskEdge, TaskSpec
from onceflow.engine.task import Subtask
from onceflow.operators.base import Capability, Operator
from onceflow.operators.co_process import KeyedCoProcessFunction, KeyedCoProcessOperator
from onceflow.operators.event_time import CarriedTimestamps
from onceflow.operators.joins import IntervalJoinFunction, WindowJoinFunction
from onceflow.operators.windows import TumblingEventTimeWindows

INF = math.inf


class Inbox(deque):
    """An input channel: ``len`` and ``poll`` are all a subtask needs."""

    put = deque.append
    poll = deque.popleft


class RecordingGate:
    """An output gate that keeps what it is given."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag
        self.records: list[Any] = []
        self.timestamps: list[list | None] = []
        self.control: list[Any] = []

    def has_room(self) -> bool:
        return True

    def emit(self, records: Any, timestamps: list | None = None) -> None:
        self.records.append(records)
        self.timestamps.append(timestamps)

    def broadcast(self, element: Any) -> None:
        self.control.append(element)


class Recording(Operator):
    """Passes records on and remembers which hooks ran with what."""

    capabilities = Capability.NONE

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.watermarks: list[float] = []
        self.ticks = 0

    def process_batch(self, records: Any) -> Any:
        self.batches.append(records)
        return records

    def on_watermark(self, watermark: float) -> list:
        self.watermarks.append(watermark)
        return []

    def on_processing_time(self, now: float) -> list:
        self.ticks += 1
        return []


def subtask(
    operators: list[Operator],
    *,
    inputs: int = 1,
    gates: list[RecordingGate] | None = None,
    input_sides: list[int] | None = None,
    snapshot_sink: Any = None,
) -> Subtask:
    specs = [
        OperatorSpec(
            node_id=i, name=f"op{i}", uid=f"op{i}", kind=OperatorKind.TRANSFORM, factory=lambda i, p: None
        )
        for i in range(len(operators))
    ]
    edges = [TaskEdge(0, 1, Partitioning.HASH, side=side) for side in sorted(set(input_sides or []))]
    st = Subtask(
        task=TaskSpec(task_id=1, operators=specs, parallelism=1, inputs=edges),
        index=0,
        reader=None,
        operators=operators,
        inputs=[Inbox() for _ in range(inputs)],
        gates=gates if gates is not None else [RecordingGate()],
        snapshot_sink=snapshot_sink or (lambda *args: None),
        batch_size=10,
        input_sides=input_sides,
    )
    st.open([None] * len(operators), {})
    return st


def run(st: Subtask, channel: int, *elements: Any) -> None:
    for element in elements:
        st.inputs[channel].put(element)
        assert st.step()


def test_processing_time_hooks_run_only_for_operators_that_declare_it():
    plain, ticking = Recording(), Recording()
    ticking.capabilities = Capability.PROCESSING_TIME
    st = subtask([plain, ticking])
    assert st.needs_ticks
    st.tick(1.0)
    assert (plain.ticks, ticking.ticks) == (0, 1)
    assert not subtask([Recording()]).needs_ticks


def test_side_outputs_are_drained_only_from_operators_that_declare_them():
    class Tagging(Recording):
        capabilities = Capability.SIDE_OUTPUTS

        def __init__(self) -> None:
            super().__init__()
            self.side_outputs = {}

        def process_batch(self, records: Any) -> Any:
            self.side_outputs.setdefault("odd", []).extend(r for r in records if r % 2)
            return records

    class Undeclared(Tagging):
        capabilities = Capability.NONE

    main, late = RecordingGate(), RecordingGate("odd")
    tagging = Tagging()
    run(subtask([tagging], gates=[main, late]), 0, Batch([1, 2, 3]))
    assert main.records == [[1, 2, 3]]
    assert late.records == [[1, 3]]
    assert tagging.side_outputs == {}

    main, late = RecordingGate(), RecordingGate("odd")
    run(subtask([Undeclared()], gates=[main, late]), 0, Batch([1, 2, 3]))
    assert late.records == []


def test_arrow_batches_reach_operators_that_declare_arrow_input_and_rows_reach_the_others():
    arrow, rows = Recording(), Recording()
    arrow.capabilities = Capability.ARROW_INPUT
    batch = pa.RecordBatch.from_pylist([{"x": 1}, {"x": 2}])
    run(subtask([arrow, rows]), 0, Batch(batch))
    assert arrow.batches == [batch]
    assert rows.batches == [[{"x": 1}, {"x": 2}]]


def test_a_declared_watermark_emitter_defines_event_time_and_stops_upstream_watermarks():
    class Assigner(Recording):
        capabilities = Capability.EMITS_WATERMARKS

        def process_batch(self, records: Any) -> Any:
            self.emitted_watermark = max(self.emitted_watermark, *records) - 1.0
            return records

    before, assigner, after = Recording(), Assigner(), Recording()
    gate = RecordingGate()
    st = subtask([before, assigner, after], gates=[gate])
    run(st, 0, Watermark(100.0))
    assert (before.watermarks, after.watermarks) == ([100.0], [])
    run(st, 0, Batch([5.0, 7.0]))
    assert after.watermarks == [6.0]
    assert gate.control == [Watermark(6.0)]
    assigner.emitted_idle = True
    st.tick(1.0)  # not a processing-time operator: idleness is read after batches
    run(st, 0, Batch([]))
    assert gate.control[-1] == Watermark(6.0, idle=True)


def test_held_records_go_down_the_chain_and_out_before_the_barrier_and_before_idleness():
    class Holding(Recording):
        capabilities = Capability.HOLDS_RECORDS

        def __init__(self) -> None:
            super().__init__()
            self.held: list = []

        def process_batch(self, records: Any) -> Any:
            self.held += records
            return []

        def prepare_snapshot_pre_barrier(self) -> list:
            out, self.held = self.held, []
            return out

    holding, after = Holding(), Recording()
    gate = RecordingGate()
    seen: list = []
    st = subtask(
        [holding, after],
        inputs=2,
        gates=[gate],
        snapshot_sink=lambda cid, key, snaps: seen.append(after.batches[:]),
    )
    run(st, 0, Batch([1, 2]))
    assert gate.records == []
    run(st, 0, Barrier(1, False))
    run(st, 1, Barrier(1, False))
    assert seen == [[[1, 2]]]  # pushed through the rest of the chain before its snapshot
    assert gate.records == [[1, 2]] and gate.control == [Barrier(1, False)]
    run(st, 0, Batch([3]))
    run(st, 0, Watermark(5.0, idle=True))
    run(st, 1, Watermark(4.0, idle=True))
    assert gate.records == [[1, 2], [3]] and gate.control[-1] == Watermark(-INF, idle=True)


def test_input_watermarks_combine_to_the_minimum_of_the_active_inputs_and_end_with_the_last():
    op = Recording()
    gate = RecordingGate()
    st = subtask([op], inputs=2, gates=[gate])
    run(st, 0, Watermark(5.0))
    assert op.watermarks == []
    run(st, 1, Watermark(3.0))
    assert op.watermarks == [3.0]
    run(st, 1, Watermark(7.0, idle=True))
    assert op.watermarks == [3.0, 5.0]
    run(st, 0, Watermark(6.0, idle=True))
    assert gate.control[-1] == Watermark(5.0, idle=True)
    run(st, 0, END_OF_DATA)
    run(st, 1, END_OF_DATA)
    assert op.watermarks == [3.0, 5.0, INF]
    assert gate.control[-1] is END_OF_DATA


class Sides(KeyedCoProcessFunction):
    """Counts both inputs per key in one shared state; a timer at 10 reports the counts."""

    def process_element1(self, value: Any, ctx: Any) -> None:
        self._count(ctx, 0)

    def process_element2(self, value: Any, ctx: Any) -> None:
        self._count(ctx, 1)

    def _count(self, ctx: Any, side: int) -> None:
        counts = list(ctx.value_state("counts").value((0, 0)))
        counts[side] += 1
        ctx.value_state("counts").update(tuple(counts))
        ctx.timers.register_event_time(10.0)

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        return [(ctx.key, ctx.value_state("counts").value())]


def test_a_two_input_head_gets_each_input_on_its_own_method_with_one_state_min_watermark_and_alignment():
    op = KeyedCoProcessOperator(Sides(), (lambda r: r[1], lambda r: r[1]))
    gate = RecordingGate()
    snapshots: list[Any] = []
    st = subtask(
        [op], inputs=3, gates=[gate], input_sides=[0, 1, 1], snapshot_sink=lambda *a: snapshots.append(a)
    )
    run(st, 0, Batch([("a", 1.0), ("b", 1.0)], ["a", "b"]))
    run(st, 1, Batch([("a", 2.0)], ["a"]))
    run(st, 2, Batch([("a", 3.0), ("a", 4.0)], ["a", "a"]))
    assert op.state.table("value:counts") == {"a": (1, 3), "b": (1, 0)}
    # the watermark is the minimum over both inputs' channels; an idle channel does not hold it back
    run(st, 0, Watermark(20.0))
    run(st, 1, Watermark(12.0))
    assert gate.records == []
    run(st, 2, Watermark(5.0, idle=True))
    assert sorted(r for batch in gate.records for r in batch) == [("a", (1, 3)), ("b", (1, 0))]
    # a barrier on the first input blocks it until every channel of the second delivered it
    run(st, 0, Barrier(1))
    st.inputs[0].put(Batch([("c", 30.0)], ["c"]))
    run(st, 1, Barrier(1))
    assert not snapshots and len(st.inputs[0]) == 1
    run(st, 2, Barrier(1))
    assert len(snapshots) == 1 and "c" not in snapshots[0][2][0][1].keyed_state["value:counts"]
    assert st.step() and op.state.table("value:counts")["c"] == (1, 0)


# -- two-input heads: dead letters and late records ------------------------------------------


def _pair(left: Any, right: Any) -> list:
    if "bad" in (left[2], right[2]):
        msg = f"cannot pair {left[2]} with {right[2]}"
        raise ValueError(msg)
    return [(left[2], right[2])]


def _dead_letter_subtask(op: Operator, on_error: OnError) -> tuple[Subtask, RecordingGate, RecordingGate]:
    gate, dead = RecordingGate(), RecordingGate(DEAD_LETTER_TAG)
    st = subtask([op], inputs=2, gates=[gate, dead], input_sides=[0, 1])
    st.specs[0].on_error = on_error
    return st, gate, dead


def _interval_join() -> KeyedCoProcessOperator:
    ts = lambda r: r[1]  # noqa: E731
    return KeyedCoProcessOperator(IntervalJoinFunction(_pair, -1.0, 1.0), (ts, ts), name="join")


def test_a_failing_record_of_either_input_is_one_dead_letter_naming_input_and_key_and_joins_nothing():
    st, gate, dead = _dead_letter_subtask(_interval_join(), OnError.DEAD_LETTER)
    run(st, 1, Batch([("a", 1.0, "r1")], ["a"]))
    run(st, 0, Batch([("a", 1.0, "l1"), ("a", 1.5, "bad"), ("a", 2.0, "l2")], ["a"] * 3))
    # the second input's rest goes on through its own method (process_keyed_batch2)
    run(st, 1, Batch([("a", 1.2, "bad"), ("a", 1.3, "r2")], ["a", "a"]))
    assert sorted(r for batch in gate.records for r in batch) == [
        ("l1", "r1"),
        ("l1", "r2"),
        ("l2", "r1"),
        ("l2", "r2"),
    ]
    letters = [json.loads(line) for batch in dead.records for line in batch]
    assert [(x["operator"], x["input"], x["key"], x["record"]) for x in letters] == [
        ("op0", 1, "'a'", "('a', 1.5, 'bad')"),
        ("op0", 2, "'a'", "('a', 1.2, 'bad')"),
    ]
    assert letters[0]["error"] == {"type": "ValueError", "message": "cannot pair bad with r1"}


def test_without_dead_letters_a_failing_join_record_fails_naming_the_record():
    st, _, _ = _dead_letter_subtask(_interval_join(), OnError.FAIL)
    run(st, 0, Batch([("a", 1.0, "bad")], ["a"]))
    st.inputs[1].put(Batch([("a", 1.0, "r1")], ["a"]))
    with pytest.raises(OperatorError, match=r"on record \('a', 1.0, 'r1'\).*cannot pair bad with r1"):
        st.step()


def _window_totals(key: Any, window: Any, lefts: list, rights: list) -> list:
    if any(r[2] == "bad" for r in lefts):
        msg = f"bad window {window.start}"
        raise ValueError(msg)
    return [(key, window.start, len(lefts), len(rights))]


def test_a_failing_window_join_window_is_one_dead_letter_and_the_later_windows_still_fire():
    ts = lambda r: r[1]  # noqa: E731
    fn = WindowJoinFunction(_window_totals, TumblingEventTimeWindows(10.0))
    st, gate, dead = _dead_letter_subtask(KeyedCoProcessOperator(fn, (ts, ts)), OnError.DEAD_LETTER)
    lefts = [("a", 1.0, "ok"), ("b", 2.0, "bad"), ("b", 12.0, "ok"), ("a", 15.0, "ok")]
    run(st, 0, Batch(lefts, [r[0] for r in lefts]))
    run(st, 1, Batch([("b", 3.0, "r")], ["b"]))
    run(st, 0, Watermark(INF))
    run(st, 1, Watermark(INF))
    assert sorted(r for batch in gate.records for r in batch) == [
        ("a", 0.0, 1, 0),
        ("a", 10.0, 1, 0),
        ("b", 10.0, 1, 0),
    ]
    (letter,) = [json.loads(line) for batch in dead.records for line in batch]
    assert letter["key"] == "'b'" and letter["timer"] == math.nextafter(10.0, 0.0)
    assert letter["record"] == "('b', Window(0.0, 10.0), [('b', 2.0, 'bad')], [('b', 3.0, 'r')])"


@pytest.mark.parametrize("tags", [("late", None), ("late", "late-right")])
def test_late_join_records_go_to_the_late_records_side_output_of_their_input(tags):
    ts = lambda r: r[1]  # noqa: E731
    op = KeyedCoProcessOperator(IntervalJoinFunction(_pair, -1.0, 1.0, tags), (ts, ts))
    gates = [RecordingGate(), RecordingGate(tags[0])] + ([RecordingGate(tags[1])] if tags[1] else [])
    st = subtask([op], inputs=2, gates=gates, input_sides=[0, 1])
    run(st, 0, Watermark(10.0))
    run(st, 1, Watermark(10.0))
    run(st, 0, Batch([("a", 5.0, "l-late"), ("a", 10.0, "l")], ["a", "a"]))
    run(st, 1, Batch([("a", 9.0, "r-late"), ("a", 10.5, "r")], ["a", "a"]))
    assert [r for batch in gates[0].records for r in batch] == [("l", "r")]
    side = [r for g in gates[1:] for batch in g.records for r in batch]
    assert side == [("a", 5.0, "l-late"), ("a", 9.0, "r-late")]
    if tags[1]:
        assert gates[2].records == [[("a", 9.0, "r-late")]]
    assert op.fn.late_records == 2


def test_without_a_tag_late_join_records_are_counted_and_logged_once(caplog):
    ts = lambda r: r[1]  # noqa: E731
    fn = WindowJoinFunction(_window_totals, TumblingEventTimeWindows(10.0))
    op = KeyedCoProcessOperator(fn, (ts, ts), name="wjoin")
    st = subtask([op], inputs=2, gates=[RecordingGate()], input_sides=[0, 1])
    run(st, 0, Watermark(20.0))
    run(st, 1, Watermark(20.0))
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        run(st, 0, Batch([("a", 5.0, "x"), ("a", 6.0, "y")], ["a", "a"]))
        run(st, 1, Batch([("a", 7.0, "z")], ["a"]))
        run(st, 0, END_OF_DATA)
        run(st, 1, END_OF_DATA)
    assert fn.late_records == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("wjoin: dropped a record") and "late_records" in messages[0]
    assert "dropped 3 records" in messages[1]


# -- carried event times ----------------------------------------------------------------------


class Echo(KeyedCoProcessFunction):
    """Emits (value, its event time) per record; raises for "bad"; a timer at 10 emits ("timer", key)."""

    def process_element1(self, value: Any, ctx: Any) -> list:
        if value == "bad":
            msg = "bad record"
            raise ValueError(msg)
        ctx.timers.register_event_time(10.0)
        return [(value, ctx.timestamp)]

    process_element2 = process_element1

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        return [("timer", ctx.key)]


def test_carried_times_reach_the_head_and_its_stamped_outputs_leave_with_the_batch_also_past_a_dead_letter():
    carried = CarriedTimestamps()
    op = KeyedCoProcessOperator(Echo(), (carried, carried), stamp_outputs=True)
    assert Capability.TIMESTAMPED_OUTPUT in op.capabilities
    st, gate, dead = _dead_letter_subtask(op, OnError.DEAD_LETTER)
    run(st, 0, Batch(["a", "bad", "c"], ["k", "k", "j"], [1.0, 2.0, 3.0]))
    run(st, 1, Batch(["d"], ["k"], [4.0]))
    run(st, 0, Watermark(INF))
    run(st, 1, Watermark(INF))
    got = [(r, t) for records, stamps in zip(gate.records, gate.timestamps) for r, t in zip(records, stamps)]
    assert got[:3] == [
        (("a", 1.0), 1.0),
        (("c", 3.0), 3.0),  # the rest of the batch after the dead letter keeps its own times
        (("d", 4.0), 4.0),
    ]
    assert sorted(got[3:]) == [(("timer", "j"), 10.0), (("timer", "k"), 10.0)]
    assert [json.loads(line)["record"] for batch in dead.records for line in batch] == ["'bad'"]


def test_a_batch_without_the_carried_times_its_stream_needs_is_an_error_naming_the_operator():
    carried = CarriedTimestamps()
    op = KeyedCoProcessOperator(Echo(), (carried, carried), name="echo")
    st, _, _ = _dead_letter_subtask(op, OnError.FAIL)
    st.inputs[0].put(Batch(["a"], ["k"]))
    with pytest.raises(
        OperatorError, match="echo: a batch of 1 records arrived with none carried event times"
    ):
        st.step()
