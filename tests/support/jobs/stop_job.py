"""The graceful-stop job: a keyed running count/sum, slow downstream of the source, into a file or a table.

Input lines are ``id,key,value`` (:func:`tests.support.oracles.write_input`);
the pipeline is the chaos job's keyed mode (parse, drop ``id % 7 == 3``, a
running ``(count, sum)`` per key emitting ``id,key,running_count,running_sum``,
:func:`tests.support.oracles.expected` with ``mode="keyed"``). The busy pause
of ``delay_us`` per record sits in the keyed task, after a repartitioning
edge, so the source reads ahead and the channels hold queued batches: a stop's
barrier has to wait behind them. With ``slow_marker`` the running totals are
kept as :class:`_SlowTotals`, whose pickling pauses while that file exists, so
once a test creates it every checkpoint (the stop checkpoint too) takes about a
second: time to send a second signal while the stop is under way.

Input comes from the files in ``input``, or (``source=redis``) from the
entries ``{"line": ...}`` of an unbounded Redis ``stream``. Output goes to the
FileSink directory ``output`` (``sink=file``, uid ``write``) or one row
``(line)`` per line into ``table`` (``sink=postgres``, uid ``pg``).
"""

from __future__ import annotations

import os
import time

from onceflow import FileSink, FileSource, Job, PostgresSink, RedisStreamSource
from tests.support.spin import spin


def _parse(line: str) -> tuple[int, str, int]:
    rid, key, value = line.split(",")
    return int(rid), key, int(value)


class _SlowTotals(tuple):
    """A running ``(count, total)`` whose pickling (at every checkpoint) pauses while ``marker`` exists."""

    marker = ""

    def __reduce__(self):
        if self.marker and os.path.exists(self.marker):
            time.sleep(0.05)
        return (_SlowTotals, (tuple(self),))


def _running(delay_s: float, slow: bool):
    def running(state, record):
        spin(delay_s)
        rid, key, value = record
        count, total = state if state is not None else (0, 0)
        count += 1
        total += value
        return (_SlowTotals((count, total)) if slow else (count, total)), f"{rid},{key},{count},{total}"

    return running


def build(
    job: str = "graceful-stop",
    source: str = "file",
    input: str = "",
    redis: str = "",
    stream: str = "",
    sink: str = "file",
    output: str = "",
    dsn: str = "",
    table: str = "",
    delay_us: str = "0",
    slow_marker: str = "",
) -> Job:
    _SlowTotals.marker = slow_marker
    the_job = Job(job)
    if source == "redis":
        lines = the_job.source(
            RedisStreamSource(redis, [stream], bounded=False), name="read", uid="read"
        ).map(lambda entry: entry[2]["line"], name="field", uid="field")
    else:
        lines = the_job.source(FileSource(input), name="read", uid="read")
    out = (
        lines.map(_parse, name="parse", uid="parse")
        .filter(lambda r: r[0] % 7 != 3, name="drop-7-3", uid="drop-7-3")
        .key_by(lambda r: r[1])
        .stateful_map(_running(int(delay_us) / 1e6, bool(slow_marker)), name="running", uid="running")
    )
    if sink == "postgres":
        out.map(lambda line: (line,), name="row", uid="row").sink(
            PostgresSink(dsn, table), name="pg", uid="pg"
        )
    else:
        out.sink(FileSink(output), name="write", uid="write")
    return the_job
