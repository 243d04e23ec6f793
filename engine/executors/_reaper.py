"""Ends a local Ray with the driver that started it, even when the driver dies by ``kill -9``.

Ray ends a dead driver's actors, but some of the processes ``ray.init()``
starts on this machine (its agents) outlive a driver killed with SIGKILL.
The driver starts this watchdog with a pipe it never writes to; the watchdog
records every process descended from the driver, once a second, and when
the pipe ends (the driver is gone) it kills the recorded processes that are
still the same processes (same start time). Linux only (``/proc``).

Run as ``python -m onceflow.engine.executors._reaper DRIVER_PID``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from typing import Any

__all__ = ["start_reaper"]

_reaper: Any = None


def start_reaper() -> None:
    """Start the watchdog of this process's local Ray (once per process); no-op without ``/proc``."""
    global _reaper
    if _reaper is not None or not os.path.isdir("/proc/self"):
        return
    _reaper = subprocess.Popen(
        [sys.executable, "-m", "onceflow.engine.executors._reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _processes() -> dict[int, tuple[int, str]]:
    """Return ``pid -> (parent pid, start time)`` of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), fields[19])
    return found


def _watch(driver: int) -> None:
    me = os.getpid()
    seen: dict[int, str] = {}
    while True:
        table = _processes()
        roots = {driver, *seen}
        for pid, (ppid, started) in table.items():
            if pid != me and ppid in roots and pid not in seen:
                seen[pid] = started
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 1):
            break
    table = _processes()
    for pid, started in seen.items():
        if table.get(pid, (0, ""))[1] == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch(int(sys.argv[1]))
