"""The Ray executor on one local Ray (``ray.init(num_cpus=2)``, shared by this module).

Each job runs from its file at parallelism 2, so two Ray actors rebuild it,
exchange batches through Ray with credits, and the driver coordinates
checkpoints. Output is compared with a plain-Python reference.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from onceflow.engine.errors import CheckpointDirectoryError, JobDefinitionError
from onceflow.operators.files import read_committed_lines
from tests.support.chaos import JOBS
from tests.support.oracles import compare, expected, write_input
from tests.support.ray_support import (
    LOOPBACK,
    check_joins,
    check_postgres,
    check_union,
    check_windows,
    ray_temp_dir,
    remove_temp_dir,
    run_on_ray,
)

ray = pytest.importorskip("ray")

N, K, FILES = 20_000, 50, 4


@pytest.fixture(scope="module")
def local_ray():
    temp_dir = ray_temp_dir()
    ray.init(num_cpus=2, _temp_dir=temp_dir, **LOOPBACK)
    try:
        yield temp_dir
    finally:
        ray.shutdown()
        remove_temp_dir(temp_dir)


@pytest.fixture(scope="module")
def keyed_input(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ray-keyed-input")
    write_input(directory, N, K, FILES)
    return directory


def test_keyed_count_on_ray_is_exact(local_ray, keyed_input, tmp_path) -> None:
    """Two actors, a keyed running count/sum: the committed output equals the plain-Python reference."""
    out = tmp_path / "out"
    seen: list = []
    result = run_on_ray(
        JOBS / "chaos_job.py",
        {"input": str(keyed_input), "output": str(out), "mode": "keyed"},
        str(tmp_path / "chk"),
        on_tick=lambda executor, now: seen.append(executor),
    )
    figures = compare(read_committed_lines(str(out)), expected(N, K, "keyed"), "keyed")
    assert figures["committed"] == figures["expected"] > 0, figures
    assert figures["duplicates"] == figures["lost"] == figures["unexpected"] == figures["wrong_value"] == 0
    assert result.restarts == 0 and result.records_read == N
    executor = seen[-1]
    assert type(executor).__name__ == "RayExecutor" and executor.workers_count == 2
    assert len(executor.nodes) == 2


def test_union_on_ray_is_exact(local_ray, tmp_path) -> None:
    """Two sources in a union feeding a keyed running count: every key counts 1..2n_key, once each."""
    check_union(tmp_path, str(tmp_path / "out"), str(tmp_path / "chk"))


@pytest.mark.slow
def test_a_killed_actor_fails_the_attempt_and_the_job_recovers(local_ray, keyed_input, tmp_path) -> None:
    """SIGKILL of one actor's process mid-run: the runner restores from a checkpoint; output exact."""
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor(executor, now) -> None:
        if killed or sum(m.source_records for m in executor.metrics()) < N // 4:
            return
        pid = ray.get(executor.actors[1].pid.remote())
        killed.append(pid)
        threading.Thread(target=os.kill, args=(pid, signal.SIGKILL)).start()

    result = run_on_ray(
        JOBS / "chaos_job.py",
        {"input": str(keyed_input), "output": str(out), "mode": "keyed", "delay_us": "100"},
        str(tmp_path / "chk"),
        on_tick=kill_one_actor,
        interval=0.1,
    )
    assert killed, "no actor was killed: the job finished too fast"
    assert result.restarts == 1
    figures = compare(read_committed_lines(str(out)), expected(N, K, "keyed"), "keyed")
    assert figures["committed"] == figures["expected"]
    assert figures["duplicates"] == figures["lost"] == figures["unexpected"] == figures["wrong_value"] == 0


def test_memory_storage_is_refused(local_ray, keyed_input) -> None:
    with pytest.raises(CheckpointDirectoryError, match="ray executor needs checkpoint storage"):
        run_on_ray(
            JOBS / "chaos_job.py",
            {"input": str(keyed_input), "output": "memory://ray-out", "mode": "keyed"},
            "memory://ray-chk",
            restarts=0,
        )


def test_a_job_without_its_file_is_refused(local_ray, keyed_input, tmp_path) -> None:
    from onceflow.engine.loader import load_job
    from onceflow.engine.runner import JobRunner

    job = load_job(str(JOBS / "chaos_job.py"), {"input": str(keyed_input), "output": str(tmp_path / "o")})
    runner = JobRunner(job, checkpoint_dir=str(tmp_path / "chk"), executor="ray")
    with pytest.raises(JobDefinitionError, match="from its job file"):
        runner.run()


@pytest.mark.slow
def test_event_time_windows_on_ray_are_exact(local_ray, tmp_path) -> None:
    """Tumbling and session windows with lateness, timers and late side outputs, at p2 on two actors."""
    check_windows(tmp_path, str(tmp_path / "out"), str(tmp_path / "chk"))


@pytest.mark.slow
def test_postgres_sink_job_on_ray_is_exact(local_ray, pg, tmp_path) -> None:
    """Every input line becomes one row, through the two-phase-commit PostgresSink on two actors."""
    check_postgres(tmp_path, pg, str(tmp_path / "chk"))


@pytest.mark.slow
def test_two_input_operators_on_ray_are_exact(local_ray, tmp_path) -> None:
    """connect, interval_join and window_join at p2 on two actors (keyed state of both inputs)."""
    executor = check_joins(tmp_path, str(tmp_path / "out"), str(tmp_path / "chk"))
    assert executor.workers_count == 2
