"""Nexmark q0-q9, q11, q12 (``benchmarks/nexmark/queries.py``) commit exactly what DuckDB SQL over the
same files computes (``tests/support/nexmark_reference.py``): at parallelism 1 and 2 on the process
executor, and through SIGKILLs of ``onceflow run`` with a rescale between restores.

All queries run as one job (each source is read once), so one run checks all of them.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from benchmarks.nexmark.generator import generate
from benchmarks.nexmark.queries import QUERIES, build
from onceflow import read_committed_lines
from onceflow.engine.testing import run_job_for_test
from tests.support.chaos import REPO, CliRuns
from tests.support.nexmark_reference import committed, differences, expected
from tests.support.stopping import completed_checkpoints

SEED = 2026
N = 200_000


def _check(data: Path, out: Path, want: dict) -> dict[str, dict[str, int]]:
    figures = {}
    for query in QUERIES:
        figures[query] = differences(committed(read_committed_lines(str(out / query)), query), want[query])
    bad = {
        q: f for q, f in figures.items() if f["lost"] or f["unexpected"] or f["committed"] != f["expected"]
    }
    assert not bad, f"queries differ from the DuckDB reference (seed {SEED}): {bad}"
    return figures


@pytest.fixture(scope="module")
def nexmark_data(tmp_path_factory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("nexmark") / "data"
    counts = generate(data, N, seed=SEED)
    assert counts.total == N
    return data, {q: expected(data, q) for q in QUERIES}


def test_every_query_equals_the_reference_on_a_small_stream(tmp_path):
    data = tmp_path / "data"
    generate(data, 10_000, seed=SEED, files=2)
    run_job_for_test(build("all", str(data), str(tmp_path / "out")), checkpoint_interval=0.2)
    _check(data, tmp_path / "out", {q: expected(data, q) for q in QUERIES})


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", [1, 2])
def test_every_query_equals_the_reference_on_the_process_executor(nexmark_data, tmp_path, parallelism):
    data, want = nexmark_data
    run_job_for_test(
        build("all", str(data), str(tmp_path / "out")),
        parallelism=parallelism,
        executor="process",
        checkpoint_interval=1.0,
    )
    figures = _check(data, tmp_path / "out", want)
    print(
        f"nexmark p={parallelism} events={N} seed={SEED}: "
        + " ".join(f"{q}={f['committed']}" for q, f in figures.items())
    )


class NexmarkRuns(CliRuns):
    """``onceflow run`` of every query; the parallelism changes between runs (a rescale on restore)."""

    def __init__(self, root: Path, data: Path, want: dict, seed: int) -> None:
        self.out = root / "out"
        self.want = want
        self.chk = root / "chk"
        super().__init__(
            REPO / "benchmarks" / "jobs" / "nexmark.py",
            params={"input": str(data), "output": str(self.out)},
            args=[],
            logs=root / "logs",
            seed=seed,
            run_timeout=180.0,
        )
        self.parallelism = 2
        self.q0_at_kills: list[int] = []
        """How many q0 lines were committed after each kill: kills land mid-run."""

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--checkpoint-dir",
            str(self.chk),
            "--checkpoint-interval",
            "0.3",
            "--parallelism",
            str(self.parallelism),
            "--executor",
            "process",
        ]

    def after_kill(self, outcome) -> None:
        """Nothing committed may be outside the reference (final values only for q4, q6 and q12)."""
        q0 = self.out / "q0"
        self.q0_at_kills.append(len(read_committed_lines(str(q0))) if q0.exists() else 0)
        for query in QUERIES:
            if query in ("q4", "q6", "q12") or not (self.out / query).exists():
                continue
            got = committed(read_committed_lines(str(self.out / query)), query)
            extra = got - self.want[query]
            assert not extra, (
                f"{query} after run {outcome.index}: {sum(extra.values())} lines beyond the reference; "
                f"{self.where()}"
            )


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_every_query_survives_kills_and_a_rescale(nexmark_data, tmp_path):
    """SIGKILL the job 4 times at seeded random moments (each after a checkpoint of its run), at
    parallelism 2, 1, 1, 2 (a rescale on each change), then finish at 2; the committed output of
    every query equals the reference."""
    data, want = nexmark_data
    runs = NexmarkRuns(tmp_path, data, want, SEED)
    plan = [2, 1, 1, 2]
    finished = None
    for parallelism in plan:
        runs.parallelism = parallelism
        before = max(completed_checkpoints(runs.chk), default=0)
        # each run gets a checkpoint of its own before its kill, so every run makes progress
        outcome = runs.run(
            kill_after=runs.rng.uniform(0.1, 0.8),
            after=lambda before=before: max(completed_checkpoints(runs.chk), default=0) > before,
        )
        if outcome.returncode == 0 and sum(runs.kills.values()) >= 3:
            finished = outcome  # the last run finished before its kill landed: enough kills landed
            break
        assert outcome.returncode == -signal.SIGKILL, (
            f"run {outcome.index} ended {outcome.returncode} before its kill; {runs.where()}\n"
            f"{outcome.stderr[-2000:]}"
        )
    runs.parallelism = 2
    final = finished or runs.run_to_completion()
    assert "restoring from" in final.stderr or "restor" in final.stderr.lower()
    figures = _check(data, runs.out, want)
    assert len([c for c in runs.q0_at_kills if 0 < c < N]) >= 3, f"kills not mid-run: {runs.q0_at_kills}"
    print(
        f"nexmark chaos seed={SEED} events={N} kills={sum(runs.kills.values())} parallelism={plan}+[2] "
        f"q0_committed_at_kills={runs.q0_at_kills} "
        + " ".join(f"{q}={f['committed']}" for q, f in figures.items())
    )
