"""The joins chaos job: connect, interval_join and window_join over two event logs in files.

Input: ``input/left`` and ``input/right``, CSV lines ``id,key,ts,value`` in arrival
order (written by ``tests/chaos/test_joins_chaos.py``), each read by one reader
with an optional per-record spin (so a run can be killed mid-way). The graph is
``tests/support/joins_reference.py``'s; each output record is committed as one
line (fields joined by ``|``) through one ``FileSink``. With ``poison`` and
``dead_letters`` the connect and window-join functions raise for poisoned records
and windows (``JoinWorkload.poison``), whose dead letters go to a second ``FileSink``.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job
from tests.support.joins_reference import JoinWorkload, join_streams, output_line
from tests.support.spin import csv_batch_parser


def _fields(f: list[str]) -> tuple[int, int, float, int]:
    return int(f[0]), int(f[1]), float(f[2]), int(f[3])


def build(
    input: str = "",
    output: str = "",
    delay_us: str = "0",
    mode: str = "joins",
    poison: str = "0",
    dead_letters: str = "",
) -> Job:
    job = Job("chaos-joins")
    parse = csv_batch_parser(_fields, float(delay_us) / 1e6)
    if dead_letters:
        job.dead_letters(FileSink(dead_letters), name="dead", uid="dead")
    stream = join_streams(
        JoinWorkload(poison=int(poison)),
        job,
        FileSource(f"{input}/left", read_size=4096),
        FileSource(f"{input}/right", read_size=4096),
        parse,
    )
    stream.map(output_line, name="lines").sink(FileSink(output), name="write", uid="write")
    return job
