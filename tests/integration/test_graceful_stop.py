"""Graceful stop (issue 11, hole 7): SIGTERM/SIGINT mid-run take a final checkpoint, commit, and exit.

Each test runs ``python -m onceflow run`` on ``tests/support/jobs/stop_job.py``
(a keyed running count into a FileSink) under both executors and signals the
run's whole process group once its first checkpoint completed. The first
signal must end the run with 143 (SIGTERM) or 130 (SIGINT) and one line naming
the checkpoint to resume from, which exists and is not final; nothing may be
left pending or in progress, and the committed output must be a valid prefix
(no duplicate, nothing outside the reference). A rerun of the same command
resumes and gives the exact output. A second signal exits at once, and a rerun
is exact too.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, CliRuns, RunOutcome
from tests.support.oracles import compare, expected, write_input
from tests.support.stopping import (
    checkpoint_metadata,
    completed_checkpoints,
    exit_code,
    signal_mid_run,
    stopped_at,
)

pytestmark = pytest.mark.timeout(180)

N, K = 6_000, 40
DELAY_US = 1_000


@pytest.fixture
def stop_runs(tmp_path: Path):
    def make(executor: str) -> tuple[CliRuns, Path, Path]:
        write_input(tmp_path / "in", N, K, 4)
        out, chk = tmp_path / "out", tmp_path / "chk"
        runs = CliRuns(
            JOBS / "stop_job.py",
            params={
                "input": str(tmp_path / "in"),
                "output": str(out),
                "delay_us": str(DELAY_US),
                "slow_marker": str(tmp_path / "slow"),
            },
            args=[
                "--checkpoint-dir",
                str(chk),
                "--checkpoint-interval",
                "0.3",
                "--parallelism",
                "2",
                "--batch-size",
                "64",
                "--executor",
                executor,
            ],
            logs=tmp_path / "logs",
            seed=0,
        )
        return runs, out, chk

    return make


def committed(out: Path) -> list[str]:
    from onceflow.operators.files import read_committed_lines

    return read_committed_lines(str(out)) if out.exists() else []


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".pending", ".inprogress")))


def check_prefix(out: Path, when: str) -> dict[str, int]:
    figures = compare(committed(out), expected(N, K, "keyed"), "keyed")
    bad = {k: figures[k] for k in ("duplicates", "unexpected", "wrong_value", "not_prefix")}
    assert not any(bad.values()), f"{when}: committed output is not a valid prefix: {figures}"
    return figures


def check_exact(runs: CliRuns, outcome: RunOutcome, out: Path) -> None:
    runs.expect_ok(outcome)
    figures = check_prefix(out, "after the rerun")
    assert figures["lost"] == 0 and figures["committed"] == figures["expected"], figures
    assert leftovers(out) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("executor", ["local", "process"])
def test_first_signal_stops_at_a_committed_checkpoint_and_a_rerun_resumes(stop_runs, executor, sig) -> None:
    runs, out, chk = stop_runs(executor)
    stopped = runs.run(during=signal_mid_run(runs, chk, sig))
    assert stopped.returncode == exit_code(sig), (
        f"exit {stopped.returncode}, expected {exit_code(sig)}\nstderr:\n{stopped.stderr[-3000:]}"
    )
    checkpoint_id = stopped_at(stopped)
    assert checkpoint_metadata(chk, checkpoint_id)["final"] is False
    assert completed_checkpoints(chk)[-1] == checkpoint_id
    assert leftovers(out) == [], "a stopped run left uncommitted output files"
    figures = check_prefix(out, "after the stop")
    assert 0 < figures["committed"] < figures["expected"], f"not stopped mid-way: {figures}"

    rerun = runs.run()
    assert f"resumed from checkpoint {checkpoint_id}" in rerun.stdout, rerun.stdout
    check_exact(runs, rerun, out)


@pytest.mark.parametrize(("executor", "sig"), [("local", signal.SIGINT), ("process", signal.SIGTERM)])
def test_second_signal_exits_at_once_and_a_rerun_is_exact(stop_runs, executor, sig, tmp_path) -> None:
    runs, out, chk = stop_runs(executor)
    slow = tmp_path / "slow"
    killed = runs.run(during=signal_mid_run(runs, chk, sig, second=True, slow_marker=slow))
    assert killed.returncode == exit_code(sig), killed.stderr[-3000:]
    assert "exiting at once" in killed.stderr and "kill -9" in killed.stderr, killed.stderr[-3000:]
    assert "stopped at checkpoint" not in killed.stdout + killed.stderr
    check_prefix(out, "after the second signal")

    slow.unlink()
    check_exact(runs, runs.run(), out)


@pytest.mark.parametrize("executor", ["local", "process"])
def test_kill_during_graceful_stop_then_a_rerun_is_exact(stop_runs, executor) -> None:
    runs, out, chk = stop_runs(executor)
    killed = runs.run(during=signal_mid_run(runs, chk, signal.SIGTERM), crash_at="during_graceful_stop:1")
    runs.expect_killed(killed)
    check_prefix(out, "after a kill during the stop")

    check_exact(runs, runs.run(), out)
