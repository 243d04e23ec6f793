"""Topologies that stress alignment and backpressure: diamonds, fan-out, rescaled edges."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onceflow import Job, read_committed_lines
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Pause, TestingSink, TestingSource

ROOT = Path(__file__).resolve().parents[2]


def _slow(batch: list) -> list:
    time.sleep(0.0005)
    return batch


@pytest.mark.timeout(120)
@pytest.mark.parametrize("parallelism", [1, 2])
def test_diamond_with_capacity_one_channels_completes_exactly_once(parallelism, executor):
    n = 20_000
    items = []
    for i in range(n):
        if i and i % 2000 == 0:
            items.append(Pause(0.001))
        items.append(i)
    sink = TestingSink()
    job = Job("diamond")
    src = job.source(TestingSource(items, batch_size=64), name="src", uid="src")
    fast = src.map(lambda i: ("even", i) if i % 2 == 0 else ("odd", i), name="fast")
    slow = src.map_batches(_slow, name="slow").map(lambda i: ("all", i), name="tag")
    (
        fast.union(slow)
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="sum", uid="sum")
        .sink(sink, name="out", uid="out")
    )
    result = run_job_for_test(
        job,
        parallelism=parallelism,
        checkpoint_interval=0.005,
        batch_size=64,
        channel_capacity=1,
        executor=executor,
    )
    assert result.checkpoints_completed > 3
    finals: dict[str, int] = {}
    for key, value in sink.committed:
        finals[key] = max(finals.get(key, 0), value)
    evens = sum(range(0, n, 2))
    assert finals == {"even": evens, "odd": sum(range(n)) - evens, "all": sum(range(n))}
    assert collections.Counter(k for k, _ in sink.committed) == {"even": n // 2, "odd": n // 2, "all": n}


def test_fan_out_to_two_sinks_commits_both(executor):
    left, right = TestingSink(), TestingSink()
    job = Job("fanout")
    stream = job.source(TestingSource(list(range(5000)), batch_size=100), uid="src")
    stream.map(lambda i: i * 2, name="double").sink(left, name="left", uid="left")
    stream.filter(lambda i: i % 3 == 0, name="thirds").sink(right, name="right", uid="right")
    run_job_for_test(job, checkpoint_interval=0.001, executor=executor)
    assert sorted(left.committed) == [i * 2 for i in range(5000)]
    assert sorted(right.committed) == [i for i in range(5000) if i % 3 == 0]


def test_broadcast_and_rebalance_deliver_every_record(executor):
    broadcast, rebalanced = TestingSink(), TestingSink()
    job = Job("edges")
    stream = job.source(TestingSource(list(range(3000)), batch_size=50), uid="src")
    stream.broadcast().map(lambda i: i, name="b", parallelism=3).sink(broadcast, uid="bsink", parallelism=3)
    stream.rebalance().map(lambda i: i, name="r", parallelism=2).sink(rebalanced, uid="rsink", parallelism=2)
    run_job_for_test(job, checkpoint_interval=0.001, executor=executor)
    assert sorted(broadcast.committed) == sorted(list(range(3000)) * 3)
    assert sorted(rebalanced.committed) == list(range(3000))


@pytest.mark.timeout(300)
def _write_records(path: Path, n: int) -> None:
    with path.open("w") as f:
        chunk = "".join(f"record-{i:08d}\n" for i in range(100_000))
        for _ in range(n // 100_000):
            f.write(chunk)


def test_memory_stays_bounded_with_a_slow_sink(tmp_path):
    n = 5_000_000
    src = tmp_path / "in.txt"
    _write_records(src, n)
    out = tmp_path / "out"
    # VmHWM is the peak RSS of this process image only (a fork's copy of pytest's
    # memory before exec does not count, unlike RUSAGE_CHILDREN)
    runner = (
        "import sys; from onceflow.engine.cli import main; rc = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print('PEAK_KB', hwm.split()[1]); sys.exit(rc)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            runner,
            "run",
            str(ROOT / "tests/integration/jobs/slow_sink.py"),
            "-p",
            f"input={src}",
            "-p",
            f"output={out}",
            "-p",
            "sleep_ms=1",
            "--checkpoint-dir",
            str(tmp_path / "chk"),
            "--progress",
            "off",
            "--channel-capacity",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    print(f"peak RSS of the runner with {n:,} records and a slow sink: {peak_mb:.0f} MB")
    assert peak_mb < 300
    lines = read_committed_lines(str(out))
    assert len(lines) == n
    assert lines[0].startswith("RECORD-")


@pytest.mark.timeout(300)
def test_memory_stays_bounded_with_a_slow_sink_in_worker_processes(tmp_path):
    """The process executor: runner plus workers, summed as PSS (forked pages shared once)."""
    psutil = pytest.importorskip("psutil")
    n = 5_000_000
    src = tmp_path / "in.txt"
    _write_records(src, n)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onceflow",
            "run",
            str(ROOT / "tests/integration/jobs/slow_sink.py"),
            "-p",
            f"input={src}",
            "-p",
            f"output={out}",
            "-p",
            "sleep_ms=1",
            "--checkpoint-dir",
            str(tmp_path / "chk"),
            "--progress",
            "off",
            "--channel-capacity",
            "4",
            "--executor",
            "process",
            "--parallelism",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runner = psutil.Process(proc.pid)
    peak = 0
    deadline = time.monotonic() + 280
    while proc.poll() is None and time.monotonic() < deadline:
        total = 0
        try:
            for p in [runner, *runner.children(recursive=True)]:
                total += p.memory_full_info().pss
        except psutil.Error:
            pass  # a process ended between listing and reading
        peak = max(peak, total)
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    peak_mb = peak / 2**20
    print(f"peak PSS of runner + 2 workers with {n:,} records and a slow sink: {peak_mb:.0f} MB")
    assert 0 < peak_mb < 300
    assert len(read_committed_lines(str(out))) == n
