"""The distribution installs exactly one import name, ``onceflow``, with every subpackage in it.

The three subpackages keep their top-level folders (``engine/``, ``operators/``,
``state_backends/``) through setuptools' ``package-dir``; this test builds the
real wheel and looks inside, so a folder left out of the explicit package list,
or a generic top-level name leaking into site-packages, fails here.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "engine": "onceflow/engine",
    "operators": "onceflow/operators",
    "state_backends": "onceflow/state_backends",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("onceflow-*.whl")
    return built


def test_wheel_installs_exactly_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    top_level_txt = next(n for n in names if n.endswith(".dist-info/top_level.txt"))

    assert top_level == {"onceflow"}
    assert zipfile.ZipFile(wheel).read(top_level_txt).decode().split() == ["onceflow"]


def test_every_module_of_the_three_folders_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, prefix in FOLDERS.items()
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }

    assert expected - names == set()
    assert {"onceflow/__init__.py", "onceflow/py.typed", "onceflow/engine/py.typed"} <= names


def test_installed_wheel_imports_onceflow_and_no_generic_name(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        "import onceflow, onceflow.engine.cli\n"
        f"assert onceflow.__file__.startswith({str(target)!r}), onceflow.__file__\n"
        "from onceflow import Job, FileSource, FileSink\n"
        "for name in ('engine', 'operators', 'state_backends'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable')\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
