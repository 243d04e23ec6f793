"""The ray executor against the process executor at parallelism 2, in the same session.

Two jobs from their files: the keyed count (``benchmarks/jobs/scaling.py``,
``n`` generated numbers, ~3 µs of Python each, key_by, running count) and
Nexmark q0 (``benchmarks/jobs/nexmark.py``, bids passed through to a
FileSink). Runs are interleaved (process, ray, process, ray, ...) so both see
the same machine load; the figure is the ratio of median throughputs. One
local Ray (``num_cpus=2``, on 127.0.0.1) is started before the runs, as a
cluster already runs; a ray run still pays for starting its two actors and
rebuilding the job in them, as every attempt does.

The per-batch cost of a batch that crosses actors is estimated from the same
runs: (ray seconds - process seconds) / batches that cross workers (an upper
bound: actor start-up is in it too); ``benchmarks/results/ray_executor.md``
turns it into a throughput-per-node projection.

Run: ``python benchmarks/ray_executor.py [--records 1000000] [--events 500000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.nexmark.generator import generate  # noqa: E402
from onceflow import CoordinatorSettings, ExecutionSettings, JobRunner  # noqa: E402
from onceflow.engine.loader import load_job_file  # noqa: E402

BATCH = 1024
JOBS = REPO / "benchmarks" / "jobs"


def _run(job_file: Path, params: dict[str, str], executor: str, root: Path) -> float:
    loaded = load_job_file(str(job_file), params)
    runner = JobRunner(
        loaded.job,
        checkpoint_dir=str(root / f"chk-{time.monotonic_ns()}"),
        parallelism=2,
        settings=ExecutionSettings(checkpoint=CoordinatorSettings(interval=2.0)),
        params=loaded.params,
        executor=executor,
        job_file=str(job_file),
        fresh=True,
    )
    started = time.perf_counter()
    runner.run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray_executor.json"))
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nexmark_in = root / "nexmark"
        counts = generate(nexmark_in, args.events)
        bids = counts.bids
        cases = {
            "keyed_count": (
                REPO / "benchmarks" / "jobs" / "scaling.py",
                {"n": str(args.records)},
                args.records,
            ),
            "nexmark_q0": (
                JOBS / "nexmark.py",
                {"input": str(nexmark_in), "output": str(root / "q0-out"), "query": "q0"},
                bids,
            ),
        }
        for name, (job_file, params, records) in cases.items():
            seconds: dict[str, list[float]] = {"process": [], "ray": []}
            for _ in range(args.rounds):
                for executor in ("process", "ray"):
                    seconds[executor].append(_run(job_file, params, executor, root))
            med = {k: statistics.median(v) for k, v in seconds.items()}
            # keyed count: half the batches of a two-way shuffle leave their worker; q0 is forward only
            crossing = records / BATCH / 2 if name == "keyed_count" else 0
            results[name] = {
                "records": records,
                "seconds": seconds,
                "records_per_s": {k: records / v for k, v in med.items()},
                "ray_vs_process": med["process"] / med["ray"],
                "extra_ms_per_crossing_batch": 1000 * (med["ray"] - med["process"]) / crossing
                if crossing
                else None,
            }
            print(
                f"{name}: process {records / med['process']:,.0f} rec/s, "
                f"ray {records / med['ray']:,.0f} rec/s, "
                f"ray/process {results[name]['ray_vs_process']:.2f} "
                f"(runs: process {seconds['process']}, ray {seconds['ray']})",
                flush=True,
            )
    ray.shutdown()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
