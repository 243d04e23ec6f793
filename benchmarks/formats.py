"""File formats: onceflow jobs against plain pyarrow scripts doing the same work, in the same process.

Two cases, each run interleaved (pyarrow, onceflow, pyarrow, onceflow, ...) so
both see the same machine load; the figure is the ratio of the medians:

* ``csv_hourly_parquet``: CSV files of ``ts,sensor,value`` readings ->
  per sensor and event-time hour: count, sum, min, max -> Parquet partitioned
  by day. onceflow: ``FileSource(format="csv")``, ``assign_timestamps``,
  ``key_by``, ``TumblingEventTimeWindows(3600).aggregate``,
  ``FileSink(format="parquet", partition_by=["day"])`` with checkpoints every
  second. pyarrow: ``pyarrow.csv.read_csv``, ``Table.group_by().aggregate``,
  ``pyarrow.parquet.write_to_dataset``. Both outputs are checked equal.
* ``parquet_map_batches``: Parquet (1 Mi-row groups) -> ``x * 1.5 + id``
  and a filter on it -> Parquet. onceflow: ``FileSource(format="parquet")``,
  ``map_batches(arrow=True)`` with ``pyarrow.compute``, ``FileSink(format="parquet")``
  with ``--batch-size 65536``. pyarrow: ``ParquetFile.read_row_group``, the
  same function per 65,536-row batch, one ``ParquetWriter.write_table`` per
  group (``iter_batches`` plus a write per batch is slower, so it would flatter
  onceflow). Rows out are checked equal.

Run: ``python benchmarks/formats.py [--rows 1000000] [--rounds 3] [--out benchmarks/results/formats.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onceflow import (  # noqa: E402
    CoordinatorSettings,
    ExecutionSettings,
    FileSink,
    FileSource,
    Job,
    JobRunner,
    TumblingEventTimeWindows,
)

HOUR = 3600


# --------------------------------------------------------------------------- inputs


def write_csv_input(directory: Path, rows: int, n_files: int = 4) -> None:
    """``rows`` readings over 2 days, 100 sensors; file ``f`` holds the ``f``-th stretch of time, in order."""
    rng = random.Random(1)
    directory.mkdir(parents=True)
    start = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    per_file = rows // n_files
    for f in range(n_files):
        lines = ["ts,sensor,value"]
        for i in range(f * per_file, (f + 1) * per_file):
            ts = start + (i * 2 * 86400) // rows
            lines.append(f"{ts},s{rng.randrange(100):02d},{rng.uniform(0, 40):.3f}")
        (directory / f"readings-{f}.csv").write_text("\n".join(lines) + "\n")


def write_parquet_input(path: Path, rows: int) -> None:
    ids = pa.array(range(rows), pa.int64())
    xs = pc.multiply(pc.cast(pc.remainder(ids, 1000), pa.float64()), 0.37)
    pq.write_table(
        pa.table({"id": ids, "x": xs, "tag": pc.cast(pc.remainder(ids, 7), pa.string())}),
        path,
        row_group_size=1 << 20,
    )


# --------------------------------------------------------------------------- case 1


def _reading(row: dict[str, str]) -> tuple[int, str, float]:
    return int(row["ts"]), row["sensor"], float(row["value"])


def _init() -> tuple[int, float, float, float]:
    return 0, 0.0, math.inf, -math.inf


def _add(acc: tuple[int, float, float, float], r: tuple[int, str, float]) -> tuple[int, float, float, float]:
    v = r[2]
    return acc[0] + 1, acc[1] + v, min(acc[2], v), max(acc[3], v)


def _merge(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])


def _row(result: tuple[str, Any, tuple[int, float, float, float]]) -> dict[str, Any]:
    sensor, window, (count, total, low, high) = result
    hour = int(window.start)
    return {
        "day": datetime.fromtimestamp(hour, tz=UTC).date().isoformat(),
        "hour": hour,
        "sensor": sensor,
        "count": count,
        "sum": total,
        "min": low,
        "max": high,
    }


def onceflow_csv_hourly(src: Path, out: Path, tmp: Path, parallelism: int) -> None:
    job = Job("bench-csv-hourly")
    (
        job.source(FileSource(str(src), format="csv"), name="read", uid="read")
        .map(_reading, name="parse")
        .assign_timestamps(lambda r: r[0], max_delay=60.0, name="timestamps", uid="timestamps")
        .key_by(lambda r: r[1])
        .window(TumblingEventTimeWindows(float(HOUR)))
        .aggregate(_add, _merge, lambda acc: acc, _init, name="hourly", uid="hourly")
        .map(_row, name="to-row")
        .sink(FileSink(str(out), format="parquet", partition_by=["day"]), name="write", uid="write")
    )
    _run(job, tmp, parallelism, batch_size=1024)


def pyarrow_csv_hourly(src: Path, out: Path) -> None:
    table = pa.concat_tables(pacsv.read_csv(p) for p in sorted(src.glob("*.csv")))
    hour = pc.subtract(table["ts"], pc.remainder(table["ts"], HOUR))
    table = table.append_column("hour", hour)
    grouped = table.group_by(["sensor", "hour"]).aggregate(
        [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")]
    )
    days = pc.strftime(
        pc.cast(pc.multiply(grouped["hour"], 1_000_000), pa.timestamp("us", tz="UTC")), "%Y-%m-%d"
    )
    grouped = grouped.append_column("day", days)
    pq.write_to_dataset(grouped, out, partition_cols=["day"])


def check_csv_hourly(a: Path, b: Path) -> int:
    def load(path: Path) -> dict[tuple, tuple]:
        t = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        names = {"value_count": "count", "value_sum": "sum", "value_min": "min", "value_max": "max"}
        t = t.rename_columns([names.get(n, n) for n in t.column_names])
        return {
            (r["sensor"], int(r["hour"])): (r["count"], round(r["sum"], 3), r["min"], r["max"])
            for r in t.to_pylist()
        }

    left, right = load(a), load(b)
    if left != right:
        diff = sorted(set(left.items()) ^ set(right.items()))[:3]
        msg = f"onceflow and pyarrow outputs differ ({len(left)} vs {len(right)} groups), e.g. {diff}"
        raise AssertionError(msg)
    return len(left)


# --------------------------------------------------------------------------- case 2


def transform(batch: pa.RecordBatch) -> pa.RecordBatch:
    y = pc.add(pc.multiply(batch.column("x"), 1.5), pc.cast(batch.column("id"), pa.float64()))
    keep = pc.greater(pc.remainder(y, 10.0), 2.5)
    return pa.RecordBatch.from_arrays([batch.column("id"), y], names=["id", "y"]).filter(keep)


def onceflow_map_batches(src: Path, out: Path, tmp: Path, parallelism: int) -> None:
    job = Job("bench-parquet-map-batches")
    (
        job.source(FileSource(str(src), format="parquet"), name="read", uid="read")
        .map_batches(transform, arrow=True, name="compute")
        .sink(FileSink(str(out), format="parquet", row_group_size=1 << 20), name="write", uid="write")
    )
    _run(job, tmp, parallelism, batch_size=65536)


def pyarrow_map_batches(src: Path, out: Path) -> None:
    """Read by row group, apply ``transform`` per 65,536-row batch, write one row group per input group."""
    out.mkdir(parents=True)
    parquet = pq.ParquetFile(src)
    writer = None
    for index in range(parquet.num_row_groups):
        group = parquet.read_row_group(index)
        result = pa.Table.from_batches([transform(b) for b in group.to_batches(max_chunksize=65536)])
        if writer is None:
            writer = pq.ParquetWriter(out / "part-0.parquet", result.schema)
        writer.write_table(result, row_group_size=1 << 20)
    if writer is not None:
        writer.close()


def check_map_batches(a: Path, b: Path) -> int:
    left = ds.dataset(a, format="parquet").to_table()
    right = ds.dataset(b, format="parquet").to_table()
    same_ids = pc.sum(left["id"]).as_py() == pc.sum(right["id"]).as_py()
    same_y = math.isclose(pc.sum(left["y"]).as_py(), pc.sum(right["y"]).as_py(), rel_tol=1e-9)
    if left.num_rows != right.num_rows or not same_ids or not same_y:
        msg = f"rows out differ: onceflow {left.num_rows}, pyarrow {right.num_rows}"
        raise AssertionError(msg)
    return left.num_rows


# --------------------------------------------------------------------------- driver


def _run(job: Job, tmp: Path, parallelism: int, batch_size: int) -> None:
    runner = JobRunner(
        job,
        checkpoint_dir=tempfile.mkdtemp(prefix="chk-", dir=tmp),
        parallelism=parallelism,
        settings=ExecutionSettings(
            batch_size=batch_size, checkpoint=CoordinatorSettings(interval=1.0, timeout=120.0)
        ),
    )
    runner.run()


def timed(fn: Callable[[Path], None], out: Path) -> float:
    start = time.perf_counter()
    fn(out)
    return time.perf_counter() - start


def bench_case(
    name: str,
    rounds: int,
    tmp: Path,
    baseline: Callable[[Path], None],
    ours: Callable[[Path], None],
    check: Callable[[Path, Path], int],
    unit_rows: int,
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"pyarrow": [], "onceflow": []}
    checked = 0
    for i in range(rounds):
        outs = {v: tmp / f"{name}-{v}-{i}" for v in times}
        times["pyarrow"].append(timed(baseline, outs["pyarrow"]))
        times["onceflow"].append(timed(ours, outs["onceflow"]))
        checked = check(outs["onceflow"], outs["pyarrow"])
        for path in outs.values():
            shutil.rmtree(path)
    base, mine = statistics.median(times["pyarrow"]), statistics.median(times["onceflow"])
    return {
        "rows_in": unit_rows,
        "rows_or_groups_out": checked,
        "pyarrow_s": [round(t, 3) for t in times["pyarrow"]],
        "onceflow_s": [round(t, 3) for t in times["onceflow"]],
        "median_pyarrow_s": round(base, 3),
        "median_onceflow_s": round(mine, 3),
        "onceflow_rows_per_s": round(unit_rows / mine),
        "pyarrow_rows_per_s": round(unit_rows / base),
        "throughput_ratio_onceflow_vs_pyarrow": round(base / mine, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows (Parquet: 5x as many)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onceflow-bench-formats-") as tmp_name:
        tmp = Path(tmp_name)
        csv_src, pq_src = tmp / "csv", tmp / "in.parquet"
        write_csv_input(csv_src, args.rows)
        write_parquet_input(pq_src, args.rows * 5)
        p = args.parallelism
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"pyarrow {pa.__version__}",
            "parallelism": p,
            "rounds": args.rounds,
            "csv_hourly_parquet": bench_case(
                "csv",
                args.rounds,
                tmp,
                lambda out: pyarrow_csv_hourly(csv_src, out),
                lambda out: onceflow_csv_hourly(csv_src, out, tmp, p),
                check_csv_hourly,
                args.rows,
            ),
            "parquet_map_batches": bench_case(
                "pq",
                args.rounds,
                tmp,
                lambda out: pyarrow_map_batches(pq_src, out),
                lambda out: onceflow_map_batches(pq_src, out, tmp, p),
                check_map_batches,
                args.rows * 5,
            ),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
