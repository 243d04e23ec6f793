"""CheckpointCoordinator driven by a fake clock over a memory:// checkpoint store."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest

from onceflow.engine.checkpoint.metadata import (
    FULL_ONLY_FORMAT,
    CheckpointMetadata,
    JobDescription,
    StateHandle,
)
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.coordinator import (
    AckResult,
    CheckpointCoordinator,
    Completer,
    CoordinatorSettings,
    complete_now,
)
from onceflow.engine.errors import CheckpointError, CheckpointFailureReason
from onceflow.state_backends.key_groups import HASH_FUNCTION_ID

JOB = JobDescription(job="wc", fingerprint="abc123", max_parallelism=128, operators={}, params={"n": "3"})
SUBTASKS = [(0, 0), (1, 0), (1, 1)]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Calls:
    """What the coordinator asked the executor to do."""

    triggered: list[tuple[int, bool]] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)


class MetadataWriteFails(CheckpointStore):
    """Stands in for a crash after every ack and before ``_metadata`` is written."""

    def write_metadata(self, meta: CheckpointMetadata) -> None:
        msg = "simulated crash before _metadata"
        raise OSError(msg)


def handle(uid: str, subtask: int, checkpoint_id: int, size: int = 100) -> StateHandle:
    return StateHandle(
        uid=uid,
        subtask=subtask,
        path=f"chk-{checkpoint_id}/{uid}-{subtask}.arrow",
        rows=1,
        bytes=size,
        sha256="0" * 64,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def store(memory_dir: str) -> CheckpointStore:
    return CheckpointStore(memory_dir, "wc")


@pytest.fixture
def make(store: CheckpointStore, clock: FakeClock, calls: Calls) -> Callable[..., CheckpointCoordinator]:
    def build(
        *,
        settings: CoordinatorSettings | None = None,
        store_: CheckpointStore | None = None,
        first_checkpoint_id: int = 1,
        subtasks: list[tuple[int, int]] | None = None,
        complete: Completer = complete_now,
    ) -> CheckpointCoordinator:
        return CheckpointCoordinator(
            store=store_ or store,
            job=JOB,
            subtasks=list(subtasks or SUBTASKS),
            settings=settings or CoordinatorSettings(interval=10.0, timeout=30.0, retain=3),
            first_checkpoint_id=first_checkpoint_id,
            completed={},
            trigger_sources=lambda n, final: calls.triggered.append((n, final)),
            notify_complete=calls.completed.append,
            notify_abort=calls.aborted.append,
            clock=clock,
            complete=complete,
        )

    return build


def ack_all(coordinator: CheckpointCoordinator, checkpoint_id: int) -> list[AckResult]:
    return [
        coordinator.acknowledge(checkpoint_id, key, [handle(f"op{key[0]}", key[1], checkpoint_id)])
        for key in SUBTASKS
    ]


# --------------------------------------------------------------------------- triggering


def test_triggers_only_once_the_interval_has_passed(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make()

    coordinator.tick(clock.advance(9.99))
    assert calls.triggered == []
    assert coordinator.pending is None

    coordinator.tick(clock.advance(0.01))
    assert calls.triggered == [(1, False)]
    assert coordinator.pending is not None
    assert coordinator.pending.checkpoint_id == 1


def test_at_most_one_checkpoint_is_pending(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))

    coordinator.tick(clock.advance(10))
    coordinator.tick(clock.advance(10))

    assert calls.triggered == [(1, False)]
    with pytest.raises(RuntimeError, match="already pending"):
        coordinator.trigger(final=True)


def test_checkpoint_ids_continue_from_the_first_id(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make(first_checkpoint_id=8)

    coordinator.tick(clock.advance(10))
    ack_all(coordinator, 8)
    coordinator.tick(clock.advance(10))

    assert calls.triggered == [(8, False), (9, False)]


def test_min_pause_delays_the_next_trigger_after_a_completion(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make(settings=CoordinatorSettings(interval=1.0, min_pause=5.0, timeout=30.0))
    coordinator.tick(clock.advance(5))
    assert calls.triggered == [(1, False)]
    clock.advance(3)
    ack_all(coordinator, 1)

    coordinator.tick(clock.advance(4))
    assert calls.triggered == [(1, False)]

    coordinator.tick(clock.advance(1))
    assert calls.triggered == [(1, False), (2, False)]


# --------------------------------------------------------------------------- completion


def test_completes_only_after_every_subtask_acknowledged(
    make: Callable[..., CheckpointCoordinator],
    clock: FakeClock,
    calls: Calls,
    store: CheckpointStore,
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))

    assert coordinator.acknowledge(1, (0, 0), [handle("read", 0, 1)]) is AckResult.SUCCESS
    assert coordinator.acknowledge(1, (1, 1), [handle("count", 1, 1)]) is AckResult.SUCCESS
    assert store.read_metadata(1) is None
    assert calls.completed == []
    assert coordinator.pending is not None

    clock.advance(0.25)
    assert coordinator.acknowledge(1, (1, 0), [handle("count", 0, 1)]) is AckResult.SUCCESS

    assert calls.completed == [1]
    assert coordinator.pending is None
    assert coordinator.completed_count == 1
    assert set(coordinator.completed) == {1}
    last = coordinator.last_completed
    assert last is not None
    assert (last.checkpoint_id, last.duration_s, last.size_bytes, last.final) == (1, 0.25, 300, False)
    assert not coordinator.finished


def test_completion_writes_metadata_with_job_info_and_sorted_handles(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, store: CheckpointStore
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))
    coordinator.acknowledge(1, (1, 1), [handle("count", 1, 1, size=7)])
    coordinator.acknowledge(1, (0, 0), [handle("read", 0, 1, size=5), handle("a", 0, 1, size=1)])
    coordinator.acknowledge(1, (1, 0), [handle("count", 0, 1, size=3)])

    meta = store.read_metadata(1)

    assert meta is not None
    assert (meta.job, meta.fingerprint, meta.max_parallelism, meta.operators, meta.params) == (
        "wc",
        "abc123",
        128,
        {},
        {"n": "3"},
    )
    assert meta.format == FULL_ONLY_FORMAT
    assert meta.checkpoint_id == 1
    assert meta.final is False
    assert meta.hash_function == HASH_FUNCTION_ID
    assert meta.size_bytes == 16
    assert [(h.uid, h.subtask) for h in meta.handles] == [
        ("a", 0),
        ("count", 0),
        ("count", 1),
        ("read", 0),
    ]
    assert meta.timings.triggered_at.endswith("+00:00")
    assert coordinator.completed[1] == meta


def test_duplicate_and_unknown_acknowledgements_are_values_not_errors(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))

    assert coordinator.acknowledge(1, (0, 0), []) is AckResult.SUCCESS
    assert coordinator.acknowledge(1, (0, 0), []) is AckResult.DUPLICATE
    assert coordinator.acknowledge(2, (1, 0), []) is AckResult.UNKNOWN
    assert coordinator.acknowledge(0, (1, 0), []) is AckResult.UNKNOWN
    assert calls.completed == []

    assert coordinator.acknowledge(1, (1, 0), []) is AckResult.SUCCESS
    assert coordinator.acknowledge(1, (1, 1), []) is AckResult.SUCCESS
    assert calls.completed == [1]
    assert coordinator.acknowledge(1, (1, 1), []) is AckResult.UNKNOWN
    assert calls.completed == [1]


def test_final_checkpoint_finishes_the_coordinator(
    make: Callable[..., CheckpointCoordinator], calls: Calls, store: CheckpointStore
) -> None:
    coordinator = make()

    assert coordinator.trigger(final=True) == 1
    ack_all(coordinator, 1)

    assert calls.triggered == [(1, True)]
    assert coordinator.finished
    meta = store.read_metadata(1)
    assert meta is not None
    assert meta.final is True


def test_completion_applies_retention_before_notifying(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, store: CheckpointStore
) -> None:
    coordinator = make(settings=CoordinatorSettings(interval=1.0, timeout=30.0, retain=2))
    seen_at_notify: list[list[int]] = []
    coordinator._notify_complete = lambda n: seen_at_notify.append(store.checkpoint_ids())

    for n in (1, 2, 3, 4):
        coordinator.tick(clock.advance(1))
        ack_all(coordinator, n)

    assert store.checkpoint_ids() == [3, 4]
    assert sorted(coordinator.completed) == [3, 4]
    assert seen_at_notify == [[1], [1, 2], [2, 3], [3, 4]]


class HeldCompletion:
    """A completer that runs the completion I/O only when the test says so, as a slow thread would."""

    def __init__(self) -> None:
        self.work: list[tuple[Callable[[], None], Future[None]]] = []

    def __call__(self, work: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self.work.append((work, future))
        return future

    def release(self) -> None:
        work, future = self.work.pop(0)
        try:
            work()
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)


def test_a_checkpoint_completing_in_the_background_stays_pending_until_its_metadata_is_written(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls, store: CheckpointStore
) -> None:
    held = HeldCompletion()
    coordinator = make(settings=CoordinatorSettings(interval=1.0, timeout=5.0, retain=3), complete=held)
    coordinator.tick(clock.advance(1))
    ack_all(coordinator, 1)

    # Acknowledged, _metadata not yet written: not complete, not abortable, nothing new triggered.
    coordinator.tick(clock.advance(10))
    assert store.read_metadata(1) is None
    assert coordinator.pending is not None and calls.completed == [] and calls.aborted == []
    assert calls.triggered == [(1, False)]
    assert coordinator.acknowledge(1, (0, 0), [handle("op0", 0, 1)]) is AckResult.DUPLICATE
    assert len(held.work) == 1

    held.release()
    assert store.read_metadata(1) is not None and calls.completed == []
    # The completion took the next id ahead, so triggering it writes no mark.
    assert store.read_checkpoint_id_mark() == 2
    coordinator.tick(clock.advance(1))
    assert calls.completed == [1] and coordinator.completed_count == 1
    assert calls.triggered == [(1, False), (2, False)], "the next checkpoint is due in the same tick"


def test_an_error_of_the_background_completion_is_raised_on_the_next_tick(
    make: Callable[..., CheckpointCoordinator],
    clock: FakeClock,
    calls: Calls,
    memory_dir: str,
) -> None:
    held = HeldCompletion()
    coordinator = make(store_=MetadataWriteFails(memory_dir, "wc"), complete=held)
    coordinator.tick(clock.advance(10))
    ack_all(coordinator, 1)
    held.release()

    with pytest.raises(OSError, match="simulated crash before _metadata"):
        coordinator.tick(clock.advance(0.1))
    assert calls.completed == [] and coordinator.completed_count == 0


def test_the_final_checkpoint_takes_no_id_ahead(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, store: CheckpointStore
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(0), drained=True)
    ack_all(coordinator, 1)

    assert coordinator.finished
    assert store.read_checkpoint_id_mark() == 1


# --------------------------------------------------------------------------- abort


def test_timeout_aborts_the_pending_checkpoint_and_notifies(
    make: Callable[..., CheckpointCoordinator],
    clock: FakeClock,
    calls: Calls,
    store: CheckpointStore,
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))
    coordinator.acknowledge(1, (0, 0), [])

    coordinator.tick(clock.advance(30))
    assert coordinator.pending is not None

    coordinator.tick(clock.advance(0.01))
    assert coordinator.pending is None
    assert calls.aborted == [1]
    assert coordinator.aborted_count == 1
    assert coordinator.failures_in_a_row == 1

    assert coordinator.acknowledge(1, (1, 0), []) is AckResult.UNKNOWN
    assert coordinator.acknowledge(1, (1, 1), []) is AckResult.UNKNOWN
    assert store.read_metadata(1) is None
    assert calls.completed == []


def test_after_an_abort_the_next_checkpoint_gets_a_new_id(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))
    coordinator.abort(CheckpointFailureReason.WRITE_FAILED)

    coordinator.tick(clock.advance(10))
    ack_all(coordinator, 2)

    assert calls.triggered == [(1, False), (2, False)]
    assert calls.completed == [2]
    assert coordinator.failures_in_a_row == 0


def test_decline_aborts_only_the_pending_checkpoint(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make()
    coordinator.tick(clock.advance(10))

    coordinator.decline(7, CheckpointFailureReason.WRITE_FAILED, "not this one")
    assert coordinator.pending is not None

    coordinator.decline(1, CheckpointFailureReason.WRITE_FAILED, "disk full")
    assert coordinator.pending is None
    assert calls.aborted == [1]


def test_abort_without_a_pending_checkpoint_does_nothing(
    make: Callable[..., CheckpointCoordinator], calls: Calls
) -> None:
    coordinator = make()

    coordinator.abort(CheckpointFailureReason.TIMEOUT)

    assert calls.aborted == []
    assert coordinator.aborted_count == 0


def test_too_many_failures_in_a_row_raise_checkpoint_error(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock, calls: Calls
) -> None:
    coordinator = make(settings=CoordinatorSettings(interval=1.0, timeout=5.0, tolerable_failures=2))
    for _ in range(2):
        coordinator.tick(clock.advance(1))
        coordinator.tick(clock.advance(6))

    coordinator.tick(clock.advance(1))
    with pytest.raises(CheckpointError, match="3 checkpoints failed in a row") as info:
        coordinator.tick(clock.advance(6))

    assert info.value.reason is CheckpointFailureReason.TIMEOUT
    assert calls.aborted == [1, 2, 3]


def test_a_completed_checkpoint_resets_the_failure_count(
    make: Callable[..., CheckpointCoordinator], clock: FakeClock
) -> None:
    coordinator = make(settings=CoordinatorSettings(interval=1.0, timeout=5.0, tolerable_failures=1))
    coordinator.tick(clock.advance(1))
    coordinator.tick(clock.advance(6))
    coordinator.tick(clock.advance(1))
    ack_all(coordinator, 2)

    coordinator.tick(clock.advance(1))
    coordinator.tick(clock.advance(6))

    assert coordinator.failures_in_a_row == 1
    assert coordinator.aborted_count == 2


# --------------------------------------------------------------------------- crash before metadata


def test_crash_between_acks_and_metadata_leaves_no_checkpoint(
    make: Callable[..., CheckpointCoordinator],
    clock: FakeClock,
    calls: Calls,
    memory_dir: str,
) -> None:
    failing = MetadataWriteFails(memory_dir, "wc")
    coordinator = make(store_=failing)
    coordinator.tick(clock.advance(10))
    state_file = failing.paths.state_file(1, "count", 0)
    failing.fs.pipe_file(state_file, b"state written before the crash")
    coordinator.acknowledge(1, (0, 0), [])
    coordinator.acknowledge(1, (1, 0), [handle("count", 0, 1)])

    with pytest.raises(OSError, match="simulated crash"):
        coordinator.acknowledge(1, (1, 1), [])

    reader = CheckpointStore(memory_dir, "wc")
    assert reader.checkpoint_ids() == [1]
    assert reader.read_metadata(1) is None
    assert calls.completed == []
    assert 1 not in coordinator.completed
    assert coordinator.last_completed is None
    assert coordinator.completed_count == 0
