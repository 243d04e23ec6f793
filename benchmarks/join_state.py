"""State of an interval join over a long run: it must stay flat, not grow with the input.

Two generated streams (``RangeSource``, nothing held in memory) of ``--events``
records in total over ``--keys`` keys, in event-time order (1 ms of event time
per record per side), run through ``interval_join(lower, upper)`` into a
counting sink with a checkpoint every ``--interval`` seconds, all retained.
While it runs, a thread notes how many events had been read when each
checkpoint's ``_metadata`` appeared; afterwards the script reads every
checkpoint's state files of the join operator and reports the bytes per
checkpoint over time. Join state expires with the watermark, so after the
first interval it should hold one interval's records per key and side,
whatever the number of events already read.

    python -m benchmarks.join_state                       # 10,000,000 events (a few minutes)
    python -m benchmarks.join_state --events 200000 --out /tmp/js   # quick check

Writes ``join_state.json`` and ``join_state.md`` (and ``join_state.png`` with
matplotlib) into ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import CountingSink, RangeSource
from onceflow import Job
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.executors._wiring import ExecutionSettings
from onceflow.engine.runner import JobRunner

UID = "interval"
DT = 0.001
"""Event time between two records of one side (seconds)."""


class Progress:
    """Counts events read (the parse function runs in the runner's process with the local executor)."""

    def __init__(self) -> None:
        self.events = 0

    def parse(self, side: int, keys: int):
        def to_event(i: int) -> tuple[int, int, float]:
            self.events += 1
            return (i, (i * 7919 + side) % keys, i * DT)

        return to_event


def build(events: int, keys: int, lower: float, upper: float, progress: Progress) -> Job:
    job = Job("join-state")
    sides = []
    for side, label in enumerate(("left", "right")):
        stream = (
            job.source(RangeSource(events // 2), name=label, uid=label)
            .map(progress.parse(side, keys), name=f"{label}-event")
            .assign_timestamps(lambda e: e[2], name=f"{label}-ts")
        )
        sides.append(stream.key_by(lambda e: e[1]))
    (
        sides[0]
        .interval_join(sides[1], lower=lower, upper=upper)
        .process(lambda a, b: [(a[0], b[0])], name=UID, uid=UID)
        .sink(CountingSink(), name="count", uid="count")
    )
    return job


def watch(root: Path, progress: Progress, seen: dict[int, tuple[float, int]], done: threading.Event) -> None:
    """Note (seconds since start, events read) when each checkpoint's ``_metadata`` appears."""
    started = time.monotonic()
    while not done.is_set():
        for meta in root.glob("*/chk-*/_metadata"):
            n = int(meta.parent.name.split("-")[1])
            if n not in seen:
                seen[n] = (time.monotonic() - started, progress.events)
        time.sleep(0.02)


def state_bytes(root: Path) -> dict[int, dict[str, int]]:
    """Bytes and rows of the join operator's state files referenced by each checkpoint."""
    out = {}
    for meta in root.glob("*/chk-*/_metadata"):
        d = json.loads(meta.read_text())
        handles = [h for h in d["handles"] if h["uid"] == UID]
        out[d["checkpoint_id"]] = {
            "bytes": sum(h["bytes"] for h in handles),
            "rows": sum(h["rows"] for h in handles),
            "checkpoint_bytes": d["size_bytes"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--lower", type=float, default=-1.0)
    parser.add_argument("--upper", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="join-state-"))
    progress = Progress()
    job = build(args.events, args.keys, args.lower, args.upper, progress)
    runner = JobRunner(
        job,
        checkpoint_dir=str(root),
        settings=ExecutionSettings(
            checkpoint=CoordinatorSettings(interval=args.interval, retain=100_000, timeout=120.0)
        ),
    )
    seen: dict[int, tuple[float, int]] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(root, progress, seen, done), daemon=True)
    watcher.start()
    started = time.monotonic()
    result = runner.run()
    seconds = time.monotonic() - started
    done.set()
    watcher.join()
    sizes = state_bytes(root)
    rows = [
        {
            "checkpoint": n,
            "seconds": seen.get(n, (seconds, 0))[0],
            "events_read": seen.get(n, (0, progress.events))[1],
        }
        | sizes[n]
        for n in sorted(sizes)
    ]
    steady = [
        r["bytes"] for r in rows if r["events_read"] >= args.events * 0.1 and r["events_read"] < args.events
    ]
    summary = {
        "events": args.events,
        "keys": args.keys,
        "interval": [args.lower, args.upper],
        "checkpoints": len(rows),
        "seconds": round(seconds, 1),
        "events_per_s": round(args.events / seconds),
        "status": str(result.status),
        "steady_min_bytes": min(steady) if steady else None,
        "steady_max_bytes": max(steady) if steady else None,
        "steady_max_over_min": round(max(steady) / min(steady), 3) if steady else None,
        "machine": platform.platform(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "join_state.json").write_text(json.dumps({"summary": summary, "checkpoints": rows}, indent=1))
    lines = [
        "# Interval join state per checkpoint",
        "",
        f"`python -m benchmarks.join_state --events {args.events}`: {args.events:,} events over "
        f"{args.keys:,} keys, interval [{args.lower}, {args.upper}] s, 1 ms of event time per record "
        f"and side, checkpoint every {args.interval} s; {seconds:.0f} s "
        f"({summary['events_per_s']:,} events/s), {len(rows)} checkpoints.",
        "",
        f"Join state after the first 10% of the input: {summary['steady_min_bytes']:,} to "
        f"{summary['steady_max_bytes']:,} bytes (max/min {summary['steady_max_over_min']}).",
        "",
        "| checkpoint | seconds | events read | join state bytes | join state rows | checkpoint bytes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['checkpoint']} | {r['seconds']:.1f} | {r['events_read']:,} | {r['bytes']:,} | "
        f"{r['rows']:,} | {r['checkpoint_bytes']:,} |"
        for r in rows
    ]
    (out / "join_state.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([r["events_read"] / 1e6 for r in rows], [r["bytes"] / 1e3 for r in rows], marker=".")
        ax.set_xlabel("events read (millions)")
        ax.set_ylabel("interval join state (kB)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"interval join state per checkpoint, {args.keys:,} keys")
        fig.tight_layout()
        fig.savefig(out / "join_state.png", dpi=100)
    except ImportError:
        pass
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
