"""Checkpoint ids are never reused: the high-water mark ``_checkpoint_ids`` and ``next_checkpoint_id``."""

from __future__ import annotations

from pathlib import Path

import pytest

from onceflow.engine.checkpoint.metadata import JobDescription
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.restore import next_checkpoint_id
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.coordinator import CheckpointCoordinator, CoordinatorSettings
from onceflow.engine.errors import CheckpointDirectoryError, CheckpointFailureReason


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path, memory_dir: str) -> CheckpointStore:
    s = CheckpointStore(str(tmp_path / "chk") if request.param == "local" else memory_dir, "job")
    s.ensure_writable()
    return s


@pytest.mark.parametrize(
    ("existing", "started", "expected"),
    [([], 0, 1), ([1, 3], 0, 4), ([1, 3], 7, 8), ([9], 7, 10), ([], 12, 13)],
)
def test_next_id_is_above_every_directory_and_the_high_water_mark(
    existing: list[int], started: int, expected: int
) -> None:
    assert next_checkpoint_id(existing, started) == expected


def test_the_mark_has_one_name_in_the_job_directory() -> None:
    paths = CheckpointPaths("/data/chk", "wc")
    assert paths.checkpoint_id_mark == "/data/chk/wc/_checkpoint_ids"
    assert paths.checkpoint_id_mark_temp.startswith("/data/chk/wc/.")
    assert CheckpointPaths.parse_checkpoint_id(paths.checkpoint_id_mark) is None


def test_the_mark_round_trips_and_fresh_deletes_it(store: CheckpointStore) -> None:
    assert store.read_checkpoint_id_mark() == 0
    store.write_checkpoint_id_mark(5)
    store.write_checkpoint_id_mark(6)
    assert store.read_checkpoint_id_mark() == 6
    assert store.checkpoint_ids() == []
    store.delete_checkpoint_id_mark()
    store.delete_checkpoint_id_mark()
    assert store.read_checkpoint_id_mark() == 0


def test_the_mark_is_written_atomically_without_a_leftover(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "chk"), "job")
    store.ensure_writable()
    store.write_checkpoint_id_mark(3)
    assert sorted(p.name for p in (tmp_path / "chk" / "job").iterdir()) == ["_checkpoint_ids"]


def test_a_corrupt_mark_is_refused_by_name(store: CheckpointStore) -> None:
    store.fs.pipe_file(store.paths.checkpoint_id_mark, b"\x00garbage")
    with pytest.raises(CheckpointDirectoryError, match="_checkpoint_ids.*is corrupt.*--fresh"):
        store.read_checkpoint_id_mark()


def test_the_coordinator_takes_the_id_before_the_sources_snapshot(memory_dir: str) -> None:
    store = CheckpointStore(memory_dir, "job")
    store.ensure_writable()
    seen: list[tuple[int, int]] = []
    coordinator = CheckpointCoordinator(
        store=store,
        job=JobDescription(job="job", fingerprint="f", max_parallelism=128, operators={}, params={}),
        subtasks=[(0, 0)],
        settings=CoordinatorSettings(interval=1.0),
        first_checkpoint_id=8,
        completed={},
        trigger_sources=lambda n, final: seen.append((n, store.read_checkpoint_id_mark())),
        notify_complete=lambda n: None,
        notify_abort=lambda n: None,
        clock=lambda: 0.0,
    )
    coordinator.trigger(final=False)
    coordinator.abort(CheckpointFailureReason.TIMEOUT)  # an aborted id stays taken
    coordinator.trigger(final=False)
    assert seen == [(8, 8), (9, 9)]
    assert next_checkpoint_id(store.checkpoint_ids(), store.read_checkpoint_id_mark()) == 10
