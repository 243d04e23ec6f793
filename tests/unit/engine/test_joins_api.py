"""Bad two-input jobs are refused when the job is defined, naming the operators of both inputs;
key types that cannot match and are not declared fail at run time naming both inputs."""

from __future__ import annotations

import pytest

from onceflow import (
    EventTimeSessionWindows,
    Job,
    JobDefinitionError,
    KeyedCoProcessFunction,
    OperatorError,
    TumblingEventTimeWindows,
)
from onceflow.engine.plan import build_plan
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import TestingSink, TestingSource


def two_streams(timestamps: bool = True):
    job = Job("joins-api")
    a = job.source(TestingSource([(1, 1.0)]), name="orders").map(lambda r: r, name="parse-orders")
    b = job.source(TestingSource([(1, 2.0)]), name="payments").map(lambda r: r, name="parse-payments")
    if timestamps:
        a = a.assign_timestamps(lambda r: r[1], name="ts-orders")
        b = b.assign_timestamps(lambda r: r[1], name="ts-payments")
    return job, a, b


class Pairs(KeyedCoProcessFunction):
    def process_element1(self, value, ctx):
        return [("left", value)]

    def process_element2(self, value, ctx):
        return [("right", value)]


def test_connect_with_a_stream_that_is_not_keyed_names_both_inputs():
    _, a, b = two_streams()
    with pytest.raises(JobDefinitionError) as info:
        a.key_by(lambda r: r[0]).connect(b)
    msg = str(info.value)
    assert "'ts-payments'" in msg and "'ts-orders'" in msg and "key_by" in msg


@pytest.mark.parametrize("method", ["connect", "interval_join", "window_join"])
def test_every_two_input_method_refuses_a_stream_that_is_not_keyed(method):
    _, a, b = two_streams()
    args = {"connect": (), "interval_join": (-1.0, 1.0), "window_join": (TumblingEventTimeWindows(5.0),)}
    with pytest.raises(JobDefinitionError, match=rf"{method}\(\): both inputs must be keyed.*'ts-payments'"):
        getattr(a.key_by(lambda r: r[0]), method)(b, *args[method])


def test_declared_key_types_that_cannot_match_are_refused_naming_both_inputs():
    _, a, b = two_streams()

    def order_id(r) -> int:
        return r[0]

    def payment_ref(r) -> str:
        return str(r[0])

    with pytest.raises(JobDefinitionError) as info:
        a.key_by(order_id).interval_join(b.key_by(payment_ref), lower=0.0, upper=1.0)
    msg = str(info.value)
    assert "'ts-orders'" in msg and "'ts-payments'" in msg and "int" in msg and "str" in msg


def test_undeclared_key_types_that_cannot_match_fail_at_run_time_naming_both_inputs():
    job, a, b = two_streams()
    sink = TestingSink()
    (
        a.key_by(lambda r: r[0])
        .connect(b.key_by(lambda r: str(r[0])))
        .process(Pairs(), name="match", uid="match")
        .sink(sink, name="out")
    )
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, restart_attempts=0)
    msg = str(info.value)
    assert "'match'" in msg and "'ts-orders'" in msg and "'ts-payments'" in msg
    assert "number" in msg and "str" in msg


@pytest.mark.parametrize(("lower", "upper"), [(1.0, -1.0), (5.0, 0.0), (float("nan"), 1.0), ("0", 1.0)])
def test_an_empty_or_invalid_interval_is_refused_naming_both_inputs(lower, upper):
    _, a, b = two_streams()
    with pytest.raises(JobDefinitionError, match=r"interval_join\(lower=.*'ts-orders'.*'ts-payments'"):
        a.key_by(lambda r: r[0]).interval_join(b.key_by(lambda r: r[0]), lower=lower, upper=upper)


@pytest.mark.parametrize("method", ["interval_join", "window_join"])
def test_event_time_joins_of_streams_without_timestamps_are_refused_naming_the_operators(method):
    _, a, b = two_streams(timestamps=False)
    args = (0.0, 1.0) if method == "interval_join" else (TumblingEventTimeWindows(5.0),)
    with pytest.raises(JobDefinitionError) as info:
        getattr(a.key_by(lambda r: r[0]), method)(b.key_by(lambda r: r[0]), *args)
    msg = str(info.value)
    assert "'parse-orders'" in msg and "'parse-payments'" in msg and "assign_timestamps" in msg


def test_window_join_refuses_merging_windows_and_non_assigners():
    _, a, b = two_streams()
    left, right = a.key_by(lambda r: r[0]), b.key_by(lambda r: r[0])
    with pytest.raises(JobDefinitionError, match="do not merge"):
        left.window_join(right, EventTimeSessionWindows(gap=1.0))
    with pytest.raises(JobDefinitionError, match="window assigner"):
        left.window_join(right, 5.0)


def test_connect_process_needs_both_element_methods_and_a_stream_cannot_join_itself():
    _, a, b = two_streams()
    left = a.key_by(lambda r: r[0])
    with pytest.raises(JobDefinitionError, match="process_element2"):
        left.connect(b.key_by(lambda r: r[0])).process(object())
    with pytest.raises(JobDefinitionError, match="same operator"):
        left.connect(a.key_by(lambda r: r[1]))


def test_the_plan_feeds_the_second_input_and_its_side_changes_the_default_uid():
    def plan_of(swap: bool):
        job, a, b = two_streams()
        left, right = a.key_by(lambda r: r[0]), b.key_by(lambda r: r[0])
        if swap:
            left, right = right, left
        left.connect(right).process(Pairs(), name="match").sink(TestingSink(), name="out")
        return job

    job = plan_of(False)
    plan = build_plan(job.graph, default_parallelism=2)
    head = next(t for t in plan.tasks if t.operators[0].name == "match")
    assert sorted(e.side for e in head.inputs) == [0, 1]
    assert "input 2" in plan.describe()
    uid = job.graph.by_uid().keys() - {"out"}
    assert uid != plan_of(True).graph.by_uid().keys() - {"out"}
