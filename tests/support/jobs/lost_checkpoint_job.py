"""The lost-checkpoint job: a keyed running count/sum written to a FileSink, PostgresSink or RedisStreamSink.

Input lines are ``id,key,value`` (:func:`tests.support.oracles.write_input`);
the pipeline is the chaos job's keyed mode (parse with an optional busy pause
per record, drop ``id % 7 == 3``, a running ``(count, sum)`` per key) and
every output line is ``id,key,running_count,running_sum``
(:func:`tests.support.oracles.expected` with ``mode="keyed"``). Where it goes:

* ``sink=file``: lines into the FileSink directory ``output``;
* ``sink=postgres``: one row ``(line)`` per line into ``table`` (insert mode);
* ``sink=redis``: one entry ``{"line": line}`` per line into ``stream``.

The sink's uid is ``sink`` and the job's name is the ``job`` parameter, so
every test run has its own marker rows and Redis keys.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job, PostgresSink, RedisStreamSink
from tests.support.spin import csv_batch_parser


def _fields(f: list[str]) -> tuple[int, str, int]:
    return int(f[0]), f[1], int(f[2])


def _running(state, record):
    rid, key, value = record
    count, total = state if state is not None else (0, 0)
    count += 1
    total += value
    return (count, total), f"{rid},{key},{count},{total}"


def build(
    job: str = "lost-checkpoints",
    input: str = "",
    sink: str = "file",
    output: str = "",
    dsn: str = "",
    table: str = "",
    redis: str = "",
    stream: str = "",
    delay_us: str = "0",
) -> Job:
    the_job = Job(job)
    lines = (
        the_job.source(FileSource(input), name="read", uid="read")
        .map_batches(csv_batch_parser(_fields, float(delay_us) / 1e6), name="parse", uid="parse")
        .filter(lambda r: r[0] % 7 != 3, name="drop-7-3", uid="drop-7-3")
        .key_by(lambda r: r[1])
        .stateful_map(_running, name="running", uid="running")
    )
    if sink == "file":
        lines.sink(FileSink(output), name="sink", uid="sink")
    elif sink == "postgres":
        lines.map(lambda line: (line,), name="row", uid="row").sink(
            PostgresSink(dsn, table, mode="insert"), name="sink", uid="sink"
        )
    elif sink == "redis":
        lines.map(lambda line: {"line": line}, name="entry", uid="entry").sink(
            RedisStreamSink(redis, stream), name="sink", uid="sink"
        )
    else:
        msg = f"sink must be 'file', 'postgres' or 'redis', got {sink!r}"
        raise ValueError(msg)
    return the_job
