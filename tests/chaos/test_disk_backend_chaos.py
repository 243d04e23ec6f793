"""Kill -9 runs with keyed state in the disk backend, and restores across backends and parallelisms.

A checkpoint of one backend must restore on the other at any parallelism, so
these tests change ``--state-backend`` (and ``--parallelism``) between the
runs of one job and compare the committed output with the plain-Python oracle.

Replay a failure with the printed seed: ``CHAOS_SEED=<seed> pytest tests/chaos -m slow -s``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.test_incremental_chaos import CRASH_DELAY_US, INCREMENTAL
from tests.chaos.test_incremental_chaos import _check_shared_files as check_shared_files
from tests.support.chaos import ChaosRun, Workload

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SLOW_US = 100
"""Spin per record: about 10 s for a full run, so random kills land mid-run."""


def _set(run: ChaosRun, option: str, value: str) -> None:
    """Change one command-line option for the next runs of ``run``."""
    run.args[run.args.index(option) + 1] = value


def _state_dir_is_empty(run: ChaosRun) -> None:
    local = run.root / "state" / "onceflow-state"
    assert not local.exists() or not any(local.iterdir()), f"local databases left: {list(local.iterdir())}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("executor", "switch"), [("local", False), ("process", False), ("local", True)])
def test_random_kills_with_the_disk_backend(
    executor: str, switch: bool, workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    """Kill at random times; with ``switch`` every run draws its backend and parallelism (1-3) anew."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
        executor=executor,
        # a small cache, so most keys live only in the database between checkpoints
        args=[
            "--state-backend",
            "disk",
            "--state-dir",
            str(chaos_dir / "state"),
            "--state-cache-entries",
            "50",
            # full checkpoints of disk state; with switch, each backend's default (disk: incremental)
            *([] if switch else ["--no-incremental-checkpoints"]),
        ],
    )
    target = int(os.environ.get("CHAOS_KILLS", "6"))
    backends: list[tuple[str, int]] = []

    def draw_backend() -> None:
        if switch:
            backend, parallelism = run.rng.choice(["heap", "disk"]), run.rng.randint(1, 3)
            _set(run, "--state-backend", backend)
            _set(run, "--parallelism", str(parallelism))
            backends.append((backend, parallelism))

    run.kill_at_random(target, (0.3, 2.5), at_least=min(5, target), before_run=draw_backend)
    figures = run.check_final()
    print(f"backends and parallelisms of the runs: {backends}")
    run.report(f"test_random_kills_with_the_disk_backend[{executor},switch={switch}]", figures)
    if executor == "local":
        _state_dir_is_empty(run)  # the last run closed its databases (killed runs' are swept)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "steps",
    [
        [("heap", 1), ("disk", 2), ("heap", 3)],
        [("disk", 3), ("heap", 2), ("disk", 1)],
    ],
    ids=["heap1-disk2-heap3", "disk3-heap2-disk1"],
)
def test_a_checkpoint_restores_on_the_other_backend_at_another_parallelism(
    steps: list[tuple[str, int]], workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    """Each run but the last dies right after its 3rd checkpoint completed; the next restores it."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        delay_us=CRASH_DELAY_US,  # each run takes the checkpoints its crash point needs
        args=[
            "--state-backend",
            "heap",
            "--state-dir",
            str(chaos_dir / "state"),
            "--state-cache-entries",
            "50",
        ],
    )
    for n, (backend, parallelism) in enumerate(steps):
        _set(run, "--state-backend", backend)
        _set(run, "--parallelism", str(parallelism))
        if n == len(steps) - 1:
            outcome = run.run_to_completion()
        else:
            outcome = run.run(crash_at="after_metadata_before_notify:3")
            run.expect_killed(outcome)
        if n:
            assert "restoring from checkpoint" in outcome.stderr, (
                f"run {n + 1} did not restore: {outcome.stderr[-2000:]}; {run.where()}"
            )
    figures = run.check_final()
    run.report(f"test_a_checkpoint_restores_on_the_other_backend[{steps}]", figures)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("executor", ["local", "process"])
def test_random_kills_with_incremental_disk_checkpoints(
    executor: str, workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    """Incremental checkpoints of the disk backend (deltas read from the database's view) under kill -9.

    Some runs switch to the heap backend and back, so a chain the disk backend wrote restores on the
    heap and the other way round; every retained checkpoint lists only files that exist.
    """
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        delay_us=SLOW_US * 2 if executor == "process" else SLOW_US,
        executor=executor,
        args=[
            "--state-backend",
            "disk",
            "--state-dir",
            str(chaos_dir / "state"),
            "--state-cache-entries",
            "50",
            *INCREMENTAL,
        ],
    )
    target = int(os.environ.get("CHAOS_KILLS", "6"))
    backends: list[str] = []

    def draw_backend() -> None:
        backends.append(run.rng.choice(["disk", "disk", "heap"]))
        _set(run, "--state-backend", backends[-1])

    if not run.kill_at_random(target, (0.3, 2.5), at_least=0, before_run=draw_backend, finish=False):
        _set(run, "--state-backend", "disk")
        run.run_to_completion()
    figures = run.check_final()
    check_shared_files(run)
    print(f"backends of the runs: {backends}")
    run.report(f"test_random_kills_with_incremental_disk_checkpoints[{executor}]", figures)
    if executor == "local":
        _state_dir_is_empty(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("crash_at", ["mid_shared_write:4", "mid_shared_delete:1"])
def test_named_crash_points_with_incremental_disk_checkpoints(
    crash_at: str, workload: Workload, chaos_dir, chaos_seed: int
) -> None:
    """A delta or compacted base half written, or retention deleting shared files: exact output after."""
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=2,
        delay_us=CRASH_DELAY_US,
        # --retain 1: deleting shared files starts at the second checkpoint, however slow the machine
        args=[
            "--state-backend",
            "disk",
            "--state-dir",
            str(chaos_dir / "state"),
            *INCREMENTAL,
            "--retain",
            "1",
        ],
    )
    outcome = run.run(crash_at=crash_at)
    assert f"crash point {crash_at} reached" in outcome.stderr, (
        f"run exited {outcome.returncode} without reaching {crash_at}: {outcome.stderr[-2000:]}"
    )
    run.expect_killed(outcome)
    run.run_to_completion()
    figures = run.check_final()
    check_shared_files(run)
    run.report(f"test_named_crash_points_with_incremental_disk_checkpoints[{crash_at}]", figures)
