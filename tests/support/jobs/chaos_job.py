"""The chaos-test job: a keyed running count/sum (or a word count) over generated input.

Input lines are ``id,key,value`` (``key = f"user-{id % K}"``), written by the
chaos harness so that all records of one key live in one file, in id order.
Pipeline: parse (with an optional time-based spin per batch, so a run can be
killed mid-way), filter ``id % 7 != 3``, an optional failing UDF, ``key_by(key)``
and either

* ``mode="keyed"``: ``stateful_map`` keeping ``(count, sum)`` per key, emitting
  ``id,key,running_count,running_sum`` per record, or
* ``mode="wordcount"``: two words per record, a running ``reduce`` per word,
  emitting ``word,running_count``.

The output goes to ``FileSink(output)``, or with ``sink="delta"`` (keyed mode)
as dict rows ``{id, key, count, total}`` to ``DeltaSink(output)``, two subtasks.

Failure injection (``fail_at`` is a record id):

* ``fail_mode="once"`` (default): raise at record ``fail_at`` once: if
  ``fail_marker`` does not exist, create it and raise; later attempts pass.
* ``fail_mode="while"``: raise at record ``fail_at`` on every attempt for as long
  as ``fail_marker`` exists (a test deletes it to let a rerun with the very same
  parameters through; a checkpoint directory is tied to one set of parameters).
"""

from __future__ import annotations

import os

from onceflow import DeltaSink, FileSink, FileSource, Job
from tests.support.spin import csv_batch_parser


def _fields(f: list[str]) -> tuple[int, str, int]:
    return int(f[0]), f[1], int(f[2])


def _failer(fail_at: int, fail_marker: str, fail_mode: str):
    def check(record: tuple) -> tuple:
        if record[0] == fail_at:
            if fail_mode == "while":
                if os.path.exists(fail_marker):
                    raise RuntimeError(f"chaos: injected failure at record {fail_at} (while)")
            elif not os.path.exists(fail_marker):
                with open(fail_marker, "w") as handle:
                    handle.write("failed once\n")
                raise RuntimeError(f"chaos: injected failure at record {fail_at} (once)")
        return record

    return check


def _running(state, record):
    rid, key, value = record
    count, total = state if state is not None else (0, 0)
    count += 1
    total += value
    return (count, total), f"{rid},{key},{count},{total}"


def _as_row(line: str) -> dict:
    rid, key, count, total = line.split(",")
    return {"id": int(rid), "key": key, "count": int(count), "total": int(total)}


def build(
    input: str = "",
    output: str = "",
    mode: str = "keyed",
    delay_us: str = "0",
    fail_at: str = "-1",
    fail_marker: str = "",
    fail_mode: str = "once",
    sink: str = "file",
) -> Job:
    if mode not in ("keyed", "wordcount"):
        msg = f"mode must be 'keyed' or 'wordcount', got {mode!r}"
        raise ValueError(msg)
    if fail_mode not in ("once", "while") or (int(fail_at) >= 0 and not fail_marker):
        msg = "fail_mode must be 'once' or 'while', and fail_at needs a fail_marker path"
        raise ValueError(msg)
    job = Job(f"chaos-{mode}")
    stream = (
        job.source(FileSource(input), name="read", uid="read")
        .map_batches(csv_batch_parser(_fields, float(delay_us) / 1e6), name="parse", uid="parse")
        .filter(lambda r: r[0] % 7 != 3, name="drop-7-3", uid="drop-7-3")
    )
    if int(fail_at) >= 0:
        stream = stream.map(_failer(int(fail_at), fail_marker, fail_mode), name="explode", uid="explode")
    if mode == "keyed":
        lines = stream.key_by(lambda r: r[1]).stateful_map(_running, name="running", uid="running")
    else:
        lines = (
            stream.flat_map(lambda r: [(f"w{r[2] % 97}", 1), (f"v{r[0] % 13}", 1)], name="words")
            .key_by(lambda kv: kv[0])
            .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
            .map(lambda kv: f"{kv[0]},{kv[1]}", name="format", uid="format")
        )
    if sink == "delta":
        lines.map(_as_row, name="row").sink(DeltaSink(output), name="write", uid="write", parallelism=2)
    else:
        lines.sink(FileSink(output), name="write", uid="write")
    return job
