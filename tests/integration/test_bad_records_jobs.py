"""Bad records end to end: dead letters exactly once, fail-fast errors that name the record."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from onceflow import FileSink, FileSource, Job
from onceflow.engine.errors import OperatorError
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.files import read_committed_lines

GOOD = [f"k{i % 7} {i}" for i in range(2000)]
BAD = {37: "k1 x", 500: "", 501: "only-a-word", 1999: "k3 1 2"}
"""Line index (0-based) -> malformed line replacing the good one."""


def parse(line: str) -> tuple[str, int]:
    key, value = line.split(" ")
    return key, int(value)


def write_lines(path: Path) -> list[str]:
    lines = [BAD.get(i, line) for i, line in enumerate(GOOD)]
    path.write_text("".join(f"{line}\n" for line in lines))
    return lines


def reference(lines: list[str], poison: int) -> tuple[Counter, list[tuple[str, int]]]:
    """Final sums per key over the good lines, and the (key, value) records ``count`` refuses."""
    sums: Counter = Counter()
    refused = []
    for i, line in enumerate(lines):
        if i in BAD:
            continue
        key, value = parse(line)
        if value % poison == 0 and key in sums:  # reduce calls fn from a key's second record on
            refused.append((key, value))
            continue
        sums[key] += value
    return sums, refused


def sum_job(src: str, out: str, dead: str, poison: int) -> Job:
    def add(a: tuple[str, int], b: tuple[str, int]) -> tuple[str, int]:
        if b[1] % poison == 0:
            msg = f"poisoned {b[1]}"
            raise ValueError(msg)
        return a[0], a[1] + b[1]

    job = Job("sums")
    (
        job.source(FileSource(src), name="read")
        .map(parse, name="parse", on_error="dead_letter")
        .key_by(lambda kv: kv[0])
        .reduce(add, name="sum", uid="sum", on_error="dead_letter")
        .map(lambda kv: f"{kv[0]},{kv[1]}")
        .sink(FileSink(out), name="write")
    )
    job.dead_letters(FileSink(dead), name="dead")
    return job


@pytest.mark.parametrize("parallelism", [1, 3])
def test_bad_records_become_dead_letters_once_and_the_good_ones_are_exact(
    tmp_path: Path, parallelism: int
) -> None:
    src = tmp_path / "in.txt"
    lines = write_lines(src)
    poison = 97
    out, dead = tmp_path / "out", tmp_path / "dead"
    run_job_for_test(sum_job(str(src), str(out), str(dead), poison), parallelism=parallelism, batch_size=64)

    sums, refused = reference(lines, poison)
    final: dict[str, int] = {}
    for line in read_committed_lines(str(out)):
        key, value = line.split(",")
        final[key] = max(final.get(key, 0), int(value))
    assert final == dict(sums)

    letters = [json.loads(line) for line in read_committed_lines(str(dead))]
    parse_letters = sorted((d["source"]["line"], d["record"]) for d in letters if d["operator"] == "parse")
    assert parse_letters == [(i + 1, repr(line)) for i, line in sorted(BAD.items())]
    assert {d["source"]["file"] for d in letters if d["operator"] == "parse"} == {str(src)}
    assert all(d["error"]["type"] == "ValueError" for d in letters)
    sum_letters = sorted(d["record"] for d in letters if d["operator"] == "sum")
    assert sum_letters == sorted(repr(r) for r in refused)
    assert all("source" not in d for d in letters if d["operator"] == "sum")  # after a hash edge: unknown


def test_dead_letters_survive_restarts_exactly_once(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    lines = write_lines(src)
    out, dead, chk = tmp_path / "out", tmp_path / "dead", f"memory://dl-restarts-{id(tmp_path)}"
    marker = tmp_path / "crashed"

    def flaky(kv: tuple[str, int]) -> tuple[str, int]:
        if kv[1] == 1500 and not marker.exists():
            marker.touch()
            raise ConnectionError("flaky")  # fail mode: the attempt restarts from a checkpoint
        return kv

    job = Job("restarts")
    (
        job.source(FileSource(str(src)), name="read")
        .map(parse, name="parse", on_error="dead_letter")
        .map(flaky, name="flaky")
        .sink(FileSink(str(out)), name="write")
    )
    job.dead_letters(FileSink(str(dead)), name="dead")
    result = run_job_for_test(job, checkpoint_dir=chk, batch_size=16, checkpoint_interval=0.001)
    assert result.restarts == 1
    assert len(read_committed_lines(str(out))) == len(lines) - len(BAD)
    letters = [json.loads(line)["source"]["line"] for line in read_committed_lines(str(dead))]
    assert sorted(letters) == [i + 1 for i in sorted(BAD)]


def test_fail_fast_error_names_operator_record_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    write_lines(src)
    job = Job("strict")
    job.source(FileSource(str(src)), name="read").map(parse, name="parse").sink(FileSink(str(tmp_path / "o")))
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, restart_attempts=0)
    text = str(info.value)
    assert "operator 'parse'" in text
    assert "on record 'k1 x'" in text
    assert f"(file {src}, line 38)" in text
    assert "on_error='dead_letter'" in text
    assert isinstance(info.value.__cause__, ValueError)


def test_fail_fast_after_a_filter_names_the_source_batch_lines(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    write_lines(src)
    job = Job("strict")
    (
        job.source(FileSource(str(src)), name="read")
        .filter(lambda line: line != "", name="nonempty")
        .map(parse, name="parse")
        .sink(FileSink(str(tmp_path / "o")))
    )
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, restart_attempts=0, batch_size=100)
    assert f"on record 'k1 x' (file {src}, one of lines 1-100)" in str(info.value)


def test_a_long_record_is_cut_in_the_error(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("y" * 50_000 + "\n")
    job = Job("long")
    job.source(FileSource(str(src)), name="read").map(parse, name="parse").sink(FileSink(str(tmp_path / "o")))
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, restart_attempts=0)
    assert "... (50002 characters)" in str(info.value)
    assert len(str(info.value)) < 2000
