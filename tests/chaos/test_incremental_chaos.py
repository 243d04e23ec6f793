"""Incremental checkpoints under kill -9: random kills, named crash points while shared files are
written and while retention deletes them, and a rescale p1 -> 2 -> 3 from an incremental checkpoint.

Every test ends with the committed output equal to the oracle and, on storage, exactly the
shared files the retained checkpoints list: none missing (a restore would refuse the
checkpoint and fall back, which the logs must never show), none left over.
``--max-deltas 3`` makes compaction, and so the deletion of shared files, happen within a run.

Replay a failure with the printed seed: ``CHAOS_SEED=<seed> pytest tests/chaos -s``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.chaos import ChaosRun, Workload

pytestmark = pytest.mark.chaos

CRASH_DELAY_US = 60
"""Spin per record of the named-crash-point runs: about 3 s of work per subtask, so a run takes the
handful of checkpoints its crash point needs (the 4th, or a compaction and its retention) even when
a loaded machine makes each checkpoint slow."""

INCREMENTAL = ["--incremental-checkpoints", "--max-deltas", "3", "--restart-delay", "0.05"]


def _check_shared_files(run: ChaosRun) -> None:
    """Every file a retained checkpoint lists exists; no shared file is left that none lists."""
    (job_dir,) = [p for p in run.chk.iterdir() if p.is_dir()]
    referenced: set[str] = set()
    incremental = 0
    for meta_path in job_dir.glob("chk-*/_metadata"):
        meta = json.loads(meta_path.read_text())
        for handle in meta["handles"]:
            referenced.add(handle["path"])
            incremental += handle.get("kind", "full") != "full"
    assert incremental, f"no incremental handle in any retained checkpoint; {run.where()}"
    missing = sorted(p for p in referenced if not (job_dir / p).exists())
    assert not missing, f"files listed by retained checkpoints are missing: {missing}; {run.where()}"
    shared = {f"shared/{p.name}" for p in (job_dir / "shared").iterdir()}
    leftover = sorted(shared - referenced)
    assert not leftover, f"shared files no retained checkpoint lists: {leftover}; {run.where()}"
    broken = [o.index for o in run.runs if "a state file is damaged or missing" in o.stderr]
    assert not broken, f"runs {broken} found a completed checkpoint with a missing file; {run.where()}"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("executor", "parallelism"), [("local", 2), ("process", 2)])
def test_random_kills_with_incremental_checkpoints(
    executor: str, parallelism: int, workload: Workload, chaos_dir: Path, chaos_seed: int
) -> None:
    run = ChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        parallelism=parallelism,
        delay_us=200 if executor == "process" else 100,
        executor=executor,
        args=INCREMENTAL,
    )
    run.kill_at_random(int(os.environ.get("CHAOS_KILLS", "6")), (0.2, 2.5), at_least=0)
    figures = run.check_final()
    _check_shared_files(run)
    run.report(f"test_random_kills_with_incremental_checkpoints[{executor},p={parallelism}]", figures)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "crash_at",
    [
        "mid_shared_write:4",  # a delta or compacted base half written: the checkpoint never completes
        pytest.param("mid_shared_write:9", marks=pytest.mark.slow),
        "mid_shared_delete:1",  # retention deleting shared files a compaction replaced
        pytest.param("mid_checkpoint_delete:2", marks=pytest.mark.slow),
        # shared files written, _metadata never
        pytest.param("after_task_snapshots_before_metadata:4", marks=pytest.mark.slow),
    ],
)
def test_named_crash_points_with_incremental_checkpoints(
    crash_at: str, workload: Workload, chaos_dir: Path, chaos_seed: int
) -> None:
    # --retain 1: retention (and so the deletion of shared files a compaction
    # replaced) starts at the second checkpoint, however few a slow machine takes.
    args = [*INCREMENTAL, "--retain", "1"]
    run = ChaosRun(chaos_dir, workload, chaos_seed, parallelism=2, delay_us=CRASH_DELAY_US, args=args)
    outcome = run.run(crash_at=crash_at)
    assert f"crash point {crash_at} reached" in outcome.stderr, (
        f"run exited {outcome.returncode} without reaching {crash_at}: {outcome.stderr[-2000:]}"
    )
    run.expect_killed(outcome)
    run.run_to_completion()
    figures = run.check_final()
    _check_shared_files(run)
    run.report(f"test_named_crash_points_with_incremental_checkpoints[{crash_at}]", figures)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rescale_1_2_3_from_incremental_checkpoints(
    workload: Workload, chaos_dir: Path, chaos_seed: int
) -> None:
    """Crash at p=1 after some incremental checkpoints, resume at p=2, crash again, finish at p=3."""
    runs = [
        ChaosRun(chaos_dir, workload, chaos_seed, parallelism=p, delay_us=40, args=INCREMENTAL)
        for p in (1, 2, 3)
    ]
    # The p=2 run crashes at its 2nd checkpoint: it resumes past the 4th and must still have work left.
    for run, nth in zip(runs[:2], (4, 2), strict=True):
        outcome = run.run(crash_at=f"after_metadata_before_notify:{nth}")
        run.expect_killed(outcome)
        run.check_intermediate(f"after the crash at p={run.parallelism}")
    assert "restoring from checkpoint" in runs[1].runs[0].stderr or runs[1].runs[0].returncode == -9
    final = runs[2]
    final.run_to_completion()
    figures = final.check_final()
    _check_shared_files(final)
    final.report("test_rescale_1_2_3_from_incremental_checkpoints", figures)
