"""Run metrics: ``/metrics`` scraped during a real ``onceflow run``; JSON lines; one home for the figures.

The scrape test starts the CLI in a subprocess with ``--metrics-port`` and
reads the endpoint over HTTP while the job runs: the records counters must
grow between two scrapes and the checkpoint duration histogram must have
observations. Under the process executor the figures come from the worker
processes, which report them to the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from onceflow import Job, JobRunner
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.metrics import MetricsReporter, chain_ticks, read_metrics
from onceflow.engine.progress import ProgressDisplay
from onceflow.operators.testing import TestingSink, TestingSource
from tests.support.chaos import JOBS, REPO, free_port
from tests.support.oracles import write_input

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def scrape(port: int) -> dict[str, float]:
    """Return ``{"name{label=value,...}": value}`` of every sample on ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "job")
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@pytest.mark.parametrize(
    "executor", ["local", pytest.param("process", marks=pytest.mark.slow)], ids=["local", "process"]
)
def test_metrics_endpoint_is_scraped_during_a_run(executor: str, tmp_path: Path) -> None:
    write_input(tmp_path / "in", 20_000, 100, 4)
    port = free_port()
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [
        sys.executable,
        "-m",
        "onceflow",
        "run",
        str(JOBS / "chaos_job.py"),
        *("-p", f"input={tmp_path / 'in'}", "-p", f"output={tmp_path / 'out'}"),
        # workers report twice a second: a longer run, so several reports land between scrapes
        *("-p", f"delay_us={60 if executor == 'local' else 250}"),
        *("--checkpoint-dir", str(tmp_path / "chk"), "--checkpoint-interval", "0.1"),
        *("--parallelism", "2", "--executor", executor, "--progress", "off"),
        *("--metrics-port", str(port), "--metrics-interval", "0.1"),
    ]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    readings: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                readings.append(scrape(port))
            except OSError:
                pass  # not listening yet, or already shut down
            time.sleep(0.15)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    key = "onceflow_records_in_total{operator=read,uid=read}"
    counts = [r[key] for r in readings if key in r]
    growing = [b for a, b in zip(counts, counts[1:]) if b > a]
    assert len(growing) >= 2, f"records_in of the source did not grow between scrapes: {counts}"
    assert counts[-1] <= 20_000
    observed = max(r.get("onceflow_checkpoint_duration_seconds_count{}", 0.0) for r in readings)
    assert observed >= 1, "no checkpoint duration was observed during the run"
    assert any(k.startswith("onceflow_checkpoint_duration_seconds_bucket{le=") for k in readings[-1])
    lag = [r.get("onceflow_source_lag{operator=read,uid=read,unit=bytes}") for r in readings]
    assert any(v and v > 0 for v in lag), f"the file source's bytes left were never reported: {lag}"
    print(f"scrapes={len(readings)} source records_in over scrapes={counts} checkpoints observed={observed}")


def test_the_progress_display_and_the_metrics_file_show_the_same_exact_counts(tmp_path: Path) -> None:
    """One home for the figures: JSON lines, the progress frame and the exact records in/out agree."""
    job = Job("metrics-counts")
    (
        job.source(TestingSource(list(range(5_000)), batch_size=100), name="numbers", uid="numbers")
        .filter(lambda x: x % 5 != 0, name="drop-fifths", uid="drop-fifths")
        .flat_map(lambda x: [x, -x], name="twice", uid="twice")
        .sink(TestingSink(str(tmp_path / "sink")), name="sink", uid="sink")
    )
    path = tmp_path / "metrics.jsonl"
    reporter = MetricsReporter(file=str(path), interval=0.0)
    frames: list[list[str]] = []
    display = ProgressDisplay(stream=open(os.devnull, "w"), interactive=False, interval=0.0)  # noqa: SIM115

    def capture(executor, now: float) -> None:
        frames.append(display.render(executor, 1.0))
        assert [op.records_in for op in read_metrics(executor).operators] == [
            op["records_in"] for op in reporter.snapshot()["operators"]
        ]

    runner = JobRunner(
        job,
        checkpoint_dir=f"memory://metrics-{time.monotonic_ns()}",
        settings=ExecutionSettings(checkpoint=CoordinatorSettings(interval=0.02)),
        on_tick=chain_ticks(reporter, capture),
    )
    result = runner.run()
    reporter.close()
    display.close()
    last = json.loads(path.read_text().splitlines()[-1])
    figures = {op["uid"]: (op["records_in"], op["records_out"]) for op in last["operators"]}
    assert figures == {
        "numbers": (5_000, 5_000),
        "drop-fifths": (5_000, 4_000),
        "twice": (4_000, 8_000),
        "sink": (8_000, 0),
    }
    assert last["checkpoints_completed"] == result.checkpoints_completed
    assert last["histograms"]["checkpoint_duration_seconds"]["count"] == result.checkpoints_completed
    assert last["operators"][0]["source_lag"] is None  # TestingSource cannot tell
    assert any("numbers" in line and "5,000 in" in line for line in frames[-1]), frames[-1]


def test_watermark_lag_is_the_wall_clock_minus_the_event_time_watermark(tmp_path: Path) -> None:
    behind = 100.0
    start = time.time() - behind
    job = Job("metrics-watermarks")
    (
        job.source(
            TestingSource([start + i * 0.001 for i in range(3_000)], batch_size=100), name="ts", uid="ts"
        )
        .assign_timestamps(lambda t: t, name="stamp")
        .map(lambda t: t, name="same")
        .sink(TestingSink(str(tmp_path / "sink")), name="sink", uid="sink")
    )
    reporter = MetricsReporter(interval=0.0)
    lags: list[float] = []

    def capture(executor, now: float) -> None:
        reporter.publish(executor)
        lag = next(
            op["watermark_lag_seconds"] for op in reporter.snapshot()["operators"] if op["name"] == "same"
        )
        if lag is not None:
            lags.append(lag)

    JobRunner(job, checkpoint_dir=f"memory://wm-{time.monotonic_ns()}", on_tick=capture).run()
    reporter.close()
    assert lags, "no watermark lag was reported while event time advanced"
    assert all(behind - 5 < lag < behind + 30 for lag in lags), lags[:5]
