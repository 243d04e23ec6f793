"""Fault-injection tests: kill -9 ``onceflow run`` at random times and at named crash points
(under the process executor a crash point in an operator kills one worker, not the run).

Every test resumes by rerunning the same command until the job finishes, then
compares the committed output with a plain-Python oracle (``tests/support/oracles.py``):
lost, duplicated, unexpected and wrong-value records must all be 0, and one
more rerun must report "already finished" and change no file.

Replay a failure with the printed seed: ``CHAOS_SEED=<seed> pytest tests/chaos -s``.
"""

from __future__ import annotations

import os

import pytest

from tests.support.chaos import ChaosRun, Workload

pytestmark = pytest.mark.chaos

SLOW_US = 100
"""Spin per record: a full 100,000-record run takes about 10 s, so random kills land mid-run."""
FAST_US = 10
"""About 1 s per full run: still about 10 checkpoints at a 0.1 s interval."""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("executor", "parallelism"),
    [pytest.param("local", 1, marks=pytest.mark.slow), ("local", 2), ("process", 2)],
)
def test_random_kills(
    executor: str, parallelism: int, workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    """Kill the process group at random times (process executor: every other time only the
    runner, whose workers must die with it), then finish and compare with the oracle."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=parallelism,
        # workers use both cores and start slower: more work, so 6 kills land mid-run
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
        executor=executor,
    )
    target = int(os.environ.get("CHAOS_KILLS", "6"))
    run.kill_at_random(
        target,
        (0.2, 2.5),
        at_least=min(5, target),
        before_run=lambda: {"runner_only": executor == "process" and len(run.runs) % 2 == 1},
    )
    figures = run.check_final()
    run.report(f"test_random_kills[{executor},p={parallelism}]", figures)


CRASH_CASES = [
    # (label, n, crash point of an earlier run that makes this one restore)
    ("after_task_snapshots_before_metadata", 3, None),
    ("after_metadata_before_notify", 3, None),
    ("mid_commit", 3, None),
    ("after_pending_rename_before_commit_rename", 3, None),
    ("before_snapshot", 5, None),
    ("during_restore", 1, "after_metadata_before_notify:3"),
    ("end_of_input_before_final_checkpoint", 1, None),
    # restore from the same checkpoint twice: the first restore dies between re-commits
    # (n=None: the parallelism, so with 2 sinks one re-commit is done, the other not)
    ("during_commit_on_restore", None, "after_metadata_before_notify:3"),
    # retention interrupted: the oldest checkpoint lost its _metadata but not its files
    ("mid_checkpoint_delete", 2, None),
]


CRASH_ARGS = {"mid_checkpoint_delete": ("--retain", "1")}
"""Extra run arguments per label. Retention of one checkpoint deletes from the second checkpoint
on, so the crash point is reached by a run of three checkpoints however slow the machine is."""

CRASH_CASES_P1 = {"after_metadata_before_notify", "mid_commit", "during_restore", "during_commit_on_restore"}
"""Labels also run at parallelism 1 (all run at 2): those where sink ownership on restore matters."""

RUNNER_LABELS = {
    "after_task_snapshots_before_metadata",
    "after_metadata_before_notify",
    "end_of_input_before_final_checkpoint",
    "mid_checkpoint_delete",
}
"""Crash points of the checkpoint coordinator: passed in the runner process under both executors.
The others are passed by operators, so under the process executor in a worker."""

CRASH_PARAMS = [
    pytest.param(
        label,
        n,
        setup,
        p,
        executor,
        id=f"{executor}-{label}-p{p}",
        # The coordinator's points run in the runner under both executors: the local
        # executor's cases prove them in the default step, the process executor's in the slow one.
        marks=[pytest.mark.slow] if executor == "process" and label in RUNNER_LABELS else [],
    )
    for executor in ("local", "process")
    for label, n, setup in CRASH_CASES
    for p in (1, 2)
    # process executor at parallelism 2 only (two workers, a sink in each): p=1 adds little, and time
    if p == 2 or (executor == "local" and label in CRASH_CASES_P1)
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("label", "n", "setup", "parallelism", "executor"), CRASH_PARAMS)
def test_named_crash_points(
    label: str,
    n: int | None,
    setup: str | None,
    parallelism: int,
    executor: str,
    workload: Workload,
    chaos_dir,
    chaos_seed: int,
) -> None:
    """Crash at ``label:n`` (n-th pass in the run), then finish and compare with the oracle.

    A crash point in the runner kills the run (-9); one in a worker (process
    executor) kills that worker only, and the runner restarts the attempt from
    the latest checkpoint in-process, so the same run ends exactly-once (exit 0)."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=parallelism,
        delay_us=FAST_US,
        executor=executor,
        args=["--restart-delay", "0.05", *CRASH_ARGS.get(label, ())],
    )
    n = parallelism if n is None else n
    if setup is not None:
        run.expect_killed(run.run(crash_at=setup))
    outcome = run.run(crash_at=f"{label}:{n}")
    assert f"crash point {label}:{n} reached" in outcome.stderr, (
        f"run exited {outcome.returncode} but never reached {label}:{n}: "
        f"{outcome.stderr[-2000:]}; {run.where()}"
    )
    if executor == "process" and label not in RUNNER_LABELS:
        run.expect_ok(outcome)
        restarts = [line for line in outcome.stderr.splitlines() if "restarting" in line]
        assert len(restarts) == 1 and "died (exit code -9)" in restarts[0], (
            f"expected one restart after a worker died: {restarts}; {run.where()}"
        )
        assert "1 restart(s)" in outcome.stdout, outcome.stdout
    else:
        run.expect_killed(outcome)
        run.run_to_completion()
    figures = run.check_final()
    run.report(f"test_named_crash_points[{executor},{label}:{n},p={parallelism}]", figures)


FAIL_AT = 90_006
"""The record id at which the failing UDF raises: it passes the ``id % 7 != 3`` filter and
lies late in its file (file 6 of 8), so checkpoints have committed output before it."""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_udf_fails_once_then_recovers(executor: str, workload: Workload, chaos_dir, chaos_seed: int) -> None:
    marker = chaos_dir / "failed-once"
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        delay_us=FAST_US,
        executor=executor,
        params={"fail_at": str(FAIL_AT), "fail_marker": str(marker)},
        args=["--restart-delay", "0.05"],
    )
    outcome = run.run()
    run.expect_ok(outcome)
    assert marker.exists(), f"the UDF never failed; {run.where()}"
    restarts = outcome.stderr.count("restarting")
    assert restarts == 1, f"expected 1 restart, saw {restarts}: {outcome.stderr}; {run.where()}"
    assert "1 restart(s)" in outcome.stdout, outcome.stdout
    figures = run.check_final()
    run.report(f"test_udf_fails_once_then_recovers[{executor}]", figures)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("executor", ["local", "process"])
@pytest.mark.parametrize("attempts", [2])
def test_udf_always_fails(
    attempts: int, executor: str, workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    marker = chaos_dir / "keep-failing"
    marker.write_text("the UDF raises while this file exists\n")
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        delay_us=FAST_US,
        executor=executor,
        params={"fail_at": str(FAIL_AT), "fail_marker": str(marker), "fail_mode": "while"},
        args=["--restart-attempts", str(attempts), "--restart-delay", "0.05"],
    )
    outcome = run.run()
    assert outcome.returncode == 1, (
        f"exit {outcome.returncode}, expected 1: {outcome.stderr[-2000:]}; {run.where()}"
    )
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("onceflow: error:")]
    assert len(errors) == 1, f"expected one error line, got {errors}; {run.where()}"
    assert "'explode'" in errors[0] and "RuntimeError" in errors[0], errors[0]
    assert f"failed after {attempts + 1} attempts" in errors[0], errors[0]
    restarts = outcome.stderr.count("restarting")
    assert restarts == attempts, (
        f"expected {attempts} restarts ({attempts + 1} attempts), saw {restarts}; {run.where()}"
    )
    # Committed output: only what completed checkpoints covered, each record once,
    # every key a prefix of its sequence, and never the record that fails.
    figures = run.check_intermediate("after the failed run")
    assert figures["committed"] > 0, f"no checkpoint completed before the failure; {run.where()}"
    assert str(FAIL_AT) not in run.previous
    # The same command, with the fault gone, resumes from the failed run's checkpoints.
    marker.unlink()
    run.run_to_completion()
    figures = run.check_final()
    run.report(f"test_udf_always_fails[{executor},attempts={attempts}]", figures)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", [pytest.param("local", marks=pytest.mark.slow), "process"])
def test_kills_during_resume(executor: str, workload: Workload, chaos_dir, chaos_seed: int) -> None:
    """Kill mid-run once, then kill 4 resumes within 0.15 s of their "restoring from
    checkpoint" log line (state loaded, operators being restored, sinks re-committing,
    first batches), then once more mid-run, then finish (wordcount)."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        mode="wordcount",
        delay_us=SLOW_US // 2,
        executor=executor,
    )
    # The first kill waits for a completed checkpoint: the resumes below must have one to restore.
    run.expect_killed(run.run(kill_after=run.rng.uniform(0.2, 1.0), after=run.has_completed_checkpoint))
    for _ in range(4):
        outcome = run.run(kill_after=run.rng.uniform(0.0, 0.15), after_text="restoring from", label="resume")
        if outcome.returncode == 0:
            break
        run.expect_killed(outcome)
    # One more mid-run kill after the resumes, so the restore chain is exercised twice.
    outcome = run.run(kill_after=run.rng.uniform(0.8, 1.5))
    if outcome.returncode != 0:
        run.expect_killed(outcome)
        run.run_to_completion()
    figures = run.check_final()
    resumes = [o for o in run.runs if o.killed_by_harness and "restoring from" in o.stderr]
    print(f"chaos: {len(resumes)} kills landed after a restore had started")
    assert len(resumes) >= 4, f"only {len(resumes)} kills hit a resume; {run.where()}"
    run.report(f"test_kills_during_resume[{executor}]", figures)
