"""``jobs/landing_hourly.py``: hourly Parquet by day, read by DuckDB, equals a plain-Python reference."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from onceflow.engine.testing import run_job_for_test
from onceflow.operators.files import read_committed_lines

REPO = Path(__file__).resolve().parents[2]


def load_job():
    spec = importlib.util.spec_from_file_location("landing_hourly", REPO / "jobs" / "landing_hourly.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(landing: Path) -> tuple[dict[tuple[str, str], tuple], int]:
    """Per (hour, sensor): (count, total, min, max) over the valid rows; and how many rows are bad."""
    acc: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0.0, math.inf, -math.inf])
    bad = 0
    for path in sorted(landing.glob("*.csv")):
        for row in csv.reader(path.read_text().splitlines()[1:]):
            try:
                ts = datetime.fromisoformat(row[0])
                value = float(row[2])
            except (ValueError, IndexError):
                bad += 1
                continue
            hour = ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            a = acc[hour.isoformat().replace("+00:00", "Z"), row[1]]
            a[0] += 1
            a[1] += value
            a[2] = min(a[2], value)
            a[3] = max(a[3], value)
    return {k: (c, round(t, 6), lo, hi) for k, (c, t, lo, hi) in acc.items()}, bad


def test_landing_hourly_writes_day_partitions_duckdb_reads_them(tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    job_module = load_job()
    landing = tmp_path / "landing"
    job_module.make_files(landing, 3)
    out, dead = tmp_path / "hourly", tmp_path / "dead"
    job = job_module.build(landing=str(landing), output=str(out), dead_letters=str(dead), watch="0")
    run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), parallelism=2)
    want, n_bad = reference(landing)
    rows = duckdb.sql(
        f"select hour, sensor, readings, total, min, max, day from read_parquet('{out}/**/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()
    got = {(h, s): (c, t, lo, hi) for h, s, c, t, lo, hi, _ in rows}
    assert len(rows) == len(got) == len(want)
    assert {k: (v[0], v[2], v[3]) for k, v in got.items()} == {k: (v[0], v[2], v[3]) for k, v in want.items()}
    assert all(abs(got[k][1] - want[k][1]) < 1e-6 for k in want)
    assert {str(d) for *_, d in rows} == {"2026-03-02"}
    letters = [json.loads(line) for line in read_committed_lines(str(dead))]
    assert len(letters) == n_bad == 6
    assert {x["operator"] for x in letters} == {"read", "validate"}
    assert all(x["source"]["file"].endswith(".csv") and x["source"]["line"] > 1 for x in letters)
