"""The benchmark suite runs end to end in --quick mode (tiny inputs, one run each).

No timing is asserted: benchmarks measure, tests only check that the suite
produces its files and that every case either measured or said why not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_suite_writes_parseable_results(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python"]
    names = {case["name"] for case in report["cases"]}
    assert {
        "keyed_count",
        "stateless",
        "scaling",
        "map_batches",
        "checkpoint_state",
        "backpressure",
        "timeline",
        "profile",
    } <= names
    for case in report["cases"]:
        for variant, row in case["variants"].items():
            # Measured, or skipped with a reason (an optional peer or executor missing).
            assert "median_s" in row or "skipped" in row, (case["name"], variant, row)
    keyed = next(c for c in report["cases"] if c["name"] == "keyed_count")["variants"]
    assert keyed["loop"]["ratio"] == 1.0
    assert keyed["engine_ckpt_1s"]["peak_rss_mb"] > 0
    assert len(report["targets"]) >= 8

    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "## Targets" in markdown and "## Throughput" in markdown
    assert (tmp_path / "profile_keyed_count.txt").is_file()
    assert ("plot" in report and (tmp_path / "throughput.png").is_file()) or "plot_note" in report


def test_formats_benchmark_runs_and_checks_both_outputs(tmp_path: Path) -> None:
    out = tmp_path / "formats.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/formats.py", "--rows", "4000", "--rounds", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["csv_hourly_parquet"]["rows_or_groups_out"] > 0
    assert report["parquet_map_batches"]["rows_or_groups_out"] > 0
    assert report["parquet_map_batches"]["throughput_ratio_onceflow_vs_pyarrow"] > 0


@pytest.mark.slow
def test_nexmark_benchmark_runs_and_checks_every_variant_against_the_loop(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.nexmark.bench", "--n", "20000", "--reps", "1"]
        + ["--only", "q0", "q5", "q7", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {(r["query"], r["variant"]) for r in report["table"]} >= {
        ("q0", "p1"),
        ("q5", "p1"),
        ("q7", "proc-p2"),
    }
    assert "| target |" in (tmp_path / "results.md").read_text(encoding="utf-8")
