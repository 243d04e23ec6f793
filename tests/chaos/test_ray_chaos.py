"""Kill -9 under ``onceflow run --executor ray``: of the driver at random moments, and of one actor.

Each run starts its own local Ray under a fresh temporary directory
(``RAY_TMPDIR``), so the test can tell that nothing of that Ray outlives a
killed driver. The job is the chaos keyed count at parallelism 2 (two actors).
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.support.chaos import ChaosRun
from tests.support.ray_support import exported_env, ray_temp_dir, remove_temp_dir, wait_for_no_ray_processes

pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SLOW_US = 150
"""Spin per record: ~7 s of work per actor after Ray's start-up, so kills land mid-run."""


def _actor_processes(proc) -> list[psutil.Process]:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "RayWorkerActor" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_driver_killed_at_random_moments_then_rerun(workload, chaos_dir, chaos_seed) -> None:
    """Three kill -9s of the driver alone (seeded moments, mostly after Ray is up), then a rerun:
    exact output, and no process of the killed driver's Ray left after each kill."""
    temp_dir = ray_temp_dir()
    run = ChaosRun(chaos_dir, workload, chaos_seed, parallelism=2, executor="ray", delay_us=SLOW_US)
    run.env = exported_env(temp_dir)
    try:
        for _ in range(3):
            # Ray's own processes notice their driver's death within seconds, not at once
            outcome = run.run(
                kill_after=run.rng.uniform(3.0, 10.0), runner_only=True, group_exit_timeout=30.0
            )
            left = wait_for_no_ray_processes(temp_dir, timeout=30)
            assert not left, f"Ray processes outlived the killed driver: {left}; {run.where()}"
            if outcome.returncode == 0:
                break
            run.expect_killed(outcome)
        kills = sum(run.kills.values())
        assert kills >= 2, f"the job finished after only {kills} kills; {run.where()}"
        run.run_to_completion()
        figures = run.check_final()
        print(run.report("ray-driver-kills", figures))
        assert not wait_for_no_ray_processes(temp_dir, timeout=30)
    finally:
        remove_temp_dir(temp_dir)


def test_one_actor_killed_mid_run_recovers_by_itself(workload, chaos_dir, chaos_seed) -> None:
    """kill -9 of one worker actor's process mid-run: the run restores and exits 0; output exact."""
    temp_dir = ray_temp_dir()
    run = ChaosRun(chaos_dir, workload, chaos_seed, parallelism=2, executor="ray", delay_us=SLOW_US)
    run.env = exported_env(temp_dir)
    killed: list[int] = []

    def kill_one_actor(proc) -> None:
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline and proc.poll() is None:
            actors = _actor_processes(proc)
            if len(actors) == 2:
                time.sleep(run.rng.uniform(1.0, 2.5))
                victim = actors[run.rng.randrange(2)]
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    return
                killed.append(victim.pid)
                return
            time.sleep(0.1)

    try:
        outcome = run.run(during=kill_one_actor)
        run.expect_ok(outcome)
        assert killed, f"no actor process was found to kill; {run.where()}"
        assert "restarting from the latest checkpoint" in outcome.stderr, outcome.stderr[-2000:]
        figures = run.check_final()
        print(run.report("ray-actor-kill", figures))
        left = wait_for_no_ray_processes(temp_dir, timeout=30)
        assert not left, f"Ray processes left after the run: {left}"
    finally:
        remove_temp_dir(temp_dir)
