"""The disk state backend against the heap backend on the same keyed job, and its peak memory.

Job: ``RangeSource(records)`` -> ``map`` to a key ``user-<n>`` spread over
``keys`` distinct keys (a multiplicative permutation, so consecutive records
hit far-apart keys in every key group) -> ``key_by`` -> ``stateful_map``
keeping a count per key and emitting ``(key, running count)`` -> a counting
sink. With 2 records per key every key is read back once after it was
written, mostly from the database rather than the cache.

Each run is a fresh child process (so its peak RSS is its own), heap and disk
interleaved (the ``--modes`` in turn, round after round) so all see the same machine load;
the figures are the medians and the ratio of the median throughputs.
Checkpoints are on (``--interval``), and a bounded job ends with a final one,
so the time includes writing every key to a state file at least once.

Run: ``python benchmarks/disk_backend.py [--workload skewed|uniform] [--keys 10000000]
[--records 30000000] [--rounds 1] [--modes heap,disk+inc] [--out FILE]``; writes
``benchmarks/results/disk_backend-<workload>.json`` (and prints a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cases import TimelineSampler  # noqa: E402
from benchmarks.common import CountingSink, RangeSource  # noqa: E402
from onceflow import CoordinatorSettings, ExecutionSettings, Job, JobRunner, StateBackendConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MULTIPLIER = 2_654_435_761
"""Knuth's multiplicative hash constant: ``i * M % keys`` visits the keys in a scattered order."""


def _identity(key: str) -> str:
    return key


def _count(state: int | None, key: str) -> tuple[int, tuple[str, int]]:
    n = 1 if state is None else state + 1
    return n, (key, n)


def key_function(workload: str, keys: int):
    """Record number -> key. ``uniform``: ``i * M % keys``, every key equally often.

    ``skewed``: the first ``keys`` records create every key once, the later
    ones draw a key rank from a Zipf-like law (``P(rank <= r) = ln r / ln keys``,
    so the 1% most popular keys get about 70% of the updates), scattered over
    the key groups by the same permutation.
    """
    if workload == "uniform":

        def uniform(i: int) -> str:
            return f"user-{i * MULTIPLIER % keys}"

        return uniform

    def skewed(i: int) -> str:
        if i < keys:
            return f"user-{i * MULTIPLIER % keys}"
        u = (i * 2_246_822_519 & 0xFFFFFFFF) / 2**32
        rank = int(keys**u) - 1
        return f"user-{rank * MULTIPLIER % keys}"

    return skewed


def _job(records: int, keys: int, workload: str, sink: CountingSink) -> Job:
    key_of = key_function(workload, keys)

    job = Job("bench-disk-backend")
    (
        job.source(RangeSource(records), name="range", uid="range")
        .map(key_of, name="key")
        .key_by(_identity)
        .stateful_map(_count, name="count", uid="count")
        .sink(sink, name="sink", uid="sink")
    )
    return job


class _RssSampler(TimelineSampler):
    """Records read every half second (throughput over time), the checkpoints' spans, and the RSS then."""

    def __init__(self) -> None:
        super().__init__(every=0.5)
        self.rss_mib: list[int] = []

    def __call__(self, executor: object, now: float) -> None:
        before = len(self.samples)
        super().__call__(executor, now)
        if len(self.samples) > before:
            with open("/proc/self/statm", "rb") as statm:
                pages = int(statm.read().split()[1])
            self.rss_mib.append(pages * os.sysconf("SC_PAGE_SIZE") >> 20)


MODES = ("heap", "heap+inc", "disk", "disk+inc")
"""A backend, with ``+inc`` under incremental checkpoints (``--incremental-checkpoints``)."""


def child(mode: str, records: int, keys: int, workload: str, interval: float, cache: int) -> dict:
    """Run the job once in this process; return its figures."""
    backend, _, incremental = mode.partition("+")
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        sink = CountingSink()
        settings = ExecutionSettings(
            checkpoint=CoordinatorSettings(interval=interval, timeout=600.0),
            state_backend=StateBackendConfig(backend, directory=tmp, cache_entries=cache),
            incremental_checkpoints=bool(incremental),
        )
        job = _job(records, keys, workload, sink)
        sampler = _RssSampler()
        runner = JobRunner(job, checkpoint_dir=f"{tmp}/chk", settings=settings, on_tick=sampler)
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        cpu_start = time.process_time()
        result = runner.run()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        load_after = os.getloadavg()[0]
        checkpoint_bytes = sum(p.stat().st_size for p in Path(f"{tmp}/chk").rglob("*.arrow"))
    return {
        "backend": mode,
        "workload": workload,
        "records": records,
        "keys": keys,
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds),
        "cpu_s": round(cpu_seconds, 2),
        "records_per_cpu_s": round(records / cpu_seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "checkpoints": result.checkpoints_completed,
        "retained_state_bytes": checkpoint_bytes,
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "timeline": {
            "samples": [(round(t, 2), n) for t, n in sampler.samples],
            "rss_mib": sampler.rss_mib,
            "checkpoints": [
                (round(sampler.starts[c], 2), round(sampler.ends[c], 2))
                for c in sorted(sampler.starts)
                if c in sampler.ends
            ],
        },
    }


def draw_plot(runs: list[dict], path: Path, title: str) -> str | None:
    """Throughput (and RSS) over time of one run per mode, checkpoints shaded; a note if impossible."""
    try:
        import matplotlib  # noqa: PLC0415 - only for the plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.0 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        timeline = run["timeline"]
        samples = timeline["samples"]
        xs = [(t0 + t1) / 2 for (t0, _), (t1, _) in zip(samples, samples[1:])]
        ys = [
            (c1 - c0) / (t1 - t0) / 1e3 if t1 > t0 else 0 for (t0, c0), (t1, c1) in zip(samples, samples[1:])
        ]
        ax.plot(xs, ys, lw=1.0, color="tab:blue", label="k records/s (0.5 s windows)")
        for i, (start, end) in enumerate(timeline["checkpoints"]):
            ax.axvspan(
                start,
                max(end, start + 0.05),
                color="tab:orange",
                alpha=0.2,
                label="checkpoint" if i == 0 else None,
            )
        ax.set_ylim(bottom=0)
        ax.set_ylabel("k records/s")
        ax.grid(alpha=0.3)
        rss = ax.twinx()
        rss.plot(
            [t for t, _ in samples[: len(timeline["rss_mib"])]],
            timeline["rss_mib"],
            color="tab:green",
            lw=1.0,
        )
        rss.set_ylabel("RSS MiB", color="tab:green")
        rss.set_ylim(bottom=0)
        ax.set_title(
            f"{run['backend']}: {run['seconds']:.0f} s, {run['records_per_s']:,} records/s, "
            f"peak RSS {run['peak_rss_mib']:,} MiB",
            fontsize=10,
        )
        ax.legend(loc="lower left", fontsize=8)
    axes[0, 0].figure.suptitle(title, fontsize=11)
    axes[-1, 0].set_xlabel("seconds since the job started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--records", type=int, default=30_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workload", choices=["uniform", "skewed"], default="skewed")
    parser.add_argument("--interval", type=float, default=10.0, help="checkpoint interval, seconds")
    parser.add_argument("--cache", type=int, default=StateBackendConfig.cache_entries)
    parser.add_argument(
        "--modes",
        default="heap,disk+inc",
        help="comma-separated runs of each round, the first is the reference of the ratios: heap, heap+inc, "
        "disk, disk+inc (+inc: incremental checkpoints; default heap,disk+inc)",
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path, help="throughput-over-time plot (default: next to --out, .png)")
    args = parser.parse_args()
    if args.child:
        figures = child(args.child, args.records, args.keys, args.workload, args.interval, args.cache)
        print(json.dumps(figures))
        return
    modes = args.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes {args.modes!r}: each must be one of {', '.join(MODES)}")
    runs: list[dict] = []
    for _ in range(args.rounds):
        for backend in modes:
            cmd = [sys.executable, __file__, "--child", backend, "--keys", str(args.keys)]
            cmd += ["--records", str(args.records), "--interval", str(args.interval)]
            cmd += ["--cache", str(args.cache), "--workload", args.workload]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print({k: v for k, v in runs[-1].items() if k != "timeline"}, flush=True)
    summary = {}
    for backend in modes:
        mine = [r for r in runs if r["backend"] == backend]
        summary[backend] = {
            "records_per_s": statistics.median(r["records_per_s"] for r in mine),
            "records_per_cpu_s": statistics.median(r["records_per_cpu_s"] for r in mine),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
        }
    reference = summary[modes[0]]["records_per_s"]
    ratios = {m: round(summary[m]["records_per_s"] / reference, 3) for m in modes[1:]}
    cpu_reference = summary[modes[0]]["records_per_cpu_s"]
    cpu_ratios = {m: round(summary[m]["records_per_cpu_s"] / cpu_reference, 3) for m in modes[1:]}
    report = {
        "keys": args.keys,
        "records": args.records,
        "workload": args.workload,
        "checkpoint_interval_s": args.interval,
        "cache_entries": args.cache,
        "runs": runs,
        "summary": summary,
        f"throughput_over_{modes[0]}": ratios,
        f"throughput_per_cpu_s_over_{modes[0]}": cpu_ratios,
    }
    out = args.out or RESULTS / f"disk_backend-{args.workload}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    title = (
        f"{args.workload}: {args.keys:,} keys, {args.records:,} records, checkpoint every {args.interval:g} s"
    )
    plot = args.plot or out.with_suffix(".png")
    note = draw_plot([next(r for r in runs if r["backend"] == m) for m in modes], plot, title)
    print(note or f"plot: {plot}")
    print(f"\n{args.workload}: {args.keys:,} keys, {args.records:,} records, ", end="")
    print(f"checkpoint every {args.interval:g} s\n")
    print(
        "| backend | wall | CPU | records/s | records per CPU s | checkpoints | peak RSS "
        "| load avg (start, end) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        load = r["load_average_1m"]
        print(
            f"| {r['backend']} | {r['seconds']:,.1f} s | {r['cpu_s']:,.1f} s | {r['records_per_s']:,} "
            f"| {r['records_per_cpu_s']:,} | {r['checkpoints']} | {r['peak_rss_mib']:,} MiB "
            f"| {load[0]}, {load[1]} |"
        )
    for mode, ratio in ratios.items():
        print(f"\n{mode} / {modes[0]} throughput: {ratio:.2f} (per CPU second: {cpu_ratios[mode]:.2f})")


if __name__ == "__main__":
    main()
