"""The process executor refuses a sink whose storage its worker processes cannot share (issue 11, item 8).

A ``memory://`` FileSink under ``--executor process`` used to finish with exit
0 while every worker wrote into its own in-memory filesystem, lost at its
exit. Now the run is refused at start with a usage error (exit 2) that names
the sink, as a ``memory://`` checkpoint directory already is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onceflow import FileSink
from onceflow.engine.cli import main


@pytest.fixture
def job_with_sink(job_file_factory: Callable[..., Path], input_factory: Callable[..., Path]) -> Callable:
    source = input_factory({"a.txt": "x\ny\n"})

    def make(url: str) -> Path:
        return job_file_factory(
            f"""
            from onceflow import FileSink, FileSource, Job

            def build():
                job = Job("mem")
                job.source(FileSource({str(source)!r}), name="read", uid="read").sink(
                    FileSink({url!r}), name="keep", uid="keep"
                )
                return job
            """
        )

    return make


def test_memory_file_sink_under_the_process_executor_is_a_usage_error_naming_the_sink(
    job_with_sink: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = job_with_sink("memory://onceflow-test-process-sink/out")

    code = main(
        [
            "run",
            str(job_file),
            "--executor",
            "process",
            "--checkpoint-dir",
            str(tmp_path / "chk"),
            "--progress",
            "off",
        ]
    )

    err = capsys.readouterr().err
    assert code == 2, err
    assert "'keep'" in err and "memory://onceflow-test-process-sink/out" in err, err
    assert "--executor local" in err, err


def test_memory_file_sink_under_the_local_executor_still_runs(
    job_with_sink: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = job_with_sink("memory://onceflow-test-local-sink/out")

    code = main(["run", str(job_file), "--checkpoint-dir", str(tmp_path / "chk"), "--progress", "off"])

    assert code == 0, capsys.readouterr().err


def test_file_sink_declares_whether_other_processes_share_its_storage(tmp_path: Path) -> None:
    assert FileSink(str(tmp_path / "out")).shared_across_processes
    assert FileSink("s3://bucket/out").shared_across_processes
    assert not FileSink("memory://out").shared_across_processes
