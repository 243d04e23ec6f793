"""One equivalence test, run several ways: uninterrupted, with frequent checkpoints,
after failures and restores, and restored at another parallelism. Every way must
commit exactly what a plain-Python reference computes.
"""

from __future__ import annotations

import collections
import random
import time

import pytest

from onceflow import FileSink, FileSource, Job, RestartStrategy, read_committed_lines
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.runner import JobRunner, RunStatus
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, EndOfRun, Pause, RunInterrupted, TestingSink, TestingSource

SEED = 20261127
N_KEYS = 1000


# -- wordcount over files ---------------------------------------------------------------


def _write_words(directory, n_lines: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)] + ["The", "the", "THE", "ünïcode", "naïve"]
    directory.mkdir()
    per_file = n_lines // 8
    for f in range(8):
        lines = (" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9))) for _ in range(per_file))
        (directory / f"words-{f}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _wordcount_reference(directory) -> list[str]:
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(directory.iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            counts.update(w.lower() for w in line.split())
    # running counts: every word w with total c yields "w,1" .. "w,c", in any order
    return sorted(f"{w},{i}" for w, c in counts.items() for i in range(1, c + 1))


def _wordcount_job(src, out, fail_at: dict | None = None) -> Job:
    seen = {"n": 0}

    def pair(word: str) -> tuple[str, int]:
        seen["n"] += 1
        if seen["n"] % 1000 == 0:
            time.sleep(0.001)  # slow enough that timed checkpoints land mid-stream
        # fail once when a subtask reaches word number fail_at["at"]; the marker file
        # makes "once" hold across restarts and worker processes
        if fail_at is not None and seen["n"] == fail_at["at"] and not fail_at["marker"].exists():
            fail_at["marker"].touch()
            raise RuntimeError(f"injected failure at word {seen['n']}")
        return (word.lower(), 1)

    job = Job("wordcount")
    (
        job.source(FileSource(str(src), read_size=4096), name="read", uid="read")
        .flat_map(str.split, name="split")
        .map(pair, name="pair")
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
        .sink(FileSink(str(out)), name="write", uid="write")
    )
    return job


def _runner(job, chk, parallelism, interval, attempts=3, executor="local") -> JobRunner:
    return JobRunner(
        job,
        executor=executor,
        checkpoint_dir=str(chk),
        parallelism=parallelism,
        settings=ExecutionSettings(
            batch_size=256, checkpoint=CoordinatorSettings(interval=interval, timeout=30.0)
        ),
        restart=RestartStrategy(attempts=attempts, initial_delay=0.0),
    )


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wc") / "input"
    _write_words(directory, 24_000, SEED)
    reference = _wordcount_reference(directory)
    assert len(reference) >= 100_000
    return directory, reference


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("mode", ["uninterrupted", "checkpoints", "failure", "restore", "rescale"])
def test_wordcount_commits_the_reference(words, tmp_path, parallelism, mode, executor):
    src, reference = words
    out, chk = tmp_path / "out", tmp_path / "chk"
    if mode == "uninterrupted":
        result = _runner(_wordcount_job(src, out), chk, parallelism, 3600, executor=executor).run()
        assert result.checkpoints_completed == 1  # only the final checkpoint
    elif mode == "checkpoints":
        result = _runner(_wordcount_job(src, out), chk, parallelism, 0.05, executor=executor).run()
        assert result.checkpoints_completed > 1
    elif mode == "failure":
        fail = {"at": 30_000, "marker": tmp_path / "failed"}
        result = _runner(_wordcount_job(src, out, fail), chk, parallelism, 0.02, executor=executor).run()
        assert result.restarts == 1
    else:
        # the first run dies mid-stream with no restart allowed; a second run resumes
        fail = {"at": 35_000, "marker": tmp_path / "failed"}
        with pytest.raises(Exception, match="injected failure"):
            failing = _wordcount_job(src, out, fail)
            _runner(failing, chk, parallelism, 0.02, attempts=0, executor=executor).run()
        partial = read_committed_lines(str(out)) if out.exists() else []
        assert 0 < len(partial) < len(reference), "a checkpoint should have committed a prefix"
        resumed_parallelism = 3 - parallelism if mode == "rescale" else parallelism
        result = _runner(_wordcount_job(src, out), chk, resumed_parallelism, 0.05, executor=executor).run()
        assert result.restored_from is not None
    assert result.status is RunStatus.FINISHED
    assert sorted(read_committed_lines(str(out))) == reference


# -- keyed stateful_map over a replayable source ------------------------------------------


def _keyed_items(n: int) -> list[int]:
    return list(range(n))


def _stateful_reference(items: list[int]) -> list[tuple[int, int, int]]:
    state: dict[int, tuple[int, int]] = {}
    out = []
    for i in items:
        count, total = state.get(i % N_KEYS, (0, 0))
        state[i % N_KEYS] = (count + 1, total + i)
        out.append((i, count + 1, total + i))
    return sorted(out)


def _stateful_job(items, sink) -> Job:
    def step(state, i):
        count, total = state or (0, 0)
        new = (count + 1, total + i)
        return new, (i, *new)

    job = Job("keyed")
    (
        # 4 partitions and keys i % 1000: every key's records live in one split, so
        # each key sees its records in input order whatever the parallelism
        job.source(TestingSource(items, batch_size=500, partitions=4), name="src", uid="src")
        .filter(lambda x: isinstance(x, int), name="ints")
        .key_by(lambda i: i % N_KEYS)
        .stateful_map(step, name="running", uid="running")
        .sink(sink, name="out", uid="out")
    )
    return job


def _with_sentinels(n: int, every: int, special: dict[int, object] | None = None) -> list:
    """Return ``range(n)`` with a group of 4 sentinels before every ``every``-th item.

    Groups of 4 keep item i in split ``i % 4`` (the source splits by position).
    ``special`` puts a given sentinel (Crash, EndOfRun) first in the group at an item.
    """
    items: list = []
    special = special or {}
    for i in range(n):
        if i in special:
            items.extend([special[i], Pause(0), Pause(0), Pause(0)])
        elif i and i % every == 0:
            items.extend(Pause(0.002) for _ in range(4))
        items.append(i)
    return items


@pytest.mark.parametrize("parallelism", [1, 2])
def test_stateful_map_uninterrupted_and_with_checkpoints(parallelism, executor):
    n = 120_000
    reference = _stateful_reference(_keyed_items(n))
    sink = TestingSink()
    run_job_for_test(
        _stateful_job(_keyed_items(n), sink),
        parallelism=parallelism,
        checkpoint_interval=3600,
        executor=executor,
    )
    assert sorted(sink.committed) == reference
    sink = TestingSink()
    items = _with_sentinels(n, 4000)
    result = run_job_for_test(
        _stateful_job(items, sink),
        parallelism=parallelism,
        checkpoint_interval=0.001,
        executor=executor,
    )
    assert result.checkpoints_completed > 5
    assert sorted(sink.committed) == reference
    assert sink.pending == {}


@pytest.mark.parametrize("parallelism", [1, 2])
def test_stateful_map_after_crashes_and_restores(parallelism, executor):
    n = 120_000
    reference = _stateful_reference(_keyed_items(n))
    sink = TestingSink()
    items = _with_sentinels(n, 3000, {40_000: Crash(), 80_000: Crash()})
    result = run_job_for_test(
        _stateful_job(items, sink),
        parallelism=parallelism,
        checkpoint_interval=0.001,
        executor=executor,
    )
    assert result.restarts == 2
    assert sorted(sink.committed) == reference
    assert sink.pending == {}


@pytest.mark.parametrize(("first", "second"), [(1, 2), (2, 1), (2, 3)])
def test_stateful_map_restored_at_another_parallelism(first, second, executor, tmp_path):
    n = 120_000
    items = _with_sentinels(n, 3000, {60_000: EndOfRun()})
    reference = _stateful_reference(_keyed_items(n))
    sink = TestingSink()
    checkpoint_dir = str(tmp_path / "chk")
    with pytest.raises(RunInterrupted):
        run_job_for_test(
            _stateful_job(items, sink),
            checkpoint_dir=checkpoint_dir,
            parallelism=first,
            checkpoint_interval=0.001,
            executor=executor,
        )
    committed_before = len(sink.committed)
    assert 0 < committed_before < n
    result = run_job_for_test(
        _stateful_job(items, sink),
        checkpoint_dir=checkpoint_dir,
        parallelism=second,
        checkpoint_interval=0.001,
        executor=executor,
    )
    assert result.restored_from is not None
    assert sorted(sink.committed) == reference
