"""The local-Ray watchdog ends everything a driver killed with SIGKILL started, even what it started last.

A stand-in driver starts the watchdog, then either a child that starts a new
grandchild every 20 ms (as a raylet starts workers) or a new child itself
every 20 ms (as ``ray.init`` starts Ray's processes); the driver is killed
with SIGKILL at a seeded moment. No descendant may survive it, including the
ones started after the watchdog's last once-a-second look.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from tests.support.chaos import REPO

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the watchdog needs /proc (Linux)")

DRIVER = """
import subprocess, sys, time
from onceflow.engine.executors._reaper import start_reaper
start_reaper()
if sys.argv[1] == "child":
    subprocess.Popen(["bash", "-c", "while true; do sleep 60 & sleep 0.02; done"])
    print("ready", flush=True)
    time.sleep(120)
print("ready", flush=True)
while True:  # the driver itself starts processes until it dies (ray.init starting Ray's)
    subprocess.Popen(["sleep", "60"])
    time.sleep(0.02)
"""


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["environ", "status"]):
        try:
            if (
                proc.info["status"] != psutil.STATUS_ZOMBIE
                and (proc.info["environ"] or {}).get("REAPER_TEST") == marker
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.parametrize(("starter", "seed"), [("child", 11), ("child", 12), ("driver", 13), ("driver", 14)])
def test_a_killed_driver_leaves_no_descendant_behind(starter: str, seed: int) -> None:
    rng = random.Random(seed)
    marker = uuid.uuid4().hex
    env = {**os.environ, "REAPER_TEST": marker, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, starter], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(1.2, 2.8))  # one or two of the watchdog's looks, then a fraction
        started = len(_marked(marker))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while (left := _marked(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        names = [f"{p.pid} {' '.join(p.cmdline())}" for p in left if p.is_running()]
        assert not names, f"seed {seed}: {len(names)} of ~{started} outlived the driver: {names[:5]}"
        assert started > 20, f"seed {seed}: the stand-in raylet started only {started} processes"
    finally:
        for proc in _marked(marker):
            proc.kill()
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
