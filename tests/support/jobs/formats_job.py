"""The formats chaos job: rows of CSV, JSON lines or Parquet in, a keyed running count/sum, rows out.

Input rows are ``{id, key, value}`` written by ``tests/chaos/test_formats_chaos.py``
(all rows of one key in one file, in id order), in ``in_format`` and possibly
compressed. Pipeline: read (``watch`` follows a landing folder), normalize the
row (CSV values are strings) with an optional per-batch spin so a run can be
killed mid-way, drop ids with ``id % 7 == 3`` (as the oracle does),
``key_by(key)``, ``stateful_map`` keeping ``(count, sum)`` per key, and a
``FileSink`` writing ``{id, key, count, sum, part}`` rows in ``out_format``,
partitioned into ``part=<id % 3>/`` folders when ``partition``
is ``"1"``.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job
from tests.support.spin import spin


def _normalize(delay_s: float):
    def normalize(rows: list) -> list:
        spin(delay_s * len(rows))
        return [(int(r["id"]), r["key"], int(r["value"])) for r in rows if int(r["id"]) % 7 != 3]

    return normalize


def _running(state, record):
    rid, key, value = record
    count, total = state if state is not None else (0, 0)
    count += 1
    total += value
    return (count, total), {"id": rid, "key": key, "count": count, "sum": total, "part": rid % 3}


def build(
    input: str = "",
    output: str = "",
    in_format: str = "csv",
    out_format: str = "parquet",
    partition: str = "1",
    watch: str = "0",
    poll_interval: str = "0.2",
    delay_us: str = "0",
    mode: str = "keyed",
) -> Job:
    job = Job("formats-chaos")
    source = FileSource(input, format=in_format, watch=watch == "1", poll_interval=float(poll_interval))
    sink = FileSink(
        output,
        format=out_format,
        partition_by=["part"] if partition == "1" else None,
        row_group_size=2000,
    )
    (
        job.source(source, name="read", uid="read")
        .map_batches(_normalize(int(delay_us) / 1e6), name="normalize")
        .key_by(lambda record: record[1])
        .stateful_map(_running, name="running", uid="running")
        .sink(sink, name="write", uid="write")
    )
    return job
