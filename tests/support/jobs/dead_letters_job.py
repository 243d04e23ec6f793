"""The dead-letters chaos job: parse with dead letters, a keyed running count with dead letters.

Input lines are ``id,key,value`` written by ``tests/chaos/test_dead_letters_chaos.py``;
some are malformed on purpose. Pipeline:

* ``parse`` (``on_error="dead_letter"``, chained to the reader, so a dead
  letter names the exact file and line): splits the line and converts the
  numbers, with an optional per-record spin so a run can be killed mid-way;
  a malformed line raises;
* ``key_by(key)`` and ``count`` (``stateful_map``, ``on_error="dead_letter"``):
  keeps ``count`` per key and emits ``id,key,running_count``, but raises for a
  record whose value is a multiple of ``poison`` (the record must then leave
  the key's count as it was, however the batch is split after a restore);
* main output and dead letters go to two ``FileSink`` directories.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job
from tests.support.spin import spin


def _parser(delay_s: float):
    def parse(line: str) -> tuple[int, str, int]:
        spin(delay_s)
        rid, key, value = line.split(",")
        return int(rid), key, int(value)

    return parse


def _counter(poison: int):
    def count(state, record):
        rid, key, value = record
        if value % poison == 0:
            msg = f"poisoned value {value}"
            raise ValueError(msg)
        n = (state or 0) + 1
        return n, f"{rid},{key},{n}"

    return count


def build(
    input: str = "",
    output: str = "",
    dead_letters: str = "",
    delay_us: str = "0",
    poison: str = "1009",
    mode: str = "",
) -> Job:
    job = Job("dead-letters-chaos")
    (
        job.source(FileSource(input), name="read", uid="read")
        .map(_parser(int(delay_us) / 1e6), name="parse", on_error="dead_letter")
        .key_by(lambda record: record[1])
        .stateful_map(_counter(int(poison)), name="count", uid="count", on_error="dead_letter")
        .sink(FileSink(output), name="write", uid="write")
    )
    job.dead_letters(FileSink(dead_letters), name="dead-letters", uid="dead-letters")
    return job
