"""Running count per key over ``key,value`` lines, for the S3 chaos test.

Input, checkpoints and output may all be ``s3://`` URLs. Each output line is
``key,count`` with the running count, so a key's committed lines must be
exactly ``1..n`` for some n at every moment.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job
from tests.support.spin import spin


def build(input: str, output: str, delay_us: str = "0") -> Job:
    delay = int(delay_us) / 1e6

    def parse(line: str) -> tuple[str, int]:
        spin(delay)
        return (line.split(",", 1)[0], 1)

    job = Job("s3_counts")
    (
        job.source(FileSource(input, read_size=16384), name="read", uid="read")
        .map(parse, name="parse")
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
        .sink(FileSink(output), name="write", uid="write")
    )
    return job
