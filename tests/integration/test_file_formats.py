"""FileSource and FileSink formats end to end: CSV, JSON lines, Parquet, compression, partitions.

Every job runs with checkpoints (and a restore where said) against real
files; outputs are read back the way users read them: ``pyarrow.dataset``,
DuckDB, ``csv`` and ``json``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard

from onceflow import FileSink, FileSource, Job
from onceflow.engine.errors import OperatorError
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.errors import SourceDecodeError, SourceError
from onceflow.operators.files import read_committed_lines

ROWS = [{"id": str(i), "user": f"u{i % 5}", "amount": str(i * 3 % 17)} for i in range(3000)]

COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "": lambda data: data,
}


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    lines = ["id,user,amount"] + [f"{r['id']},{r['user']},{r['amount']}" for r in rows]
    return ("\n".join(lines) + "\n").encode()


def committed_rows(directory: Path, suffix: str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(directory.rglob(f"part-*{suffix}")):
        if suffix == ".csv":
            rows.extend(csv.DictReader(path.open()))
        else:
            rows.extend(json.loads(line) for line in path.read_text().splitlines())
    return rows


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst", ""])
def test_csv_rows_of_compressed_files_are_dicts_each_once(tmp_path, suffix) -> None:
    """CSV in 3 compressed files read with small batches and many checkpoints: every row once, as dicts."""
    src = tmp_path / "in"
    src.mkdir()
    for f in range(3):
        part = ROWS[f::3]
        (src / f"in-{f}.csv{suffix}").write_bytes(COMPRESSORS[suffix](csv_bytes(part)))
    out = tmp_path / "out"
    job = Job("csv-in")
    (
        job.source(FileSource(str(src), format="csv", read_size=512), name="read", uid="read")
        .map(lambda r: {**r, "amount": int(r["amount"])}, name="typed")
        .sink(FileSink(str(out), format="jsonl"), name="write", uid="write")
    )
    result = run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), parallelism=2, batch_size=50)
    assert result.checkpoints_completed >= 1
    got = committed_rows(out, ".jsonl")
    assert sorted(got, key=lambda r: int(r["id"])) == [{**r, "amount": int(r["amount"])} for r in ROWS]


def test_gz_file_read_as_text_is_decompressed_not_garbage(tmp_path) -> None:
    (tmp_path / "log.txt.gz").write_bytes(gzip.compress(b"first line\nsecond line\nno newline"))
    out = tmp_path / "out"
    job = Job("gz-text")
    job.source(FileSource(str(tmp_path / "log.txt.gz")), name="read").sink(FileSink(str(out)), name="w")
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"))
    assert read_committed_lines(str(out)) == ["first line", "second line", "no newline"]


def test_truncated_gz_fails_naming_the_file(tmp_path) -> None:
    data = gzip.compress(b"".join(f"line {i}\n".encode() for i in range(20000)))
    bad = tmp_path / "cut.log.gz"
    bad.write_bytes(data[: len(data) // 2])
    job = Job("cut")
    job.source(FileSource(str(bad)), name="read").sink(FileSink(str(tmp_path / "out")), name="w")
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), restart_attempts=0)
    assert isinstance(info.value.__cause__, SourceDecodeError)
    assert "cut.log.gz" in str(info.value) and "gzip" in str(info.value)


def test_malformed_csv_row_fails_naming_file_and_line(tmp_path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,user,amount\n1,a,3\n2,b\n3,c,4\n")
    job = Job("bad-csv")
    job.source(FileSource(str(path), format="csv"), name="read").sink(
        FileSink(str(tmp_path / "out"), format="jsonl"), name="w"
    )
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), restart_attempts=0)
    message = str(info.value)
    assert f"file {path}, line 3" in message, message
    assert "'2,b'" in message and "2 fields, the header has 3" in message


def test_malformed_rows_become_dead_letters_with_file_and_line(tmp_path) -> None:
    path = tmp_path / "in.jsonl.gz"
    lines = [json.dumps({"id": i}) for i in range(500)]
    bad_at = {10: "{not json", 250: '{"id": 250', 499: "]"}
    for i, text in bad_at.items():
        lines[i] = text
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out, dead = tmp_path / "out", tmp_path / "dead"
    job = Job("bad-jsonl")
    (
        job.source(FileSource(str(path), format="jsonl"), name="read", on_error="dead_letter")
        .map(lambda r: r["id"], name="ids")
        .sink(FileSink(str(out)), name="w", uid="w")
    )
    job.dead_letters(FileSink(str(dead)), name="dead", uid="dead")
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), batch_size=64)
    assert sorted(map(int, read_committed_lines(str(out)))) == [i for i in range(500) if i not in bad_at]
    letters = [json.loads(line) for line in read_committed_lines(str(dead))]
    assert sorted((x["source"]["line"], x["record"]) for x in letters) == [
        (i + 1, repr(text)) for i, text in sorted(bad_at.items())
    ]
    assert {x["operator"] for x in letters} == {"read"}


def test_dead_letter_of_a_later_operator_names_the_line_after_skipped_rows(tmp_path) -> None:
    """Blank and bad rows are dropped from the batch; a map's dead letter still names its own line."""
    path = tmp_path / "in.csv"
    path.write_text("id,v\n1,a\n\n2,b,extra\n3,boom\n4,d\n")
    job = Job("positions")
    (
        job.source(FileSource(str(path), format="csv"), name="read", on_error="dead_letter")
        .map(lambda r: 1 / 0 if r["v"] == "boom" else r["id"], name="check", on_error="dead_letter")
        .sink(FileSink(str(tmp_path / "out")), name="w", uid="w")
    )
    job.dead_letters(FileSink(str(tmp_path / "dead")), name="dead", uid="dead")
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"))
    letters = sorted(
        (x["operator"], x["source"]["line"])
        for x in map(json.loads, read_committed_lines(str(tmp_path / "dead")))
    )
    assert letters == [("check", 5), ("read", 4)]
    assert sorted(read_committed_lines(str(tmp_path / "out"))) == ["1", "4"]


def write_parquet_input(directory: Path, n_files: int, rows_per_file: int) -> pa.Table:
    directory.mkdir()
    tables = []
    for f in range(n_files):
        ids = pa.array(range(f * rows_per_file, (f + 1) * rows_per_file), pa.int64())
        table = pa.table(
            {"id": ids, "x": pc.multiply(ids, 2), "tag": pc.cast(pc.remainder(ids, 3), pa.string())}
        )
        pq.write_table(table, directory / f"in-{f}.parquet", row_group_size=700)
        tables.append(table)
    return pa.concat_tables(tables)


def test_parquet_row_groups_to_map_batches_and_rows_then_partitioned_parquet(tmp_path) -> None:
    """Parquet in (row groups, small batches) -> map_batches(arrow) -> Parquet partitioned by tag."""
    want = write_parquet_input(tmp_path / "in", 3, 2500)
    out = tmp_path / "out"
    job = Job("pq")
    (
        job.source(FileSource(str(tmp_path / "in"), format="parquet", columns=["id", "tag"]), name="read")
        .map_batches(lambda b: b.append_column("y", pc.multiply(b.column("id"), 10)), arrow=True, name="y")
        .sink(FileSink(str(out), format="parquet", partition_by=["tag"], row_group_size=1000), name="w")
    )
    result = run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), parallelism=2, batch_size=300)
    assert result.checkpoints_completed >= 1
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    got = sorted(
        zip(table.column("id").to_pylist(), table.column("tag").to_pylist(), table.column("y").to_pylist())
    )
    assert got == sorted((i, i % 3, i * 10) for i in want.column("id").to_pylist())  # hive infers int
    assert {p.name for p in out.iterdir()} == {"_onceflow_sink.json", "tag=0", "tag=1", "tag=2"}
    for path in out.rglob("part-*.parquet"):
        assert "tag" not in pq.read_schema(path).names  # the folder holds it
        assert (
            max(
                pq.ParquetFile(path).metadata.row_group(i).num_rows
                for i in range(pq.ParquetFile(path).metadata.num_row_groups)
            )
            <= 1000
        )


def test_partition_function_and_csv_output_read_by_duckdb(tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    src = tmp_path / "in.csv"
    src.write_bytes(csv_bytes(ROWS))
    out = tmp_path / "out"
    job = Job("csv-out")
    (
        job.source(FileSource(str(src), format="csv"), name="read").sink(
            FileSink(
                str(out), format="csv", partition_by=lambda r: {"bucket": int(r["id"]) % 4, "user": r["user"]}
            ),
            name="w",
        )
    )
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), batch_size=100)
    table = f"read_csv('{out}/**/*.csv', hive_partitioning=true)"
    total = duckdb.sql(f"select count(*), count(distinct id), sum(amount::int) from {table}").fetchall()[0]
    assert total == (len(ROWS), len(ROWS), sum(int(r["amount"]) for r in ROWS))
    per = duckdb.sql(f"select bucket, count(*) from {table} group by 1 order by 1").fetchall()
    assert per == [(b, sum(1 for r in ROWS if int(r["id"]) % 4 == b)) for b in range(4)]


def test_bad_configuration_is_refused_early() -> None:
    with pytest.raises(SourceError, match="format must be one of"):
        FileSource("x", format="xml")
    with pytest.raises(SourceError, match="compression must be"):
        FileSource("x.lz4", compression="lz4").create_reader(0, 1)._compressed("x.lz4")
    with pytest.raises(SourceError, match="Parquet files compress inside"):
        FileSource("x", format="parquet", compression="gzip")
    with pytest.raises(ValueError, match="partition_by must be a list"):
        FileSink("out", format="csv", partition_by="day")
    with pytest.raises(ValueError, match="need records with columns"):
        FileSink("out", partition_by=["day"])
