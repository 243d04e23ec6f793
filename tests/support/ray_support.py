"""Helpers of the Ray executor tests: a Ray bound to the loopback, its processes, runs from a job file.

Every Ray these tests start lives under its own short temporary directory
(Ray's unix sockets must fit 107 bytes), so "no Ray process left" is checked
on the processes naming that directory, not on Rays other programs run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import psutil

from onceflow.engine.executors import ExecutionSettings
from onceflow.engine.loader import load_job_file
from onceflow.engine.runner import JobRunner, RestartStrategy, RunResult

LOOPBACK = {"_node_ip_address": "127.0.0.1", "include_dashboard": False, "configure_logging": False}
"""``ray.init`` arguments that keep a test Ray on 127.0.0.1 and without a dashboard."""


def ray_temp_dir() -> str:
    """Return a fresh short directory for one Ray's sessions and sockets."""
    return tempfile.mkdtemp(prefix="ofr", dir="/tmp")


def ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Return the live processes of the Ray whose temporary directory is ``temp_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or ())
            environ = proc.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if temp_dir in cmdline or environ.get("RAY_TMPDIR") == temp_dir:
            found.append(proc)
    return found


def wait_for_no_ray_processes(temp_dir: str, timeout: float = 30.0) -> list[str]:
    """Wait until no process of that Ray is left; return what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = ray_processes(temp_dir)
        if not left or time.monotonic() > deadline:
            names = []
            for proc in left:
                try:
                    names.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                except psutil.NoSuchProcess:
                    continue
            return names
        time.sleep(0.2)


def remove_temp_dir(temp_dir: str) -> None:
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_on_ray(
    job_file: Path,
    params: dict[str, str],
    checkpoint_dir: str,
    *,
    parallelism: int = 2,
    on_tick=None,
    restarts: int = 3,
    interval: float = 0.2,
) -> RunResult:
    """Run a job from its file with ``--executor ray`` semantics in this process (Ray already up)."""
    from onceflow.engine.coordinator import CoordinatorSettings

    loaded = load_job_file(str(job_file), params)
    runner = JobRunner(
        loaded.job,
        checkpoint_dir=checkpoint_dir,
        parallelism=parallelism,
        settings=ExecutionSettings(checkpoint=CoordinatorSettings(interval=interval)),
        restart=RestartStrategy(attempts=restarts, initial_delay=0.1),
        params=loaded.params,
        executor="ray",
        job_file=str(job_file),
        on_tick=on_tick,
    )
    return runner.run()


def exported_env(temp_dir: str) -> dict[str, str]:
    """Environment for a ``onceflow run --executor ray`` subprocess whose local Ray uses ``temp_dir``."""
    return {"RAY_TMPDIR": temp_dir}


# -- jobs run the same way on a local Ray and on the two-node cluster -------------------------------
#
# Each runs one job from its file at parallelism 2, compares the committed output with a plain-Python
# reference and returns the executor of the last attempt (its ``nodes`` say where the workers ran).
# ``root`` is a local folder for the input; ``out`` and ``checkpoint_dir`` may be s3:// URLs.

UNION_N, UNION_K = 20_000, 50
JOIN_EVENTS = 4_000


def _last_executor(**run_kwargs) -> tuple[RunResult, object]:
    seen: list = []
    result = run_on_ray(on_tick=lambda executor, now: seen.append(executor), **run_kwargs)
    assert seen, "the run never ticked"
    return result, seen[-1]


def check_union(root: Path, out: str, checkpoint_dir: str):
    """Two sources in a union feeding a keyed running count: every key counts 1..2n_key, once each."""
    from collections import Counter

    from onceflow.operators.files import read_committed_lines
    from tests.support.chaos import JOBS
    from tests.support.oracles import write_input

    write_input(root / "in" / "a", UNION_N // 2, UNION_K, 2)
    write_input(root / "in" / "b", UNION_N // 2, UNION_K, 3)
    _, executor = _last_executor(
        job_file=JOBS / "ray_jobs.py",
        params={"kind": "union", "input": str(root / "in"), "output": out},
        checkpoint_dir=checkpoint_dir,
    )
    per_key = Counter(f"user-{rid % UNION_K}" for rid in range(UNION_N // 2))
    want = sorted(f"{key},{c}" for key, n in per_key.items() for c in range(1, 2 * n + 1))
    assert sorted(read_committed_lines(out)) == want
    return executor


def check_windows(root: Path, out: str, checkpoint_dir: str):
    """Tumbling and session windows with lateness, timers and late side outputs: exact."""
    from onceflow.operators.files import read_committed_lines
    from tests.chaos import test_windowed_chaos as w
    from tests.support.chaos import JOBS

    events, dropped = w.event_log(4242).events()
    w.write_input(root / "in", events)
    want = w.oracle(events, dropped)
    params = {
        "input": str(root / "in"),
        "output": out,
        "mode": "windows",
        "max_delay": str(w.MAX_DELAY),
        "lateness": str(w.LATENESS),
        "tumble": str(w.TUMBLE),
        "gap": str(w.GAP),
        "timer_after": str(w.TIMER_AFTER),
    }
    _, executor = _last_executor(
        job_file=JOBS / "windowed_chaos_job.py", params=params, checkpoint_dir=checkpoint_dir
    )
    figures = w.compare(read_committed_lines(out), want, final=True)
    assert figures["committed"] > 0
    bad = {k: figures[k] for k in ("duplicates", "lost", "unexpected", "wrong_value")}
    assert not any(bad.values()), figures
    return executor


def check_postgres(root: Path, pg, checkpoint_dir: str):
    """Every input line becomes one row, once, through the two-phase-commit PostgresSink."""
    from tests.support.chaos import JOBS
    from tests.support.oracles import write_input

    write_input(root / "in", UNION_N, UNION_K, 4)
    table = pg.table()
    job = pg.job("rayjob")
    _, executor = _last_executor(
        job_file=JOBS / "ray_jobs.py",
        params={"kind": "postgres", "input": str(root / "in"), "dsn": pg.dsn, "table": table, "name": job},
        checkpoint_dir=checkpoint_dir,
    )
    rows = pg.q(f"SELECT id, name FROM {table}")
    assert sorted(rows) == [(rid, f"user-{rid % UNION_K}") for rid in range(UNION_N)]
    assert pg.prepared(job, "pg") == []
    return executor


def check_joins(root: Path, out: str, checkpoint_dir: str):
    """connect, interval_join and window_join over two event logs: the reference's lines, once each."""
    from onceflow.operators.files import read_committed_lines
    from tests.support.chaos import JOBS
    from tests.support.joins_reference import JoinWorkload, output_line, write_events

    workload = JoinWorkload(n=JOIN_EVENTS, n_keys=20)
    lefts, rights = workload.events()
    write_events(root / "in" / "left", lefts, 2)
    write_events(root / "in" / "right", rights, 2)
    _, executor = _last_executor(
        job_file=JOBS / "joins_chaos_job.py",
        params={"input": str(root / "in"), "output": out},
        checkpoint_dir=checkpoint_dir,
    )
    want = sorted(output_line(r) for r in workload.reference(lefts, rights).elements())
    assert sorted(read_committed_lines(out)) == want
    return executor
