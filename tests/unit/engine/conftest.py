"""Fixtures for engine unit tests: input files, job files, memory:// dirs, a clean logger."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

# Plain `pytest` does not put the repository root on sys.path; `python -m pytest` does.
if importlib.util.find_spec("engine") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


@pytest.fixture(autouse=True)
def onceflow_logger() -> Iterator[logging.Logger]:
    """Give every test the "onceflow" logger as it was: the CLI replaces its handlers."""
    log = logging.getLogger("onceflow")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    log.handlers[:], log.level, log.propagate = saved


_memory_ids = itertools.count()


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A fresh ``memory://`` directory, removed afterwards (the store is process-global)."""
    url = f"memory://onceflow-engine-test-{next(_memory_ids)}-{uuid.uuid4().hex[:8]}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def input_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write text files into a fresh input directory; return the directory.

    ``input_factory({"a.txt": "x y\\n"}, name="in")``.
    """

    def make(files: dict[str, str], *, name: str = "in") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return make


@pytest.fixture
def job_file_factory(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a job file from dedented source; return its path."""

    def make(source: str, name: str = "job.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return make


def snapshot_tree(root: Path, *, skip: frozenset[str] = frozenset()) -> dict[str, tuple[int, bytes]]:
    """Return ``{relative path: (mtime_ns, content)}`` of every file below ``root``."""
    found: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in skip:
            found[str(path.relative_to(root))] = (path.stat().st_mtime_ns, path.read_bytes())
    return found


@pytest.fixture
def tree_snapshot() -> Callable[..., dict[str, tuple[int, bytes]]]:
    """``snapshot_tree`` as a fixture, so test modules need not import conftest."""
    return snapshot_tree
