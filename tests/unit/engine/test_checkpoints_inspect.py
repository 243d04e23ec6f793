"""``onceflow checkpoints inspect``: state size per operator, and keyed state as an Arrow table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from onceflow.engine.cli import main

JOB = """
    from onceflow import Job, FileSink, FileSource


    def build(input, output):
        job = Job("inspect-count")
        (
            job.source(FileSource(input), name="read", uid="read")
            .flat_map(str.split, name="split")
            .key_by(lambda w: w)
            .stateful_map(lambda n, w: ((n or 0) + 1, f"{w},{(n or 0) + 1}"), name="count", uid="count")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""

WORDS = "a b\na c a\nd\n"
EXPECTED = {"a": 3, "b": 1, "c": 1, "d": 1}


@pytest.fixture
def run(
    tmp_path: Path, input_factory: Callable[..., Path], job_file_factory: Callable[[str, str], Path]
) -> Callable[..., Path]:
    """Run the counting job to its final checkpoint with extra options; return the checkpoint dir."""
    source = input_factory({"words.txt": WORDS})
    job_file = job_file_factory(JOB, "inspect_job.py")

    def run(name: str, *options: str) -> Path:
        chk = tmp_path / name / "chk"
        args = ["run", str(job_file), "-p", f"input={source}", "-p", f"output={tmp_path / name / 'out'}"]
        assert main([*args, "--checkpoint-dir", str(chk), "--progress", "off", *options]) == 0
        return chk

    return run


def test_inspect_shows_the_state_size_of_every_operator(run, capsys) -> None:
    chk = run("heap")
    capsys.readouterr()
    assert main(["checkpoints", "inspect", str(chk)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("job 'inspect-count', checkpoint ") and ", final:" in out[0]
    rows = {line.split()[0]: line.split() for line in out[3:] if line and not line.startswith("new:")}
    assert set(rows) == {"count", "read", "write"}
    uid, name, method, files, entries, size, new, shared = rows["count"]
    assert (name, method, files, entries, shared) == ("count", "stateful_map", "1", "4", "0")
    assert int(size.replace(",", "")) > 0 and new == size


@pytest.mark.parametrize(
    "options", [(), ("--state-backend", "disk", "--parallelism", "2")], ids=["heap", "disk-p2"]
)
def test_state_opens_as_a_table_that_the_backends_agree_on(run, capsys, tmp_path, options) -> None:
    chk = run("job", *options)
    capsys.readouterr()
    assert main(["checkpoints", "inspect", str(chk), "--state", "count", "--limit", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(": 4 keyed entries")
    assert printed[-1] == "... 2 more (--limit N, or --out FILE.parquet for all)"

    for out in (tmp_path / "state.parquet", tmp_path / "state.arrow"):
        assert main(["checkpoints", "inspect", str(chk), "--state", "count", "--out", str(out)]) == 0
        table = pq.read_table(out) if out.suffix == ".parquet" else ipc.open_file(str(out)).read_all()
        assert table.column_names == ["state", "key_group", "key", "value"]
        assert {r["key"]: r["value"] for r in table.to_pylist()} == EXPECTED
        assert set(table["state"].to_pylist()) == {"value"}


def test_inspect_refuses_unknown_operators_and_bad_output_names(run, capsys, tmp_path) -> None:
    chk = run("heap")
    capsys.readouterr()
    assert main(["checkpoints", "inspect", str(chk), "--state", "nope"]) == 2
    assert (
        "no state of operator uid 'nope' (operators with state: count, read, write)"
        in capsys.readouterr().err
    )
    assert (
        main(["checkpoints", "inspect", str(chk), "--state", "count", "--out", str(tmp_path / "x.csv")]) == 2
    )
    assert "name a .parquet or .arrow file" in capsys.readouterr().err
    assert main(["checkpoints", "inspect", str(chk), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "--out needs --state UID" in capsys.readouterr().err
