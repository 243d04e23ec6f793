"""A job whose sink side is slower than its source: backpressure must bound memory."""

from __future__ import annotations

import time

from onceflow import FileSink, FileSource, Job


def build(input: str, output: str, sleep_ms: str = "0.5") -> Job:
    pause = float(sleep_ms) / 1000.0

    def slow(batch: list) -> list:
        time.sleep(pause)
        return batch

    job = Job("slow-sink")
    (
        job.source(FileSource(input), name="read", uid="read")
        .map(lambda line: line.upper(), name="upper")
        .rebalance()
        .map_batches(slow, name="slow")
        .sink(FileSink(output), name="write", uid="write")
    )
    return job
