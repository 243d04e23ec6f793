"""Fixtures for operator unit tests: a fake runtime context, no engine, no threads."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest

from onceflow.state_backends.config import StateBackendConfig

# Plain `pytest` does not put the repository root on sys.path (nothing is
# installed and pyproject sets no `pythonpath`); `python -m pytest` does.
if importlib.util.find_spec("operators") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


@dataclass
class FakeContext:
    """A ``RuntimeContext`` an operator test builds by hand; records crash points it passes."""

    job_name: str = "job"
    operator_name: str = "op"
    uid: str = "sink-uid"
    subtask_index: int = 0
    parallelism: int = 1
    max_parallelism: int = 128
    key_group_range: Any = (0, 127)
    attempt_id: str = "attempt-1"
    restored_checkpoint_id: int | None = None
    overwrite_output: bool = False
    state_backend: StateBackendConfig = field(default_factory=StateBackendConfig)
    crash_points: list[str] = field(default_factory=list)
    crash_at: tuple[str, int] | None = None
    """``(label, n)``: ``crash_point`` raises ``SimulatedCrash`` the n-th time it passes label."""

    def crash_point(self, label: str) -> None:
        self.crash_points.append(label)
        if self.crash_at is not None and self.crash_at == (label, self.crash_points.count(label)):
            raise SimulatedCrash(label)


class SimulatedCrash(Exception):
    """Stands in for ``kill -9`` at a crash point: the operator is abandoned, never closed."""


@pytest.fixture
def context_factory() -> Callable[..., FakeContext]:
    """Build a ``FakeContext``; keyword arguments override the defaults."""
    return FakeContext


@pytest.fixture
def simulated_crash() -> type[SimulatedCrash]:
    """The exception ``FakeContext`` raises at its ``crash_at`` point."""
    return SimulatedCrash


_memory_ids = itertools.count()


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A fresh ``memory://`` directory, removed afterwards (the store is process-global)."""
    url = f"memory://onceflow-test-{next(_memory_ids)}-{uuid.uuid4().hex[:8]}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
