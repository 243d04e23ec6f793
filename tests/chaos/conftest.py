"""Fixtures of the chaos tests: seeds, generated input, run directories kept on failure.

Environment:
    CHAOS_SEED      replay a failing run with its printed seed
    CHAOS_KEEP_DIR  where run directories are created (default: the system temp dir)
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chaos import Workload
from tests.support.oracles import write_input

N_RECORDS = 100_000
N_KEYS = 1_000
N_FILES = 8


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"chaos_rep_{report.when}", report)


@pytest.fixture(scope="session")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """100,000 records over 1,000 keys in 8 files (each key in one file), shared read-only."""
    directory = tmp_path_factory.mktemp("chaos-input")
    write_input(directory, N_RECORDS, N_KEYS, N_FILES)
    return Workload(directory, N_RECORDS, N_KEYS, N_FILES)


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    env = os.environ.get("CHAOS_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**31)
    print(f"\nchaos seed={seed} test={request.node.name}")
    return seed


@pytest.fixture
def chaos_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory for one test's runs; deleted on success, kept (and printed) on failure."""
    base = os.environ.get("CHAOS_KEEP_DIR") or None
    if base:
        os.makedirs(base, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name)[:60]
    path = Path(tempfile.mkdtemp(prefix=f"onceflow-chaos-{name}-", dir=base))
    yield path
    report = getattr(request.node, "chaos_rep_call", None)
    if report is not None and report.passed:
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"\nchaos: kept the failing run's directory {path}")
