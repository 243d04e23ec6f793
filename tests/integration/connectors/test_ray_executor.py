"""The Ray executor on one local Ray (``ray.init(num_cpus=2)``, shared by this module).

Each job runs from its file at parallelism 2, so two Ray actors rebuild it,
exchange batches through Ray with credits, and the driver coordinates
checkpoints. Output is compared with a plain-Python reference.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from onceflow.engine.errors import CheckpointDirectoryError, JobDefinitionError
from onceflow.operators.files import read_committed_lines
from tests.support.chaos import JOBS
from tests.support.oracles import compare, expected, write_input
from tests.support.ray_support import LOOPBACK, ray_temp_dir, remove_temp_dir, run_on_ray

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
    write_input(tmp_path / "in" / "a", N // 2, K, 2)
    write_input(tmp_path / "in" / "b", N // 2, K, 3)
    out = tmp_path / "out"
    run_on_ray(
        JOBS / "ray_jobs.py",
        {"kind": "union", "input": str(tmp_path / "in"), "output": str(out)},
        str(tmp_path / "chk"),
    )
    lines = read_committed_lines(str(out))
    per_key = Counter(f"user-{rid % K}" for rid in range(N // 2))
    want = sorted(f"{key},{c}" for key, n in per_key.items() for c in range(1, 2 * n + 1))
    assert sorted(lines) == want


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
    from tests.chaos import test_windowed_chaos as w

    events, dropped = w.event_log(4242).events()
    w.write_input(tmp_path / "in", events)
    want = w.oracle(events, dropped)
    out = tmp_path / "out"
    params = {
        "input": str(tmp_path / "in"),
        "output": str(out),
        "mode": "windows",
        "max_delay": str(w.MAX_DELAY),
        "lateness": str(w.LATENESS),
        "tumble": str(w.TUMBLE),
        "gap": str(w.GAP),
        "timer_after": str(w.TIMER_AFTER),
    }
    run_on_ray(JOBS / "windowed_chaos_job.py", params, str(tmp_path / "chk"))
    figures = w.compare(read_committed_lines(str(out)), want, final=True)
    assert figures["committed"] > 0
    assert figures["duplicates"] == figures["lost"] == figures["unexpected"] == figures["wrong_value"] == 0, (
        figures
    )


@pytest.mark.slow
def test_postgres_sink_job_on_ray_is_exact(local_ray, keyed_input, pg, tmp_path) -> None:
    """Every input line becomes one row, through the two-phase-commit PostgresSink on two actors."""
    table = pg.table()
    job = pg.job("rayjob")
    run_on_ray(
        JOBS / "ray_jobs.py",
        {"kind": "postgres", "input": str(keyed_input), "dsn": pg.dsn, "table": table, "name": job},
        str(tmp_path / "chk"),
    )
    rows = pg.q(f"SELECT id, name FROM {table}")
    assert len(rows) == N
    assert sorted(rows) == [(rid, f"user-{rid % K}") for rid in range(N)]
    assert pg.prepared(job, "pg") == []
