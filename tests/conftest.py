"""Shared fixtures: every job-running test runs under both executors."""

from __future__ import annotations

import pytest

EXECUTORS = ["local", "process"]


@pytest.fixture(params=EXECUTORS)
def executor(request) -> str:
    """The executor a job-running test uses: ``local`` (one process) or ``process`` (workers)."""
    return request.param
