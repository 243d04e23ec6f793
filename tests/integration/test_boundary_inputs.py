"""Boundary inputs through a whole job and its rerun: nothing, one record, a batch less one, a batch,
a batch and one, a last line without a newline, a line longer than a read, a line of a megabyte
(the key, its state and its output) and characters beyond ASCII.

Each input runs ``python -m onceflow run`` to its end, then again on the same checkpoint directory:
the first run commits exactly the keyed running counts a plain loop computes, the rerun says the
job already finished and commits nothing more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from onceflow import read_committed_lines

REPO = Path(__file__).resolve().parents[2]
READ_SIZE = 64
"""Bytes one source batch reads: 12 whole lines of 5 bytes (``w000`` and a newline)."""

JOB = (
    """
    from onceflow import FileSink, FileSource, Job


    def count(seen, word):
        n = (seen or 0) + 1
        return n, f"{word},{n}"


    def build(input, output):
        job = Job("boundary")
        (
            job.source(FileSource(input, read_size=%d), name="read", uid="read")
            .key_by(lambda w: w)
            .stateful_map(count, name="count", uid="count")
            .sink(FileSink(output), name="write", uid="write")
        )
        return job
"""
    % READ_SIZE
)

INPUTS = {
    "empty": "",
    "one": "w000\n",
    "batch-less-one": "".join(f"w{i % 3:03d}\n" for i in range(11)),
    "batch": "".join(f"w{i % 3:03d}\n" for i in range(12)),
    "batch-and-one": "".join(f"w{i % 3:03d}\n" for i in range(13)),
    "no-final-newline": "w000\nw001\nw000",
    "line-longer-than-a-read": "w000\n" + "x" * (3 * READ_SIZE) + "\nw000\n",
    "a-megabyte-line-and-unicode": "\u00e9" * 500_000
    + "\n"
    + "\u65e5\u672c\u8a9e\n\U0001f600\n" * 3
    + "\u00e9" * 500_000
    + "\n",
}


def run(job_file: Path, chk: Path, inp: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "onceflow", "run", str(job_file), "--checkpoint-dir", str(chk)]
    command += ["--progress", "off", "-p", f"input={inp}", "-p", f"output={out}"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(INPUTS))
def test_a_boundary_input_commits_exactly_and_a_rerun_adds_nothing(tmp_path: Path, name: str) -> None:
    inp, out, chk = tmp_path / "in", tmp_path / "out", tmp_path / "chk"
    inp.mkdir()
    (inp / "words.txt").write_text(INPUTS[name])
    job_file = tmp_path / "job.py"
    job_file.write_text(textwrap.dedent(JOB))
    words = INPUTS[name].splitlines()
    expected = Counter(f"{w},{i}" for w, n in Counter(words).items() for i in range(1, n + 1))

    first = run(job_file, chk, inp, out)
    assert first.returncode == 0, first.stderr
    assert Counter(read_committed_lines(str(out))) == expected
    again = run(job_file, chk, inp, out)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout, again.stdout + again.stderr
    assert Counter(read_committed_lines(str(out))) == expected
