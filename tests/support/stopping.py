"""Helpers of the graceful-stop tests: signal a ``CliRuns`` run at the right moment, read where it stopped.

A run is signalled (its whole process group, as a terminal's Ctrl-C or a
service manager's SIGTERM would) once its first checkpoint completed, so it
stops mid-way with output already committed. With ``second=True`` the signal
is sent again once the run says it is stopping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.chaos import CliRuns, RunOutcome

STOPPING_TEXT = "stopping the sources"
"""What a run logs when it acts on the first signal."""
WAIT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, what: str) -> bool:
    """Poll ``predicate`` until true (True), the process exits or ``WAIT_TIMEOUT`` passes (False)."""
    deadline = time.monotonic() + WAIT_TIMEOUT
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"stopping: gave up waiting for {what}")
            return False
        time.sleep(0.01)
    return True


def completed_checkpoints(chk: Path) -> list[int]:
    """Ids of the completed checkpoints (with ``_metadata``) under ``chk``, sorted."""
    return sorted(int(p.parent.name.split("-")[1]) for p in chk.glob("*/chk-*/_metadata"))


def signal_mid_run(
    runs: CliRuns, chk: Path, sig: int, *, second: bool = False, slow_marker: Path | None = None
) -> Callable:
    """Return a ``during`` callback: send ``sig`` to the run's group after its first checkpoint.

    With ``second``, send it again as soon as the run logged that it is stopping;
    ``slow_marker`` (the job's parameter) is created before the first signal,
    so the stop checkpoint is slow enough for the second signal to land during it.
    """
    stderr = runs.logs / f"run-{len(runs.runs) + 1:03d}.stderr"

    def during(proc: subprocess.Popen) -> None:
        if not wait_for(lambda: bool(completed_checkpoints(chk)), proc, "a first checkpoint"):
            return
        if slow_marker is not None:
            slow_marker.write_text("slow\n")
        os.killpg(proc.pid, sig)
        if second and wait_for(
            lambda: STOPPING_TEXT in stderr.read_text(errors="replace"), proc, "the stopping line"
        ):
            os.killpg(proc.pid, sig)

    return during


def stopped_at(outcome: RunOutcome) -> int:
    """The checkpoint id of the run's 'stopped at checkpoint N' line (AssertionError if none)."""
    text = outcome.stdout + outcome.stderr
    found = re.findall(r"stopped at checkpoint (\d+)", text)
    assert len(found) == 1, f"run {outcome.index}: expected one 'stopped at checkpoint N' line:\n{text}"
    assert "rerun the same command" in text, text
    return int(found[0])


def checkpoint_metadata(chk: Path, checkpoint_id: int) -> dict:
    """The ``_metadata`` of checkpoint ``checkpoint_id`` (AssertionError if it does not exist)."""
    found = list(chk.glob(f"*/chk-{checkpoint_id}/_metadata"))
    assert found, f"checkpoint {checkpoint_id} has no _metadata under {chk}"
    return json.loads(found[0].read_text())


def exit_code(sig: int) -> int:
    """The exit code of a run stopped by ``sig``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signal.Signals(sig).value
