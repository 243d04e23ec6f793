"""Landing folder to hourly Parquet: CSV files keep arriving, hourly aggregates per sensor come out by day.

Run it with ``onceflow run jobs/landing_hourly.py --checkpoint-dir .onceflow/landing``
and drop CSV files (``.csv``, ``.csv.gz``, ``.csv.zst``) with a header line
``ts,sensor,value`` into ``data/landing`` (write them under a hidden name,
``.name`` or ``_name``, and rename them in when complete). The job keeps
watching the folder until Ctrl-C or SIGTERM, which takes a last checkpoint and
commits; rerunning the same command resumes, and every file is read once.
Generate sample files with ``python jobs/landing_hourly.py --make 6`` (hours 0-5;
``--make 2 6`` adds hours 6-7).

Pipeline: read the landing folder (a row that is not CSV with the header's
columns is a dead letter) → validate (``ts`` an ISO-8601 time with a time
zone, ``sensor`` not empty, ``value`` a finite number; else a dead letter) →
event time from ``ts`` → per sensor, hourly tumbling windows (count, sum,
min, max) → Parquet in ``out/hourly/day=YYYY-MM-DD/``. Query it with DuckDB::

    select * from read_parquet('out/hourly/**/*.parquet', hive_partitioning=true)

Dead letters (one JSON object per line, naming the operator, the file and the
line) go to ``out/landing-dead-letters``.
"""

from __future__ import annotations

import math
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onceflow import FileSink, FileSource, Job, TumblingEventTimeWindows

HOUR = 3600.0


def validate(row: dict[str, str]) -> tuple[float, str, float]:
    """Turn a row ``{"ts": "2026-03-02T08:15:03Z", "sensor": "s01", "value": "21.5"}`` into a reading.

    Returns ``(epoch seconds, sensor, value)``; raises ``ValueError`` for a bad row (a dead letter).
    """
    ts = datetime.fromisoformat(row["ts"])
    if ts.tzinfo is None:
        msg = f"ts {row['ts']!r} has no time zone; write e.g. 2026-03-02T08:15:03Z"
        raise ValueError(msg)
    sensor = row["sensor"].strip()
    if not sensor:
        msg = "sensor is empty"
        raise ValueError(msg)
    value = float(row["value"])
    if not math.isfinite(value):
        msg = f"value {row['value']!r} is not a finite number"
        raise ValueError(msg)
    return ts.timestamp(), sensor, value


Acc = tuple[int, float, float, float]
"""count, sum, min, max of an hour's readings."""


def init() -> Acc:
    return 0, 0.0, math.inf, -math.inf


def add(acc: Acc, reading: tuple[float, str, float]) -> Acc:
    count, total, low, high = acc
    value = reading[2]
    return count + 1, total + value, min(low, value), max(high, value)


def merge(a: Acc, b: Acc) -> Acc:
    return a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])


def row(window_result: tuple[str, Any, Acc]) -> dict[str, Any]:
    """``(sensor, window, acc)`` -> the output row; ``day`` becomes the partition folder."""
    sensor, window, (count, total, low, high) = window_result
    start = datetime.fromtimestamp(window.start, tz=UTC)
    return {
        "day": start.date().isoformat(),
        "hour": start.isoformat().replace("+00:00", "Z"),
        "sensor": sensor,
        "readings": count,
        "total": round(total, 6),
        "mean": round(total / count, 6),
        "min": low,
        "max": high,
    }


def build(
    landing: str = "data/landing",
    output: str = "out/hourly",
    dead_letters: str = "out/landing-dead-letters",
    watch: str = "1",
    poll_interval: str = "1.0",
    max_delay: str = "600",
    idle_timeout: str = "30",
) -> Job:
    job = Job("landing-hourly")
    source = FileSource(landing, format="csv", watch=watch == "1", poll_interval=float(poll_interval))
    (
        job.source(source, name="read", uid="read", on_error="dead_letter")
        .map(validate, name="validate", on_error="dead_letter")
        .assign_timestamps(
            lambda reading: reading[0],
            max_delay=float(max_delay),
            idle_timeout=float(idle_timeout),
            name="timestamps",
            uid="timestamps",
        )
        .key_by(lambda reading: reading[1])
        .window(TumblingEventTimeWindows(HOUR))
        .aggregate(add, merge, lambda acc: acc, init, name="hourly", uid="hourly")
        .map(row, name="to-row")
        .sink(FileSink(output, format="parquet", partition_by=["day"]), name="write", uid="write")
    )
    job.dead_letters(FileSink(dead_letters), name="dead-letters", uid="dead-letters")
    return job


def make_files(directory: Path, n_files: int, first: int = 0) -> None:
    """Write CSV files ``first..first+n_files-1`` of readings: file ``f`` is hour ``f`` from 2026-03-02.

    2,000 readings of 12 sensors each, two bad rows each; the same ``f`` always
    gives the same file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(first, first + n_files):
        rng = random.Random(f)
        lines = ["ts,sensor,value"]
        for _ in range(2000):
            t = datetime(2026, 3, 2, tzinfo=UTC).timestamp() + f * HOUR + rng.uniform(0, HOUR)
            ts = datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")
            lines.append(f"{ts},s{rng.randrange(12):02d},{rng.gauss(20, 5):.2f}")
        lines[rng.randrange(1, len(lines))] = "2026-03-02T25:00:00Z,s01,1.0"  # no such hour
        lines[rng.randrange(1, len(lines))] = "2026-03-02T10:00:00Z,s02"  # a field short
        hidden = directory / f".readings-{f:03d}.csv.tmp"
        hidden.write_text("\n".join(lines) + "\n")
        hidden.rename(directory / f"readings-{f:03d}.csv")


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--make":
        make_files(Path("data/landing"), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 0)
    else:
        sys.exit("usage: python jobs/landing_hourly.py --make N_FILES [FIRST]  (data/landing/readings-*.csv)")
