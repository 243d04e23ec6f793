"""The operator contract: declared capabilities, and the defaults every operator inherits."""

from __future__ import annotations

import math

import pytest

from onceflow.operators.base import Capability, Operator, TwoPhaseCommitWriter
from onceflow.operators.event_time import TimestampAssigner
from onceflow.operators.transforms import MapBatchesOperator, MapOperator
from onceflow.operators.windows import TumblingEventTimeWindows, TumblingProcessingTimeWindows, WindowOperator

TUMBLING = TumblingEventTimeWindows(1.0)


def test_a_plain_operator_declares_nothing_and_every_hook_has_a_default():
    op = Operator()
    assert op.capabilities is Capability.NONE
    assert op.process_batch([1]) == [1]
    assert op.process_keyed_batch([1], ["k"]) == [1]
    assert op.on_watermark(1.0) == []
    assert op.on_processing_time(1.0) == []
    assert op.snapshot_state(1) is None
    assert op.finish() == []
    assert op.emitted_watermark == -math.inf
    assert not op.emitted_idle


def test_two_phase_commit_writers_inherit_the_capability():
    from onceflow.operators.file_sink import FileSinkWriter
    from onceflow.operators.postgres import PostgresSink

    writer = PostgresSink("postgresql://localhost/x", "t").create_writer(0, 1)
    assert Capability.TWO_PHASE_COMMIT in type(writer).capabilities
    assert Capability.TWO_PHASE_COMMIT in FileSinkWriter.capabilities
    assert writer.recommitted == 0


def test_a_two_phase_commit_writer_that_drops_the_capability_is_refused_at_definition():
    with pytest.raises(TypeError, match="keep the flag"):

        class Forgetful(TwoPhaseCommitWriter):
            capabilities = Capability.ARROW_INPUT

    class Arrowy(TwoPhaseCommitWriter):
        capabilities = Capability.TWO_PHASE_COMMIT | Capability.ARROW_INPUT

    assert Capability.ARROW_INPUT in Arrowy.capabilities


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: MapOperator(str), Capability.NONE),
        (lambda: MapBatchesOperator(list), Capability.NONE),
        (lambda: MapBatchesOperator(list, arrow=True), Capability.ARROW_INPUT),
        (lambda: TimestampAssigner(float), Capability.EMITS_WATERMARKS),
        (
            lambda: TimestampAssigner(float, idle_timeout=1.0),
            Capability.EMITS_WATERMARKS | Capability.PROCESSING_TIME,
        ),
        (
            lambda: WindowOperator(TUMBLING, kind="reduce", reduce_fn=max, timestamp_fn=float),
            Capability.NONE,
        ),
        (
            lambda: WindowOperator(
                TUMBLING, kind="reduce", reduce_fn=max, timestamp_fn=float, late_tag="late"
            ),
            Capability.SIDE_OUTPUTS,
        ),
        (
            lambda: WindowOperator(TumblingProcessingTimeWindows(1.0), kind="reduce", reduce_fn=max),
            Capability.PROCESSING_TIME,
        ),
    ],
)
def test_an_instance_narrows_its_class_capabilities_to_what_its_configuration_needs(make, expected):
    op = make()
    assert op.capabilities == expected
    assert expected & type(op).capabilities == expected  # never wider than the class declares
    if Capability.SIDE_OUTPUTS in expected:
        assert op.side_outputs == {}


def test_map_batches_arrow_gives_a_column_for_every_field_of_the_batch_s_records() -> None:
    """pyarrow's from_pylist takes the columns from the first record alone; no field may vanish."""
    seen: list = []
    op = MapBatchesOperator(lambda batch: seen.append(batch.to_pylist()) or batch, arrow=True)
    op.process_batch([{"a": 1}, {"a": 2, "b": "kept"}])
    assert seen == [[{"a": 1, "b": None}, {"a": 2, "b": "kept"}]]
