"""Nexmark benchmark: q0, q1, q5, q7 on onceflow, a plain Python loop and Bytewax, same data, same run.

``python -m benchmarks.nexmark.bench`` generates 1,000,000 events (seed 1),
then measures every (query, variant) ``--reps`` times, interleaved (run 1 of
every variant of a query, then run 2, ...), each in a fresh process. It writes
``results.md``, ``results.json`` and ``nexmark.png`` to ``--out`` (default
``benchmarks/results/nexmark``). Every variant's output must equal the plain
loop's (the same lines; q0/q1: the same number of lines), or the run fails.

Variants: ``plain`` (the baseline, ``benchmarks/nexmark/plain.py``);
``p1`` (onceflow, local executor, one subtask per operator); ``proc-p1`` and
``proc-p2`` (process executor at parallelism 1 and 2; q7 only, for scaling);
``bytewax`` (Bytewax 0.21 ``run_main``, when installed). For the process
executor variants the table also shows the CPU seconds of the busiest worker
process, and the q7 scaling target gets a second line by that CPU: the
wall-time ratio needs a free core per worker, the CPU ratio does not. onceflow runs are
end to end: plan, executor, a checkpoint every second, the final checkpoint
and the FileSink's commit, reading the same files with ``FileSource``.

Two times per onceflow run: end to end (building the job, planning, starting
the executor and its workers, processing, the final checkpoint and the sink's
commit; the measuring process imported onceflow before the clock starts) and
the processing phase, from the executor's first scheduler round (its workers
forked, its subtasks open, reading begun; the runner's ``on_tick`` hook) to the
end of the run. The q7 scaling target is judged on the processing phase, the
part a second worker can share; the end-to-end ratio is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[2]
JOB_FILE = REPO / "benchmarks" / "jobs" / "nexmark.py"
VARIANTS = {
    "q0": ["plain", "p1", "bytewax"],
    "q1": ["plain", "p1", "bytewax"],
    "q5": ["plain", "p1"],  # Bytewax: see BYTEWAX_Q5
    "q7": ["plain", "p1", "proc-p1", "proc-p2", "bytewax"],
}
BYTEWAX_Q5 = (
    "Bytewax q5 is left out at 1,000,000 events: one run of its SlidingWindower count took 343 s and "
    "committed 608 of the 671 window results (its event clock also advances with the wall clock, so "
    "on a slow run the second stage sees windows as late); at 100,000 events it took 5.2 s with the "
    "right 75 lines (plain loop 0.14 s). `--bytewax-q5` puts it back."
)
EVENTS_PER_FILE = 125_000
"""Events per generated file beyond 1,000,000 events (8 files below).

The files hold consecutive stretches of event time, and a ``FileSource`` at
parallelism 2 reads every other file in each subtask, so its two subtasks are
about one file apart in event time: the window operators downstream hold (and
checkpoint) the windows of that stretch until the slower subtask's watermark
reaches them. Files of a fixed size keep that stretch at 125 s whatever ``--n``;
eight files of 5,000,000 events would make it 625 s.
"""


def files_for(n: int) -> int:
    """How many files the generator writes ``n`` events into."""
    return max(8, -(-n // EVENTS_PER_FILE))


TARGETS = [
    ("q0", "p1", "plain", 0.9),
    ("q1", "p1", "plain", 0.9),
    ("q5", "p1", "plain", 0.8),
    ("q7", "proc-p2", "proc-p1", 1.5),
]


def _engine(query: str, variant: str, data: Path, out: Path, tmp: str) -> float:
    """Run the job; return the ``perf_counter`` time of the executor's first scheduler round."""
    from benchmarks.nexmark.queries import build
    from onceflow import CoordinatorSettings, ExecutionSettings, JobRunner
    from onceflow.engine.loader import load_job

    settings = ExecutionSettings(checkpoint=CoordinatorSettings(interval=1.0, timeout=120.0))
    chk = tempfile.mkdtemp(prefix="chk-", dir=tmp)
    started: list[float] = []

    def first_round(executor: Any, now: float) -> None:
        if not started:
            started.append(time.perf_counter())

    if not variant.startswith("proc-"):
        job = build(query, str(data), str(out))
        JobRunner(job, checkpoint_dir=chk, settings=settings, on_tick=first_round).run()
        return started[0]
    params = {"query": query, "input": str(data), "output": str(out)}
    job = load_job(str(JOB_FILE), params)  # a job file, so the worker processes can rebuild it
    runner = JobRunner(
        job,
        checkpoint_dir=chk,
        settings=settings,
        executor="process",
        parallelism=int(variant[-1]),
        params=params,
        on_tick=first_round,
    )
    runner.run()
    return started[0]


def measure(query: str, variant: str, data: Path, tmp: str) -> dict[str, Any]:
    """Run one (query, variant); return its seconds (end to end, processing phase) and output lines."""
    from benchmarks.nexmark.plain import PLAIN

    out = Path(tmp) / "out"
    start = time.perf_counter()
    processing_from = None
    if variant == "plain":
        PLAIN[query](data, out)
    elif variant == "bytewax":
        from benchmarks.nexmark.bytewax_flows import run

        run(query, data, out, tmp)
    else:
        processing_from = _engine(query, variant, data, out, tmp)
    end = time.perf_counter()
    seconds = end - start
    processing = None if processing_from is None else end - processing_from
    if out.is_dir():
        from onceflow import read_committed_lines

        lines = read_committed_lines(str(out))
    else:
        lines = out.read_text(encoding="utf-8").splitlines()
    return {"seconds": seconds, "processing_s": processing, "lines": lines}


class _WorkerCPU:
    """Sample the CPU seconds of every child process (the process executor's workers) until stopped.

    ``busiest`` is the most any one worker used: at parallelism 2 the work is
    done no sooner than the busier worker's CPU allows, whatever else runs on
    the machine. Sampled every 20 ms, so it can miss a worker's last 20 ms; the
    list of children is refreshed every 0.5 s.
    """

    def __init__(self) -> None:
        import threading

        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        children: list[psutil.Process] = []
        listed = 0.0
        while not self._stop.wait(0.02):
            # listing children walks every process in /proc: on two cores, doing
            # that every 20 ms took CPU from the workers being measured
            if time.monotonic() - listed > 0.5:
                children, listed = me.children(recursive=True), time.monotonic()
            for child in children:
                try:
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self.cpu[child.pid] = times.user + times.system

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(max(self.cpu.values(), default=0.0), 3)


def _one(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="nexmark-", dir=args.tmp)
    sampler = _WorkerCPU() if args.one[1].startswith("proc-") else None
    try:
        result = measure(args.one[0], args.one[1], Path(args.data), tmp)
    finally:
        busiest = sampler.stop() if sampler is not None else None
        shutil.rmtree(tmp, ignore_errors=True)
    result["busiest_worker_cpu_s"] = busiest
    lines = result.pop("lines")
    result["n_lines"] = len(lines)
    result["lines_digest"] = _digest(lines) if args.one[0] in ("q5", "q7") else None
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = round(own.ru_utime + own.ru_stime, 3)
    result["workers_cpu_s"] = round(children.ru_utime + children.ru_stime, 3)
    result["max_rss_mb"] = round(own.ru_maxrss / 1024, 1)
    result["children_max_rss_mb"] = round(children.ru_maxrss / 1024, 1)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


def _digest(lines: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(Counter(lines).elements())).encode()).hexdigest()[:16]


def _bytewax_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("bytewax")
    except Exception:
        return None


def _run_one(query: str, variant: str, data: Path, tmp: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.nexmark.bench",
        "--one",
        query,
        variant,
        "--data",
        str(data),
        "--tmp",
        tmp,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        msg = f"{query} {variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(n: int, reps: int, out: Path, tmp: str, queries: list[str], log: Any) -> dict[str, Any]:
    from benchmarks.nexmark.generator import count_events

    data = Path(tmp) / "data"
    # in a child process: peak RSS survives exec, so every measurement would inherit the generator's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.nexmark.generator", str(data), str(n), "1", str(files_for(n))],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    counts = count_events(data)
    log(f"generated {counts.total} events: {counts.bids} bids")
    has_bytewax = _bytewax_version() is not None
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    load_start = os.getloadavg()
    for query in queries:
        variants = [v for v in VARIANTS[query] if v != "bytewax" or has_bytewax]
        runs[query] = {v: [] for v in variants}
        for rep in range(reps):
            for variant in variants:
                result = _run_one(query, variant, data, tmp)
                runs[query][variant].append(result)
                log(f"{query} {variant} run {rep + 1}: {result['seconds']:.2f} s, {result['n_lines']} lines")
        base = runs[query]["plain"][0]
        for variant, results in runs[query].items():
            for r in results:
                same = r["n_lines"] == base["n_lines"] and r["lines_digest"] == base["lines_digest"]
                if not same:
                    msg = f"{query} {variant}: output differs from the plain loop's ({r} vs {base})"
                    raise RuntimeError(msg)
    report = {
        "events": counts.total,
        "files": files_for(n),
        "bids": counts.bids,
        "reps": reps,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "bytewax": _bytewax_version() or "not installed",
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "runs": runs,
        "table": _table(runs, counts.bids),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(render(report))
    plot = draw(report, out / "nexmark.png")
    log(f"wrote {out / 'results.md'}" + (f" and {plot}" if plot else " (no plot: matplotlib missing)"))
    return report


def _table(runs: dict[str, Any], bids: int) -> list[dict[str, Any]]:
    rows = []
    for query, variants in runs.items():
        plain = median(r["seconds"] for r in variants["plain"])
        for variant, results in variants.items():
            seconds = median(r["seconds"] for r in results)
            rows.append(
                {
                    "query": query,
                    "variant": variant,
                    "median_s": round(seconds, 3),
                    "all_s": [round(r["seconds"], 3) for r in results],
                    "bids_per_s": round(bids / seconds),
                    "processing_s": _median_or_none([r.get("processing_s") for r in results]),
                    "ratio_to_plain": round(plain / seconds, 3),
                    "max_rss_mb": max(r["max_rss_mb"] for r in results),
                    "cpu_s": round(median(r["cpu_s"] + r["workers_cpu_s"] for r in results), 2),
                    "busiest_worker_cpu_s": _median_or_none([r.get("busiest_worker_cpu_s") for r in results]),
                }
            )
    return rows


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 3) if known else None


def targets(report: dict[str, Any]) -> list[tuple[str, float | None, float, bool | None]]:
    """``(what, ratio, goal, met)`` for every acceptance target; ratios of medians in this run.

    A target between process-executor variants (a scaling target) is judged on
    the processing phase, where the parallelism acts; its end-to-end ratio
    follows, then a line by the CPU of the busiest worker: what the speedup is
    when every worker has a core of its own, whatever else the machine runs
    (the wall-time ratios need free cores). The end-to-end and CPU lines inform
    and are not judged (``met`` is None).
    """
    by = {(r["query"], r["variant"]): r for r in report["table"]}
    out: list[tuple[str, float | None, float, bool | None]] = []
    for query, variant, base, goal in TARGETS:
        a, b = by.get((query, variant)), by.get((query, base))
        ratio = round(b["median_s"] / a["median_s"], 3) if a and b else None
        pa, pb = (r.get("processing_s") if r else None for r in (a, b))
        if variant.startswith("proc-") and pa and pb:
            phase = round(pb / pa, 3)
            out.append(
                (f"{query}: {variant} throughput / {base}, processing phase", phase, goal, phase >= goal)
            )
            out.append((f"{query}: {variant} throughput / {base}, end to end", ratio, goal, None))
        else:
            met = None if ratio is None else ratio >= goal
            out.append((f"{query}: {variant} throughput / {base}", ratio, goal, met))
        ca, cb = (r.get("busiest_worker_cpu_s") if r else None for r in (a, b))
        if ca and cb:
            cpu = round(cb / ca, 3)
            out.append((f"{query}: {base} / {variant} busiest worker's CPU s", cpu, goal, None))
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Nexmark: onceflow, plain Python, Bytewax",
        "",
        f"{report['events']:,} events ({report['bids']:,} bids) in {report.get('files', 8)} files per kind, "
        f"median of {report['reps']} interleaved runs "
        f"each in a fresh process; Python {report['python']}, {report['machine']}, "
        f"Bytewax {report['bytewax']}, "
        f"git {report['git']}; load average {report['load_start']} at start, {report['load_end']} at end.",
        "",
        "| query | variant | median s | runs s | bids/s | processing s | processing bids/s "
        "| ratio to plain | CPU s | busiest worker CPU s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["table"]:
        busiest = r.get("busiest_worker_cpu_s")
        phase = r.get("processing_s")
        phase_rate = "-" if phase is None else f"{round(report['bids'] / phase):,}"
        lines.append(
            f"| {r['query']} | {r['variant']} | {r['median_s']:.2f} "
            f"| {', '.join(f'{s:.2f}' for s in r['all_s'])} "
            f"| {r['bids_per_s']:,} | {'-' if phase is None else f'{phase:.2f}'} "
            f"| {phase_rate} "
            f"| {r['ratio_to_plain']:.2f} | {r['cpu_s']} "
            f"| {'-' if busiest is None else busiest} | {r['max_rss_mb']} |"
        )
    if "bytewax" not in report["runs"].get("q5", {"bytewax": 1}):
        lines += ["", BYTEWAX_Q5]
    lines += [
        "",
        "Median s and bids/s: end to end, from building the job to the sink's last commit (the "
        "measuring process imported onceflow before). Processing s and processing bids/s: the "
        "processing phase alone, from the "
        "executor's first scheduler round (workers forked, subtasks open) to the final checkpoint's "
        "commit (median; '-' for runs without an executor). "
        "CPU s: user + system time of the measuring process and its worker processes (median), the "
        "whole process (imports and setup included). Busiest worker CPU s: the CPU seconds of the "
        "process executor's busiest worker process (median; sampled every 20 ms). A run at "
        "parallelism 2 can only beat one at parallelism 1 when a second core is free: the load "
        "average above says how busy the machine's two cores were with other work.",
    ]
    lines += ["", "| target | ratio | goal | met |", "| --- | --- | --- | --- |"]
    for what, ratio, goal, met in targets(report):
        verdict = "-" if ratio is None else "not judged" if met is None else "yes" if met else "no"
        lines.append(f"| {what} | {ratio} | >= {goal} | {verdict} |")
    return "\n".join(lines) + "\n"


def draw(report: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["table"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['query']}\n{r['variant']}" for r in rows]
    colors = {"plain": "#888888", "bytewax": "#d08a2c"}
    ax.bar(
        range(len(rows)),
        [r["bids_per_s"] / 1000 for r in rows],
        color=[colors.get(r["variant"], "#3a6ea5") for r in rows],
    )
    for i, r in enumerate(rows):
        ax.text(i, r["bids_per_s"] / 1000, f"{r['ratio_to_plain']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("thousand bids / s")
    ax.set_title(f"Nexmark, {report['events']:,} events (label: ratio to the plain Python loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def rerender(out: Path) -> None:
    """Rewrite ``results.md`` and the plot from ``results.json`` (after a change of the layout)."""
    report = json.loads((out / "results.json").read_text())
    report["table"] = _table(report["runs"], report["bids"])
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(render(report))
    draw(report, out / "nexmark.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nexmark"))
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--only", nargs="*", default=sorted(VARIANTS, key=lambda q: int(q[1:])))
    parser.add_argument("--one", nargs=2, metavar=("QUERY", "VARIANT"), help="one measurement (internal)")
    parser.add_argument("--data", help="with --one: the generated events")
    parser.add_argument("--bytewax-q5", action="store_true", help="also run q5 on Bytewax (slow)")
    parser.add_argument("--rerender", action="store_true", help="only rewrite results.md and the plot")
    args = parser.parse_args(argv)
    if args.one:
        return _one(args)
    if args.rerender:
        rerender(Path(args.out))
        return 0
    if args.bytewax_q5:
        VARIANTS["q5"].append("bytewax")
    tmp = tempfile.mkdtemp(prefix="nexmark-bench-", dir=args.tmp)
    try:
        report = run_all(args.n, args.reps, Path(args.out), tmp, args.only, lambda m: print(m, flush=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
