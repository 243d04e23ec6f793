"""A two-phase-commit sink refuses a restore behind the newest checkpoint it committed."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest

from onceflow.engine.errors import classify
from onceflow.operators.base import RestoredState, TwoPhaseCommitWriter
from onceflow.operators.errors import SinkAheadOfCheckpointError, SinkError
from onceflow.state_backends.errors import ErrorDomain


class RecordingWriter(TwoPhaseCommitWriter):
    """Reports ``committed`` as its last committed checkpoint; records commits and aborts."""

    def __init__(self, committed: int | None) -> None:
        super().__init__()
        self.committed = committed
        self.commits: list[Any] = []
        self.aborted: list[Any] = []

    def last_committed_checkpoint(self) -> int | None:
        return self.committed

    def commit(self, committable: Any) -> bool:
        self.commits.append(committable)
        return True

    def abort_leftovers(self, keep: Any) -> None:
        self.aborted.append(list(keep))


def restored(checkpoint_id: int, *owed: int) -> RestoredState:
    return RestoredState(checkpoint_id, 1, [(0, [(n, f"c{n}") for n in owed])], {})


def test_a_restore_behind_the_sink_is_refused_before_anything_is_touched(
    context_factory: Callable[..., Any],
) -> None:
    writer = RecordingWriter(committed=12)
    writer.open(context_factory(restored_checkpoint_id=10, job_name="wc", uid="out"))
    with pytest.raises(SinkAheadOfCheckpointError) as info:
        writer.restore_state(restored(10, 10))
    message = str(info.value)
    for text in ("committed checkpoint 12", "restore checkpoint 10", "checkpoints 11 to 12", "twice"):
        assert text in message
    assert "chk-12" in message and "--fresh" in message and "'wc'" in message
    assert (info.value.committed, info.value.restored) == (12, 10)
    assert writer.commits == [] and writer.aborted == []


def test_one_lost_checkpoint_is_named_alone(context_factory: Callable[..., Any]) -> None:
    writer = RecordingWriter(committed=5)
    writer.open(context_factory(restored_checkpoint_id=4))
    with pytest.raises(SinkAheadOfCheckpointError, match="checkpoint 5 completed but is now missing"):
        writer.restore_state(restored(4))


@pytest.mark.parametrize("committed", [None, 3, 4])
def test_a_restore_at_or_after_the_sink_recommits_and_aborts_as_before(
    committed: int | None, context_factory: Callable[..., Any]
) -> None:
    writer = RecordingWriter(committed=committed)
    writer.open(context_factory(restored_checkpoint_id=4))
    writer.restore_state(restored(4, 4))
    assert writer.commits == ["c4"]
    assert writer.aborted == [["c4"]]


def test_the_refusal_is_a_user_error_never_retried_and_pickles() -> None:
    err = SinkAheadOfCheckpointError("sink x committed checkpoint 3", 3, 2)
    assert isinstance(err, SinkError) and err.domain is ErrorDomain.USER
    assert classify(err).retryable is False
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.committed, copy.restored) == (str(err), 3, 2)
