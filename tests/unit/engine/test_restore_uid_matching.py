"""Restore-side uid matching: state goes only to an operator of the same uid and kind, else a refusal."""

from __future__ import annotations

import logging

import pytest

from onceflow import FileSink, FileSource, Job
from onceflow.engine.checkpoint.metadata import CheckpointMetadata, JobDescription, StateHandle, Timings
from onceflow.engine.checkpoint.restore import check_compatible
from onceflow.engine.errors import IncompatibleCheckpointError
from onceflow.engine.plan import PhysicalPlan, build_plan


def plan_of(kind: str, *, count_uid: str | None = "count", inserted: bool = False) -> PhysicalPlan:
    job = Job("uids")
    words = job.source(FileSource("/nonexistent"), name="read", uid="read")
    if inserted:
        words = words.key_by(lambda w: w).stateful_map(lambda s, w: (s, w))
    keyed = words.map(lambda w: (w, 1)).key_by(lambda kv: kv[0])
    if kind == "reduce":
        counted = keyed.reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid=count_uid)
    else:
        counted = keyed.stateful_map(lambda s, kv: ((s or 0) + 1, kv), name="count", uid=count_uid)
    counted.map(str).sink(FileSink("/nonexistent-out"), name="write", uid="write")
    return build_plan(job.graph)


def checkpoint_of(plan: PhysicalPlan) -> CheckpointMetadata:
    stateful = [
        op.uid for t in plan.tasks for op in t.operators if op.uid in ("read", "write") or "count" in op.name
    ]
    handles = [StateHandle(uid, 0, f"chk-1/{uid}-0.arrow", 1, 10, "00" * 32, None, None) for uid in stateful]
    return CheckpointMetadata.complete(
        JobDescription.of_plan(plan, {}),
        checkpoint_id=1,
        final=False,
        handles=handles,
        timings=Timings("2026-01-01T00:00:00+00:00", 0.1),
    )


def test_the_metadata_records_each_operators_method() -> None:
    meta = checkpoint_of(plan_of("reduce"))

    assert meta.operators["count"].method == "reduce"
    assert meta.operators["count"].state_kind == "reduce"


def test_state_of_another_kind_under_the_same_uid_is_refused_naming_both() -> None:
    meta = checkpoint_of(plan_of("reduce"))

    with pytest.raises(IncompatibleCheckpointError) as err:
        check_compatible(meta, plan_of("stateful_map"), {}, where="checkpoint 1")

    assert "'count' (reduce 'count')" in str(err.value)
    assert "stateful_map 'count'" in str(err.value)


def test_unmatched_state_names_the_operators_without_uid(caplog: pytest.LogCaptureFixture) -> None:
    old = plan_of("reduce", count_uid=None)
    meta = checkpoint_of(old)
    new = plan_of("reduce", count_uid=None, inserted=True)
    old_uid = next(op.uid for t in old.tasks for op in t.operators if op.name == "count")

    with pytest.raises(IncompatibleCheckpointError) as err:
        check_compatible(meta, new, {}, where="checkpoint 1")
    assert f"{old_uid!r} (reduce 'count')" in str(err.value)
    assert "Operators without uid=: 'stateful_map'" in str(err.value)
    assert f"uid={old_uid!r}" in str(err.value) and "--allow-unmatched-state" in str(err.value)

    with caplog.at_level(logging.WARNING, logger="onceflow"):
        dropped = check_compatible(meta, new, {}, where="checkpoint 1", allow_unmatched_state=True)
    assert dropped == {old_uid}
    assert f"dropping the state of {old_uid!r}" in caplog.text


def test_matching_state_restores_and_drops_nothing() -> None:
    meta = checkpoint_of(plan_of("reduce"))

    assert check_compatible(meta, plan_of("reduce"), {}, where="checkpoint 1") == frozenset()
