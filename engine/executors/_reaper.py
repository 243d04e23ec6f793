"""Ends a local Ray with the driver that started it, even when the driver dies by ``kill -9``.

Ray ends a dead driver's actors, but some of the processes ``ray.init()``
starts on this machine (its agents) outlive a driver killed with SIGKILL.
The driver starts this watchdog with a pipe it never writes to; the watchdog
records every process descended from the driver, once a second, and when
the pipe ends (the driver is gone) it stops the recorded processes that are
still the same processes (same start time), everything they started since,
and what the driver itself started since the last look (orphans of its
process group), then kills them all. Linux only (``/proc``).

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


def _stats() -> dict[int, tuple[int, int, str]]:
    """Return ``pid -> (parent pid, process group, start time)`` of every live process."""
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
            found[int(entry)] = (int(fields[1]), int(fields[2]), fields[19])
    return found


def _descendants(table: dict[int, tuple[int, int, str]], roots: dict[int, str]) -> dict[int, str]:
    """Return ``roots`` still alive (same start time) plus every live process descended from them."""
    found = {pid: started for pid, started in roots.items() if table.get(pid, (0, 0, ""))[2] == started}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, started) in table.items():
            if ppid in found and pid not in found:
                found[pid] = started
                grew = True
    return found


def _watch(driver: int) -> None:
    me = os.getpid()
    group = os.getpgid(driver)
    born = _stats()[me][2]
    seen: dict[int, str] = {}
    while True:
        table = _stats()
        roots = {driver, *seen}
        for pid, (ppid, _, started) in table.items():
            if pid != me and ppid in roots and pid not in seen:
                seen[pid] = started
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 1):
            break
    _end({**seen, **_orphans(group, born)}, me)


def _orphans(group: int, born: str) -> dict[int, str]:
    """Return the processes the driver started in its last second: orphans now, not its children.

    They are recognised as what the driver's process group holds that started
    after this watchdog (so not the shell pipeline the driver was started in);
    their parent, the driver, is gone, so the recorded tree no longer leads to them.
    """
    after = int(born)
    found = _stats().items()
    return {pid: started for pid, (_, pgid, started) in found if pgid == group and int(started) > after}


def _end(seen: dict[int, str], me: int) -> None:
    """Stop every recorded process and whatever they started since the last look, then kill them all.

    A process started in the last second (a Ray worker the raylet was just
    spawning) is not recorded yet but is still a child of a recorded one while
    that one lives; stopping (SIGSTOP) before killing keeps the tree from
    changing under the sweep, so the freshest worker is found too instead of
    being orphaned, and an orphaned starting worker can retry reaching its
    dead Ray for a minute.
    """
    stopped: dict[int, str] = {}
    for _ in range(20):
        found = _descendants(_stats(), {**seen, **stopped})
        found.pop(me, None)
        fresh = {pid: started for pid, started in found.items() if pid not in stopped}
        if not fresh:
            break
        for pid in fresh:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped.update(fresh)
    table = _stats()
    for pid, started in stopped.items():
        if table.get(pid, (0, 0, ""))[2] == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch(int(sys.argv[1]))
