"""What ``--metrics-port`` costs: the keyed word count with metrics off and on, in the same process.

"On" is what ``onceflow run --metrics-port P --metrics-file F`` installs: a
:class:`~onceflow.engine.metrics.MetricsReporter` reading the figures every
second, serving ``/metrics`` and appending JSON lines, plus a scraper thread
fetching ``/metrics`` every 0.2 s (five times a usual Prometheus rate, so the
HTTP side is not left out). Runs are interleaved (off, on, off, on, ...) so
both see the same machine load; the figure is the ratio of the medians.

Run: ``python benchmarks/metrics_overhead.py [--records 2000000] [--rounds 5] [--executor local]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CountingSink, SliceSource, add, key_of, make_words, to_pair  # noqa: E402
from onceflow import CoordinatorSettings, ExecutionSettings, Job, JobRunner  # noqa: E402
from onceflow.engine.metrics import MetricsReporter  # noqa: E402


def _job(words: list[str], sink: CountingSink) -> Job:
    job = Job("bench-metrics")
    (
        job.source(SliceSource(words, partitions=2), name="words", uid="words")
        .map(to_pair, name="pair")
        .key_by(key_of)
        .reduce(add, name="count", uid="count")
        .sink(sink, name="count-sink", uid="count-sink")
    )
    return job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape_until(port: int, every: float, stop: threading.Event, scrapes: list[int]) -> None:
    while not stop.wait(every):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                response.read()
            scrapes[0] += 1
        except OSError:
            pass


def run_once(
    words: list[str], metrics: bool, executor: str, tmp: str, scrape_every: float = 0.2
) -> tuple[float, int]:
    """Run the job once; return (seconds, scrapes served)."""
    sink = CountingSink()
    reporter = None
    stop = threading.Event()
    scrapes = [0]
    scraper = None
    if metrics:
        port = _free_port()
        reporter = MetricsReporter(port=port, file=tempfile.mktemp(dir=tmp, suffix=".jsonl"), interval=1.0)
        if scrape_every > 0:
            scraper = threading.Thread(
                target=_scrape_until, args=(port, scrape_every, stop, scrapes), daemon=True
            )
            scraper.start()
    runner = JobRunner(
        _job(words, sink),
        checkpoint_dir=tempfile.mkdtemp(prefix="chk-", dir=tmp),
        parallelism=2,
        settings=ExecutionSettings(checkpoint=CoordinatorSettings(interval=1.0, timeout=120.0)),
        on_tick=reporter,
        executor=executor,
    )
    start = time.perf_counter()
    result = runner.run()
    seconds = time.perf_counter() - start
    stop.set()
    if scraper is not None:
        scraper.join(timeout=5)
    if reporter is not None:
        reporter.close()
    # Under the process executor the sink counts in the workers: check what the runner read.
    done = sink.committed if executor == "local" else result.records_read
    if done != len(words):
        msg = f"expected {len(words)} records, got {done}"
        raise AssertionError(msg)
    return seconds, scrapes[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--executor", choices=["local", "process"], default="local")
    parser.add_argument("--scrape-every", type=float, default=0.2, help="seconds; 0: serve but never scrape")
    args = parser.parse_args()
    words = make_words(args.records)
    times: dict[str, list[float]] = {"off": [], "on": []}
    scrapes = 0
    with tempfile.TemporaryDirectory() as tmp:
        run_once(words[: args.records // 10], False, args.executor, tmp)  # warm up imports and caches
        for _ in range(args.rounds):
            for variant in ("off", "on"):
                seconds, served = run_once(words, variant == "on", args.executor, tmp, args.scrape_every)
                times[variant].append(seconds)
                scrapes += served
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    report = {
        "records": args.records,
        "executor": args.executor,
        "scrape_every_s": args.scrape_every,
        "rounds": args.rounds,
        "off_s": [round(t, 3) for t in times["off"]],
        "on_s": [round(t, 3) for t in times["on"]],
        "median_off_s": round(off, 3),
        "median_on_s": round(on, 3),
        "throughput_ratio_on_vs_off": round(off / on, 3),
        "scrapes_served": scrapes,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
