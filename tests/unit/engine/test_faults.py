"""Crash points count passes across the runner and the worker processes it forks."""

from __future__ import annotations

import multiprocessing
import signal

from onceflow.engine.faults import CrashPoints


def _pass(points: CrashPoints, label: str, times: int) -> None:
    for _ in range(times):
        points.hit(label)


def _in_forked_child(points: CrashPoints, label: str, times: int) -> int:
    """Pass ``label`` ``times`` times in a forked child; return its exit code."""
    child = multiprocessing.get_context("fork").Process(target=_pass, args=(points, label, times))
    child.start()
    child.join(timeout=10)
    return child.exitcode


def test_passes_in_forked_processes_add_up() -> None:
    points = CrashPoints("commit:99,other:5")
    points.hit("commit")

    assert _in_forked_child(points, "commit", 2) == 0
    points.hit("commit")

    assert points.counts == {"commit": 4}


def test_a_crash_point_kills_the_process_that_reaches_it_and_only_once() -> None:
    points = CrashPoints("commit:2")  # passed in children only: a crash must not hit pytest

    assert _in_forked_child(points, "commit", 1) == 0
    assert _in_forked_child(points, "commit", 1) == -signal.SIGKILL
    assert _in_forked_child(points, "commit", 2) == 0  # passes 3 and 4 of the run: no second crash
