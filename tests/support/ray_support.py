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
