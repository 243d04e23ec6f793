"""Shared fixtures: every job-running test runs under both executors."""

from __future__ import annotations

import pytest

EXECUTORS = ["local", "process"]


@pytest.fixture(params=EXECUTORS)
def executor(request) -> str:
    """The executor a job-running test uses: ``local`` (one process) or ``process`` (workers)."""
    return request.param


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how many runs the chaos harness killed with SIGKILL in this session, by label."""
    from tests.support.chaos import KILLS

    if KILLS:
        by_label = ", ".join(f"{label} {n}" for label, n in sorted(KILLS.items()))
        terminalreporter.write_line(f"chaos: {sum(KILLS.values())} runs killed by SIGKILL ({by_label})")
