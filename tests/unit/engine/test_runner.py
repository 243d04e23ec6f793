"""JobRunner: committed output, reruns, restores, fallbacks and restarts, under both executors.

Under the process executor user code runs in forked workers: what a test's UDF
records goes to a file (``CallLog``), and the cause of a task failure stays in
the worker, so tests check its class by name (``cause_name``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onceflow import (
    CheckpointStorageError,
    ConcurrentRunError,
    CoordinatorSettings,
    ExecutionSettings,
    FileSink,
    FileSource,
    IncompatibleCheckpointError,
    Job,
    JobDefinitionError,
    JobRunner,
    OperatorError,
    RestartStrategy,
    RestoredState,
    RunStatus,
    Source,
    SourceReader,
    read_committed_lines,
)
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.errors import KeyEncodingError, SinkCommitError, classify
from onceflow.operators.errors import SinkOwnershipError, SourceError

WORDS = "the quick fox jumps over the lazy dog the fox naps quick quick end".split()

TreeSnapshot = Callable[..., dict[str, tuple[int, bytes]]]


class CallLog:
    """Values user code saw, appended to a file, so calls in worker processes are seen too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, value: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(value + "\n")

    def values(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


def cause_name(err: BaseException) -> str:
    """Class name of a task failure's cause: the exception in-process, its name from a worker."""
    cause = err.__cause__
    return type(cause).__name__ if cause is not None else getattr(err, "cause_type", "")


def running_counts(words: list[str]) -> list[str]:
    """The plain-Python reference: each word's running count, in input order."""
    seen: Counter[str] = Counter()
    out = []
    for word in words:
        seen[word] += 1
        out.append(f"{word},{seen[word]}")
    return out


class SimulatedKill(Exception):
    """Raised by ``GatedSource`` to stop a run the way a kill would: mid-stream."""


class GatedSource(Source):
    """Emit ``records`` in batches; each batch only once the previous ones are checkpointed.

    So every batch is covered by its own completed checkpoint, whatever the
    timing of the background writer. With ``fail_at``, the reader raises
    ``SimulatedKill`` once that many records are in a completed checkpoint.
    """

    def __init__(self, records: list[str], *, batch_size: int = 2, fail_at: int | None = None) -> None:
        self.records = records
        self.batch_size = batch_size
        self.fail_at = fail_at

    def create_reader(self, subtask_index: int, parallelism: int) -> GatedReader:
        assert parallelism == 1, "GatedSource is a single-subtask source"
        return GatedReader(self)


class GatedReader(SourceReader):
    def __init__(self, source: GatedSource) -> None:
        self.source = source
        self.position = 0
        self.durable = 0
        self.at_snapshot: dict[int, int] = {}

    def restore_state(self, restored: RestoredState) -> None:
        self.position = self.durable = max(state for _, state in restored.operator_states)

    def poll_batch(self, max_records: int) -> list[str] | None:
        if self.position > self.durable:
            return []
        fail_at = self.source.fail_at
        if fail_at is not None and self.position >= fail_at:
            msg = f"simulated kill after {self.position} checkpointed records"
            raise SimulatedKill(msg)
        if self.position >= len(self.source.records):
            return None
        batch = self.source.records[self.position : self.position + self.source.batch_size]
        self.position += len(batch)
        return batch

    def snapshot_state(self, checkpoint_id: int) -> int:
        self.at_snapshot[checkpoint_id] = self.position
        return self.position

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.durable = max(self.durable, self.at_snapshot.pop(checkpoint_id, self.durable))


def count_job(
    source: Source,
    out: Path,
    *,
    count_uid: str = "count",
    check: Callable[[str], str] | None = None,
    name: str = "counts",
) -> Job:
    """Lines -> words -> running count per word -> ``word,count`` lines in a FileSink."""
    job = Job(name)
    words = job.source(source, name="read", uid="read").flat_map(str.split, name="split")
    if check is not None:
        words = words.map(check, name="check")
    (
        words.map(lambda w: (w, 1), name="pair")
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid=count_uid)
        .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
        .sink(FileSink(str(out)), name="write", uid="write")
    )
    return job


FAST_CHECKPOINTS = ExecutionSettings(checkpoint=CoordinatorSettings(interval=0.0, retain=3))
NO_RESTART = RestartStrategy(attempts=0)


@pytest.fixture
def words_dir(input_factory: Callable[..., Path]) -> Path:
    """Two input files whose lines, in order, hold ``WORDS``."""
    return input_factory(
        {"a.txt": "the quick fox\njumps over the lazy dog\n", "b.txt": "the fox naps\nquick quick end\n"}
    )


@pytest.fixture
def chk(tmp_path: Path) -> str:
    return str(tmp_path / "chk")


def completed_ids(chk: str, job_name: str = "counts") -> list[int]:
    store = CheckpointStore(chk, job_name)
    return [n for n in store.checkpoint_ids() if store.read_metadata(n) is not None]


def kill_midway(out: Path, chk: str, fail_at: int, executor: str) -> list[int]:
    """Run a gated job that stops after ``fail_at`` records; return its completed checkpoints."""
    runner = JobRunner(
        count_job(GatedSource(WORDS, fail_at=fail_at), out),
        checkpoint_dir=chk,
        settings=FAST_CHECKPOINTS,
        restart=NO_RESTART,
        executor=executor,
    )
    with pytest.raises(OperatorError) as info:
        runner.run()
    assert cause_name(info.value) == "SimulatedKill"
    assert info.value.operator == "read"
    return completed_ids(chk)


# --------------------------------------------------------------------------- plain runs


@pytest.mark.parametrize("parallelism", [1, 2])
def test_committed_output_equals_the_plain_python_reference(
    words_dir: Path, tmp_path: Path, chk: str, parallelism: int, executor: str
) -> None:
    out = tmp_path / "out"

    result = JobRunner(
        count_job(FileSource(str(words_dir)), out),
        checkpoint_dir=chk,
        parallelism=parallelism,
        executor=executor,
    ).run()

    lines = read_committed_lines(str(out))
    if parallelism == 1:
        assert lines == running_counts(WORDS)
    else:
        assert sorted(lines) == sorted(running_counts(WORDS))
    assert result.status is RunStatus.FINISHED
    assert result.job_name == "counts"
    assert result.restored_from is None
    assert (result.attempts, result.restarts) == (1, 0)
    assert result.records_read == 4
    assert result.checkpoint_id == completed_ids(chk)[-1]
    assert CheckpointStore(chk, "counts").read_metadata(result.checkpoint_id).final is True


def test_gated_run_checkpoints_every_batch_and_equals_the_reference(
    tmp_path: Path, chk: str, executor: str
) -> None:
    out = tmp_path / "out"

    result = JobRunner(
        count_job(GatedSource(WORDS, batch_size=3), out),
        checkpoint_dir=chk,
        settings=FAST_CHECKPOINTS,
        executor=executor,
    ).run()

    assert read_committed_lines(str(out)) == running_counts(WORDS)
    assert result.checkpoints_completed >= len(WORDS) // 3
    assert len(completed_ids(chk)) == 3


def test_rerun_of_a_finished_job_is_already_finished_and_changes_no_file(
    words_dir: Path, tmp_path: Path, chk: str, tree_snapshot: TreeSnapshot, executor: str
) -> None:
    out = tmp_path / "out"
    first = JobRunner(count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor).run()
    before_out = tree_snapshot(out)
    before_chk = tree_snapshot(Path(chk), skip=frozenset({"_lock"}))

    again = JobRunner(count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor).run()

    assert again.status is RunStatus.ALREADY_FINISHED
    assert again.checkpoint_id == first.checkpoint_id
    assert again.restored_from == first.checkpoint_id
    assert again.records_read == 0
    assert tree_snapshot(out) == before_out
    assert tree_snapshot(Path(chk), skip=frozenset({"_lock"})) == before_chk


def test_fresh_starts_over_and_yields_the_same_output(
    words_dir: Path, tmp_path: Path, chk: str, tree_snapshot: TreeSnapshot, executor: str
) -> None:
    out = tmp_path / "out"
    JobRunner(
        count_job(GatedSource(WORDS), out), checkpoint_dir=chk, settings=FAST_CHECKPOINTS, executor=executor
    ).run()
    old_files = tree_snapshot(out)
    assert len(completed_ids(chk)) == 3

    result = JobRunner(
        count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, fresh=True, executor=executor
    ).run()

    assert result.status is RunStatus.FINISHED
    assert result.restored_from is None
    assert read_committed_lines(str(out)) == running_counts(WORDS)
    assert completed_ids(chk) == [1]
    assert len([name for name in old_files if name.startswith("part-")]) == 7
    assert [name for name in tree_snapshot(out) if name.startswith("part-")] == ["part-00000-0000000001"]


def test_incomplete_checkpoint_without_metadata_is_ignored_and_removed(
    words_dir: Path, tmp_path: Path, chk: str, executor: str
) -> None:
    out = tmp_path / "out"
    JobRunner(count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor).run()
    torn = Path(chk) / "counts" / "chk-2"
    torn.mkdir()
    (torn / "count-0.arrow").write_bytes(b"half a state file")

    result = JobRunner(
        count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor
    ).run()

    assert result.status is RunStatus.ALREADY_FINISHED
    assert result.restored_from == 1
    assert not torn.exists()
    assert read_committed_lines(str(out)) == running_counts(WORDS)


# --------------------------------------------------------------------------- restore after a kill


def test_rerun_after_a_kill_resumes_from_the_latest_checkpoint(
    tmp_path: Path, chk: str, caplog: pytest.LogCaptureFixture, executor: str
) -> None:
    out = tmp_path / "out"
    completed = kill_midway(out, chk, fail_at=6, executor=executor)
    assert read_committed_lines(str(out)) == running_counts(WORDS)[:6]

    with caplog.at_level(logging.INFO, logger="onceflow"):
        result = JobRunner(
            count_job(GatedSource(WORDS), out),
            checkpoint_dir=chk,
            settings=FAST_CHECKPOINTS,
            executor=executor,
        ).run()

    assert result.restored_from == completed[-1]
    assert f"restoring from checkpoint {completed[-1]}" in caplog.messages
    assert result.records_read == len(WORDS) - 6
    assert read_committed_lines(str(out)) == running_counts(WORDS)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["flipped-byte", "truncated"])
@pytest.mark.parametrize("state_file", ["count-0.arrow", "read-0.arrow", "write-0.arrow"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path,
    chk: str,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    state_file: str,
    executor: str,
) -> None:
    out = tmp_path / "out"
    completed = kill_midway(out, chk, fail_at=8, executor=executor)
    assert len(completed) >= 2, completed
    latest, previous = completed[-1], completed[-2]
    damage(Path(chk) / "counts" / f"chk-{latest}" / state_file)

    with caplog.at_level(logging.INFO, logger="onceflow"):
        result = JobRunner(
            count_job(GatedSource(WORDS), out),
            checkpoint_dir=chk,
            settings=FAST_CHECKPOINTS,
            executor=executor,
        ).run()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"checkpoint {latest} is unusable" in w and f"restoring from checkpoint {previous}" in w
        for w in warnings
    ), warnings
    assert f"restoring from checkpoint {previous}" in caplog.messages
    assert result.restored_from == previous
    assert read_committed_lines(str(out)) == running_counts(WORDS)
    assert latest not in completed_ids(chk)


def test_corrupt_metadata_of_the_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, chk: str, caplog: pytest.LogCaptureFixture, executor: str
) -> None:
    out = tmp_path / "out"
    completed = kill_midway(out, chk, fail_at=8, executor=executor)
    latest, previous = completed[-1], completed[-2]
    (Path(chk) / "counts" / f"chk-{latest}" / "_metadata").write_text('{"checkpoint_id": ')

    with caplog.at_level(logging.INFO, logger="onceflow"):
        result = JobRunner(
            count_job(GatedSource(WORDS), out),
            checkpoint_dir=chk,
            settings=FAST_CHECKPOINTS,
            executor=executor,
        ).run()

    assert any(
        f"checkpoint {latest} is unusable" in m and "is corrupt" in m and f"from checkpoint {previous}" in m
        for m in caplog.messages
    ), caplog.messages
    assert result.restored_from == previous
    assert read_committed_lines(str(out)) == running_counts(WORDS)


def test_a_deleted_newest_checkpoint_never_gets_its_id_again(
    tmp_path: Path, chk: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    completed = kill_midway(out, chk, fail_at=8, executor="local")
    latest, previous = completed[-1], completed[-2]
    store = CheckpointStore(chk, "counts")
    started = store.read_checkpoint_id_mark()
    assert started >= latest
    store.delete_checkpoint(latest)
    taken: list[int] = []
    write_mark = CheckpointStore.write_checkpoint_id_mark

    def spy(self: CheckpointStore, checkpoint_id: int) -> None:
        taken.append(checkpoint_id)
        write_mark(self, checkpoint_id)

    monkeypatch.setattr(CheckpointStore, "write_checkpoint_id_mark", spy)

    result = JobRunner(
        count_job(GatedSource(WORDS), out), checkpoint_dir=chk, settings=FAST_CHECKPOINTS
    ).run()

    assert result.restored_from == previous
    assert taken and taken[0] == started + 1, (taken, started)
    assert read_committed_lines(str(out)) == running_counts(WORDS)


def test_fresh_starts_the_checkpoint_ids_again(
    tmp_path: Path, chk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    kill_midway(out, chk, fail_at=8, executor="local")
    assert CheckpointStore(chk, "counts").read_checkpoint_id_mark() > 1
    taken: list[int] = []
    write_mark = CheckpointStore.write_checkpoint_id_mark
    monkeypatch.setattr(
        CheckpointStore, "write_checkpoint_id_mark", lambda self, n: (taken.append(n), write_mark(self, n))
    )

    JobRunner(
        count_job(GatedSource(WORDS), out), checkpoint_dir=chk, settings=FAST_CHECKPOINTS, fresh=True
    ).run()

    assert taken[0] == 1, taken
    assert read_committed_lines(str(out)) == running_counts(WORDS)


# --------------------------------------------------------------------------- incompatible checkpoints


def test_checkpoint_of_a_different_job_graph_is_refused_and_left_alone(
    words_dir: Path, tmp_path: Path, chk: str, tree_snapshot: TreeSnapshot, executor: str
) -> None:
    out = tmp_path / "out"
    kill_midway(out, chk, fail_at=4, executor=executor)
    before = tree_snapshot(tmp_path, skip=frozenset({"_lock"}))

    runner = JobRunner(
        count_job(FileSource(str(words_dir)), out, count_uid="count-v2"),
        checkpoint_dir=chk,
        executor=executor,
    )
    with pytest.raises(IncompatibleCheckpointError, match="no operator of this job matches") as info:
        runner.run()

    assert "'count' (reduce 'count')" in str(info.value)
    assert "--fresh" in str(info.value)
    assert tree_snapshot(tmp_path, skip=frozenset({"_lock"})) == before


def test_checkpoint_with_a_different_max_parallelism_is_refused(
    words_dir: Path, tmp_path: Path, chk: str, tree_snapshot: TreeSnapshot, executor: str
) -> None:
    out = tmp_path / "out"
    kill_midway(out, chk, fail_at=4, executor=executor)
    before = tree_snapshot(tmp_path, skip=frozenset({"_lock"}))

    runner = JobRunner(
        count_job(FileSource(str(words_dir)), out),
        checkpoint_dir=chk,
        max_parallelism=64,
        executor=executor,
    )
    with pytest.raises(IncompatibleCheckpointError, match="max parallelism 128, this run uses 64"):
        runner.run()

    assert tree_snapshot(tmp_path, skip=frozenset({"_lock"})) == before


def test_graph_change_that_keeps_every_stateful_uid_restores_by_uid(
    tmp_path: Path, chk: str, caplog: pytest.LogCaptureFixture, executor: str
) -> None:
    out = tmp_path / "out"
    completed = kill_midway(out, chk, fail_at=6, executor=executor)

    with caplog.at_level(logging.WARNING, logger="onceflow"):
        result = JobRunner(
            count_job(GatedSource(WORDS), out, check=str.strip),
            checkpoint_dir=chk,
            settings=FAST_CHECKPOINTS,
            executor=executor,
        ).run()

    assert any("restoring state by operator uid" in m for m in caplog.messages)
    assert result.restored_from == completed[-1]
    assert read_committed_lines(str(out)) == running_counts(WORDS)


def test_second_runner_on_the_same_checkpoints_is_refused(
    words_dir: Path, tmp_path: Path, chk: str, executor: str
) -> None:
    out = tmp_path / "out"
    holder = CheckpointStore(chk, "counts")
    holder.acquire_lock()
    try:
        with pytest.raises(ConcurrentRunError):
            JobRunner(count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor).run()
    finally:
        holder.release_lock()

    assert not out.exists()
    assert completed_ids(chk) == []


# --------------------------------------------------------------------------- restarts


def test_udf_failing_once_restarts_from_a_checkpoint_and_gives_the_reference(
    tmp_path: Path, chk: str, caplog: pytest.LogCaptureFixture, executor: str
) -> None:
    marker = tmp_path / "failed-once"

    def check(word: str) -> str:
        if word == "naps" and not marker.exists():
            marker.touch()
            msg = "flaky dependency"
            raise ConnectionError(msg)
        return word

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="onceflow"):
        result = JobRunner(
            count_job(GatedSource(WORDS), out, check=check),
            checkpoint_dir=chk,
            settings=FAST_CHECKPOINTS,
            restart=RestartStrategy(attempts=3, initial_delay=0.01),
            executor=executor,
        ).run()

    assert marker.exists()
    assert (result.attempts, result.restarts) == (2, 1)
    assert read_committed_lines(str(out)) == running_counts(WORDS)
    restores = [m for m in caplog.messages if m.startswith("restoring from checkpoint ")]
    assert len(restores) == 1
    assert any("attempt 1 failed" in m and "flaky dependency" in m for m in caplog.messages)


def test_udf_always_failing_raises_operator_error_after_the_configured_attempts(
    words_dir: Path, tmp_path: Path, chk: str, executor: str
) -> None:
    calls = CallLog(tmp_path / "calls")

    def check(word: str) -> str:
        calls.add(word)
        msg = f"cannot handle {word!r}"
        raise ValueError(msg)

    out = tmp_path / "out"
    runner = JobRunner(
        count_job(FileSource(str(words_dir)), out, check=check),
        checkpoint_dir=chk,
        restart=RestartStrategy(attempts=2, initial_delay=0.01),
        executor=executor,
    )
    with pytest.raises(OperatorError) as info:
        runner.run()

    err = info.value
    assert calls.values() == ["the", "the", "the"]
    assert err.operator == "check"
    assert err.uid.startswith("check-")  # the default uid: the name and a digest of the graph
    assert err.subtask_index == 0
    assert "operator 'check'" in str(err)
    assert "ValueError: cannot handle 'the'" in str(err)
    assert cause_name(err) == "ValueError"
    assert err.__notes__ == ["job 'counts' failed after 3 attempts"]
    assert read_committed_lines(str(out)) == []


def test_unsupported_key_type_fails_at_once_without_restarts(tmp_path: Path, chk: str, executor: str) -> None:
    keyed = CallLog(tmp_path / "keyed")

    def key(word: str) -> list[str]:
        keyed.add(word)
        return [word]

    job = Job("badkeys")
    (
        job.source(GatedSource(["a b", "c"]), name="read")
        .flat_map(str.split, name="split")
        .key_by(key)
        .reduce(lambda a, b: a, name="first")
        .sink(FileSink(str(tmp_path / "out")), name="write")
    )
    runner = JobRunner(
        job, checkpoint_dir=chk, restart=RestartStrategy(attempts=3, initial_delay=0.01), executor=executor
    )

    with pytest.raises(OperatorError, match="'first'.*type list") as info:
        runner.run()

    assert cause_name(info.value) == "KeyEncodingError"
    assert keyed.values() == ["a", "b", "c"]
    assert not getattr(info.value, "__notes__", None)


def test_restart_strategy_delay_grows_exponentially_up_to_the_maximum() -> None:
    strategy = RestartStrategy(attempts=10, initial_delay=0.5, multiplier=2.0, max_delay=3.0)

    assert [strategy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def _operator_error(cause: BaseException) -> OperatorError:
    err = OperatorError("failed", operator="op", uid="op", subtask_index=0, checkpoint_id=None)
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ValueError("user code"), True),
        (_operator_error(ValueError("user code")), True),
        (_operator_error(ConnectionError("network")), True),
        (_operator_error(KeyEncodingError("list key")), False),
        (_operator_error(SourceError("no such input")), False),
        (_operator_error(SinkOwnershipError("someone else's directory")), False),
        (_operator_error(SinkCommitError("output of a completed checkpoint is gone")), True),
        (_operator_error(CheckpointStorageError("storage down")), True),
        (JobDefinitionError("bad job"), False),
        (IncompatibleCheckpointError("other graph"), False),
        (ConcurrentRunError("locked"), False),
        (CheckpointStorageError("storage down"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify_decides_retries_by_error_domain(exc: BaseException, retryable: bool) -> None:
    assert classify(exc).retryable is retryable


def test_runner_keeps_the_sinks_it_ran(words_dir: Path, tmp_path: Path, chk: str, executor: str) -> None:
    out = tmp_path / "out"

    result = JobRunner(
        count_job(FileSource(str(words_dir)), out), checkpoint_dir=chk, executor=executor
    ).run()

    assert [type(s) for s in result.sinks] == [FileSink]
    sink: Any = result.sinks[0]
    assert sink.directory == str(out)
