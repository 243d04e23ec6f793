"""Retention and cleanup decisions: pure functions over checkpoint metadata, no storage."""

from __future__ import annotations

import pytest

from onceflow.engine.checkpoint.metadata import CheckpointMetadata, StateHandle, Timings
from onceflow.engine.checkpoint.retention import Deletion, checkpoints_to_subsume, plan_deletions


def meta(checkpoint_id: int, *files: str) -> CheckpointMetadata:
    handles = tuple(
        StateHandle(uid=f.rsplit("/", 1)[-1].split("-")[0], subtask=0, path=f, rows=1, bytes=10, sha256="0")
        for f in files
    )
    return CheckpointMetadata(
        job="wc",
        fingerprint="f",
        max_parallelism=128,
        operators={},
        params={},
        checkpoint_id=checkpoint_id,
        final=False,
        handles=handles,
        size_bytes=10 * len(handles),
        timings=Timings(triggered_at="2024-01-01T00:00:00+00:00", duration_s=0.1),
    )


def own(checkpoint_id: int) -> CheckpointMetadata:
    return meta(checkpoint_id, f"chk-{checkpoint_id}/count-0.arrow")


def test_checkpoints_to_subsume_are_all_but_the_newest() -> None:
    assert checkpoints_to_subsume([4, 1, 3, 2, 5], 2) == [1, 2, 3]
    assert checkpoints_to_subsume([1, 2], 3) == []
    assert checkpoints_to_subsume([], 1) == []
    assert checkpoints_to_subsume([7], 1) == []


@pytest.mark.parametrize("retain", [0, -1])
def test_retention_refuses_to_keep_nothing(retain: int) -> None:
    with pytest.raises(ValueError, match="at least one"):
        checkpoints_to_subsume([1, 2], retain)
    with pytest.raises(ValueError, match="at least one"):
        plan_deletions({1: own(1)}, retain=retain)


def test_retention_subsumes_oldest_first_and_deletes_whole_directories() -> None:
    completed = {n: own(n) for n in (3, 1, 2, 4)}

    assert plan_deletions(completed, retain=2) == [Deletion(1), Deletion(2)]


def test_retention_spares_files_a_retained_checkpoint_references() -> None:
    completed = {
        1: meta(1, "chk-1/count-0.arrow", "chk-1/read-0.arrow", "chk-1/write-0.arrow"),
        2: meta(2, "chk-1/count-0.arrow", "chk-2/read-0.arrow"),
        3: meta(3, "chk-1/write-0.arrow", "chk-3/read-0.arrow"),
    }

    assert plan_deletions(completed, retain=2) == [Deletion(1, frozenset({"count-0.arrow", "write-0.arrow"}))]


def test_without_retain_only_unusable_checkpoints_go_in_the_given_order() -> None:
    completed = {3: own(3), 1: own(1)}

    plan = plan_deletions(completed, unusable=[5, 4, 2])

    assert [d.checkpoint_id for d in plan] == [5, 4, 2]
    assert all(d.keep_files == frozenset() for d in plan)


def test_an_unusable_checkpoint_keeps_the_files_a_completed_one_still_needs() -> None:
    # an interrupted retention left chk-1 without _metadata; chk-2 still reads one of its files
    completed = {2: meta(2, "chk-1/count-0.arrow", "chk-2/read-0.arrow")}

    assert plan_deletions(completed, unusable=[1]) == [Deletion(1, frozenset({"count-0.arrow"}))]


def test_nothing_to_delete_is_an_empty_plan() -> None:
    assert plan_deletions({}) == []
    assert plan_deletions({1: own(1)}, retain=3) == []


def test_shared_files_go_only_when_unreferenced_and_written_up_to_the_completed_checkpoint() -> None:
    from onceflow.engine.checkpoint.retention import shared_to_delete

    shared = [
        "shared/op-0-3-kg0-base.arrow",
        "shared/op-0-4-kg0-delta.arrow",
        "shared/op-0-5-kg0-delta.arrow",
        "shared/op-0-6-kg0-delta.arrow",
        "shared/.probe",
    ]
    referenced = frozenset({"shared/op-0-3-kg0-base.arrow", "shared/op-0-5-kg0-delta.arrow"})
    # during a run: a file of checkpoint 6 (in flight) stays even though nothing lists it yet
    assert shared_to_delete(shared, referenced, written_up_to=5) == ["shared/op-0-4-kg0-delta.arrow"]
    # no run writing: every unreferenced state file goes, other names are never touched
    assert shared_to_delete(shared, referenced) == [
        "shared/op-0-4-kg0-delta.arrow",
        "shared/op-0-6-kg0-delta.arrow",
    ]
