"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--out benchmarks/results]``.

Every measurement runs in a fresh subprocess (``benchmarks.cases``), so peak
RSS figures never mix. Repetitions are interleaved (rep 1 of every variant of
a case, then rep 2, ...), so a baseline and the runs compared with it see the
same machine load. Writes ``results.json``, ``results.md``, the cProfile text
of the keyed count and, when matplotlib is installed, ``throughput.png``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    name: str
    label: str
    n: int
    baseline: bool = False
    needs: str | None = None
    """A module that must be importable (an optional peer); else the variant is 'not installed'."""


@dataclass
class Case:
    name: str
    title: str
    variants: list[Variant]
    reps: int
    unit: str = "records"
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return dict.fromkeys(
            (
                "keyed",
                "bytewax",
                "stateless",
                "scaling",
                "arrow",
                "arrow_rows",
                "backpressure",
                "timeline",
                "profile",
                "cli_wordcount",
            ),
            20_000,
        ) | {"state_small": 1_000, "state_mid": 2_000, "state_big": 5_000, "state_write": 5_000}
    return {
        "keyed": 6_000_000,
        "cli_wordcount": 2_000_000,
        "bytewax": 1_000_000,
        "stateless": 6_000_000,
        "scaling": 400_000,
        "arrow": 10_000_000,
        "arrow_rows": 1_000_000,
        "state_small": 10_000,
        "state_mid": 100_000,
        "state_big": 1_000_000,
        "backpressure": 5_000_000,
        "timeline": 6_000_000,
        "profile": 2_000_000,
        "state_write": 1_000_000,
    }


def build_cases(quick: bool) -> list[Case]:
    s = _sizes(quick)
    reps = 1 if quick else 3
    return [
        Case(
            "keyed_count",
            "Keyed count (map → key_by → running count → sink), 10,000-word vocabulary",
            [
                Variant("loop", "plain Python loop, same user functions", s["keyed"], baseline=True),
                Variant("engine_ckpt_off", "onceflow p=1, checkpoints off (final only)", s["keyed"]),
                Variant("engine_ckpt_1s", "onceflow p=1, checkpoints every 1 s", s["keyed"]),
                Variant("engine_filesource_ckpt_1s", "onceflow p=1, checkpoints 1 s, FileSource", s["keyed"]),
                Variant(
                    "bytewax_recovery_1s",
                    "Bytewax run_main, recovery on, snapshot every 1 s",
                    s["bytewax"],
                    needs="bytewax",
                ),
            ],
            reps,
        ),
        Case(
            "cli_wordcount",
            "Word count end to end: a whole process, start to exit, file to file",
            [
                Variant(
                    "script", "plain Python script: read, count, write", s["cli_wordcount"], baseline=True
                ),
                Variant(
                    "onceflow", "onceflow run jobs/wordcount.py (p=1, local executor)", s["cli_wordcount"]
                ),
                Variant(
                    "onceflow_reduce",
                    "the same as map → reduce → map, 4 calls a word (benchmarks/wordcount_reduce.py)",
                    s["cli_wordcount"],
                ),
            ],
            reps,
        ),
        Case(
            "stateless",
            "Stateless (map → filter → sink)",
            [
                Variant("loop", "plain Python loop, same user functions", s["stateless"], baseline=True),
                Variant("engine_ckpt_off", "onceflow p=1, checkpoints off (final only)", s["stateless"]),
                Variant("engine_ckpt_1s", "onceflow p=1, checkpoints every 1 s", s["stateless"]),
            ],
            reps,
        ),
        Case(
            "scaling",
            "Scaling: ~3 µs of Python per record (map), checkpoints 1 s",
            [
                Variant(
                    "process_p1", "process executor p=1: spin → key_by → count", s["scaling"], baseline=True
                ),
                Variant("process_p2", "process executor p=2: spin → key_by → count (shuffle)", s["scaling"]),
                Variant("process_p1_noshuffle", "process executor p=1: spin only", s["scaling"]),
                Variant("process_p2_noshuffle", "process executor p=2: spin only (no shuffle)", s["scaling"]),
                Variant("local_p1", "local executor p=1: spin → key_by → count (reference)", s["scaling"]),
                Variant("plain_p1", "no engine: spin in 1 forked process (machine ceiling)", s["scaling"]),
                Variant("plain_p2", "no engine: spin in 2 forked processes (machine ceiling)", s["scaling"]),
            ],
            reps,
        ),
        Case(
            "map_batches",
            "map_batches over Arrow (amount = price × qty, keep > 250)",
            [
                Variant(
                    "pyarrow_compute",
                    "bare pyarrow.compute loop over the same batches",
                    s["arrow"],
                    baseline=True,
                ),
                Variant(
                    "engine_map_batches",
                    "onceflow map_batches(arrow=True), batch passed on whole",
                    s["arrow"],
                ),
                Variant(
                    "engine_map_batches_to_rows",
                    "onceflow map_batches(arrow=True) returning a RecordBatch (engine emits rows)",
                    s["arrow_rows"],
                ),
            ],
            reps,
        ),
        Case(
            "checkpoint_state",
            "Checkpoint of keyed state (values are (word, count) tuples)",
            [
                Variant("keys_10k", "10,000 keys", s["state_small"]),
                Variant("keys_100k", "100,000 keys", s["state_mid"]),
                Variant("keys_1m", "1,000,000 keys", s["state_big"]),
            ],
            reps,
            unit="keys",
        ),
        Case(
            "backpressure",
            "Backpressure: generated records, keyed count, sink sleeping 0.5 ms/batch",
            [
                Variant("slow_sink", "onceflow p=1, checkpoints every 1 s", s["backpressure"]),
            ],
            1,
        ),
        Case(
            "timeline",
            "Throughput over time, keyed count, checkpoints every 1 s",
            [
                Variant("keys_10k", "10,000-word vocabulary", s["timeline"]),
                Variant(
                    "keys_1m",
                    "1,000,000 distinct words first, then the 10,000-word vocabulary",
                    s["timeline"],
                ),
            ],
            1,
        ),
        Case(
            "profile",
            "cProfile",
            [
                Variant("keyed_count", "keyed count, checkpoints every 1 s", s["profile"]),
                Variant("state_write_1m", "write_state_file of 1M keys", s["state_write"]),
            ],
            1,
        ),
    ]


# -- running -------------------------------------------------------------------


def run_one(case: str, variant: Variant, tmp: str, timeout: float) -> dict[str, Any]:
    if variant.needs and importlib.util.find_spec(variant.needs) is None:
        return {"skipped": f"{variant.needs} not installed"}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.cases", case, variant.name, "--n", str(variant.n), "--tmp", tmp]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": "no result line"}
    return json.loads(lines[-1])


def run_cases(cases: list[Case], tmp: str, timeout: float, log: Any) -> None:
    for case in cases:
        for variant in case.variants:
            case.runs[variant.name] = []
        for rep in range(case.reps):
            for variant in case.variants:
                started = time.perf_counter()
                result = run_one(case.name, variant, tmp, timeout)
                case.runs[variant.name].append(result)
                status = result.get("skipped") or result.get("error")
                if status is None:
                    status = f"{result['seconds']:.3f} s, peak RSS {result['max_rss_mb']:.0f} MB"
                log(
                    f"  {case.name}/{variant.name} [{rep + 1}/{case.reps}] {status} "
                    f"({time.perf_counter() - started:.1f} s wall)"
                )


# -- summarising ---------------------------------------------------------------


def summarise(case: Case) -> dict[str, dict[str, Any]]:
    """Median seconds, throughput, peak RSS and ratio to the baseline, per variant."""
    out: dict[str, dict[str, Any]] = {}
    for variant in case.variants:
        runs = case.runs.get(variant.name, [])
        good = [r for r in runs if "seconds" in r]
        row: dict[str, Any] = {"label": variant.label, "n": variant.n, "runs": len(good)}
        skipped = next((r["skipped"] for r in runs if "skipped" in r), None)
        errors = [r["error"] for r in runs if "error" in r]
        if skipped:
            row["skipped"] = skipped
        if errors:
            row["errors"] = errors
        if good:
            seconds = statistics.median(r["seconds"] for r in good)
            row["median_s"] = seconds
            row["all_s"] = [r["seconds"] for r in good]
            row["throughput"] = variant.n / seconds if seconds > 0 else None
            row["peak_rss_mb"] = max(r["max_rss_mb"] for r in good)
            if all("cpu_s" in r for r in good):
                row["cpu_s"] = statistics.median(r["cpu_s"] for r in good)
            workers = max(r.get("children_max_rss_mb", 0.0) for r in good)
            if variant.name.startswith("process"):
                row["worker_peak_rss_mb"] = workers
            for key in ("checkpoint_seconds", "restore_seconds", "checkpoint_bytes", "run_cpu_s"):
                if key in good[0]:
                    row[key] = statistics.median(r[key] for r in good)
            if "checkpoints" in good[0]:
                row["checkpoints"] = statistics.median(r["checkpoints"] for r in good)
        out[variant.name] = row
    base = next((v.name for v in case.variants if v.baseline), None)
    base_tp = out.get(base, {}).get("throughput") if base else None
    for row in out.values():
        if base_tp and row.get("throughput"):
            row["ratio"] = row["throughput"] / base_tp
            row["baseline"] = base
    return out


def _tp(summary: dict[str, dict[str, dict[str, Any]]], case: str, variant: str) -> float | None:
    return summary.get(case, {}).get(variant, {}).get("throughput")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets, each as (what, measured, goal, met)."""
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, goal: str, met: bool | None, fmt: str, why: str = "") -> None:
        rows.append(
            {
                "target": what,
                "goal": goal,
                "measured": value,
                "shown": (fmt.format(value) if value is not None else why or "not measured"),
                "met": met if value is not None else None,
            }
        )

    kc = _tp(summary, "keyed_count", "engine_ckpt_1s")
    r = _ratio(kc, _tp(summary, "keyed_count", "loop"))
    add("keyed count p=1, ckpt 1 s ÷ plain loop", r, ">= 0.60", r is not None and r >= 0.60, "{:.2f}")
    bw_row = summary.get("keyed_count", {}).get("bytewax_recovery_1s", {})
    r = _ratio(kc, bw_row.get("throughput"))
    add(
        "keyed count p=1, ckpt 1 s ÷ Bytewax (recovery on)",
        r,
        ">= 4.0",
        r is not None and r >= 4.0,
        "{:.1f}x",
        bw_row.get("skipped", ""),
    )
    r = _ratio(_tp(summary, "cli_wordcount", "onceflow"), _tp(summary, "cli_wordcount", "script"))
    add("wordcount end to end (CLI) ÷ plain script", r, ">= 0.60", r is not None and r >= 0.60, "{:.2f}")
    cli = summary.get("cli_wordcount", {})
    r = _ratio(cli.get("script", {}).get("run_cpu_s"), cli.get("onceflow", {}).get("run_cpu_s"))
    met = r is not None and r >= 0.60
    add("wordcount end to end (CLI) ÷ plain script, CPU time", r, ">= 0.60", met, "{:.2f}")
    r = _ratio(kc, _tp(summary, "keyed_count", "engine_ckpt_off"))
    add("keyed count: ckpt 1 s ÷ ckpt off", r, ">= 0.95", r is not None and r >= 0.95, "{:.2f}")
    r = _ratio(_tp(summary, "stateless", "engine_ckpt_1s"), _tp(summary, "stateless", "engine_ckpt_off"))
    add("stateless: ckpt 1 s ÷ ckpt off", r, ">= 0.95", r is not None and r >= 0.95, "{:.2f}")
    p2_row = summary.get("scaling", {}).get("process_p2", {})
    r = _ratio(p2_row.get("throughput"), _tp(summary, "scaling", "process_p1"))
    add(
        "scaling, keyed (shuffle): process p=2 ÷ p=1",
        r,
        ">= 1.6",
        r is not None and r >= 1.6,
        "{:.2f}x",
        p2_row.get("skipped", ""),
    )
    p2_row = summary.get("scaling", {}).get("process_p2_noshuffle", {})
    r = _ratio(p2_row.get("throughput"), _tp(summary, "scaling", "process_p1_noshuffle"))
    add(
        "scaling, map only (no shuffle): process p=2 ÷ p=1",
        r,
        ">= 1.6",
        r is not None and r >= 1.6,
        "{:.2f}x",
        p2_row.get("skipped", ""),
    )
    r = _ratio(_tp(summary, "scaling", "plain_p2"), _tp(summary, "scaling", "plain_p1"))
    add(
        "(reference) the machine's own ceiling: plain processes 2 ÷ 1",
        r,
        "≈ 2 on an idle machine",
        None,
        "{:.2f}x",
    )
    r = _ratio(
        _tp(summary, "map_batches", "engine_map_batches"), _tp(summary, "map_batches", "pyarrow_compute")
    )
    add("map_batches ÷ bare pyarrow.compute", r, ">= 0.50", r is not None and r >= 0.50, "{:.2f}")
    big = summary.get("checkpoint_state", {}).get("keys_1m", {})
    value = big.get("checkpoint_seconds")
    add("checkpoint of 1M keys (s)", value, "< 3 s", value is not None and value < 3, "{:.2f} s")
    value = big.get("restore_seconds")
    add("restore of 1M keys (s)", value, "< 3 s", value is not None and value < 3, "{:.2f} s")
    value = summary.get("backpressure", {}).get("slow_sink", {}).get("peak_rss_mb")
    add(
        "peak RSS, 5M records, slow sink (MB)",
        value,
        "< 300 MB",
        value is not None and value < 300,
        "{:.0f} MB",
    )
    return rows


def timeline_stats(run: dict[str, Any]) -> dict[str, Any]:
    """Throughput inside checkpoints (start..end) versus outside, from the samples."""
    samples = run.get("samples", [])
    spans = [(c["start"], c["end"]) for c in run.get("checkpoints", []) if c.get("end") is not None]
    inside = [0, 0.0]
    outside = [0, 0.0]
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        mid = (t0 + t1) / 2
        bucket = inside if any(a <= mid <= b for a, b in spans) else outside
        bucket[0] += c1 - c0
        bucket[1] += t1 - t0
    mids = [c for c in run.get("checkpoints", []) if c.get("duration_s") is not None]
    return {
        "records_per_s_during_checkpoints": inside[0] / inside[1] if inside[1] else None,
        "records_per_s_otherwise": outside[0] / outside[1] if outside[1] else None,
        "checkpoint_durations_s": [round(c["duration_s"], 3) for c in mids],
        "checkpoint_bytes": [c["bytes"] for c in mids],
    }


# -- machine info ----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return ""

    onceflow = version("onceflow")
    if onceflow is None:
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        onceflow = next(
            (line.split('"')[1] for line in text.splitlines() if line.startswith("version")), "unknown"
        )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyarrow": version("pyarrow"),
        "onceflow": onceflow,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "engine_uncommitted_changes": bool(
            git("status", "--porcelain", "engine", "operators", "state_backends")
        ),
        "bytewax": version("bytewax"),
        "matplotlib": version("matplotlib"),
        "load_average_at_start": list(os.getloadavg()),
    }


# -- output ----------------------------------------------------------------------


def _mrs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f}" if value >= 1e5 else f"{value / 1e6:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    dirty = (
        ", work tree had uncommitted changes under engine/, operators/ or state_backends/"
        if m["engine_uncommitted_changes"]
        else ""
    )
    lines = [
        "# onceflow benchmark results",
        "",
        f"{m['date']} · {m['cpu']}, {m['cores']} cores · Python {m['python']} · pyarrow {m['pyarrow']} · "
        f"onceflow {m['onceflow']} (git {m['git_commit']}"
        f"{dirty}) · "
        f"Bytewax {m['bytewax'] or 'not installed'} · load average (1/5/15 min) at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}",
        "",
        f"Mode: {'quick (tiny inputs, 1 run: a smoke test, not figures)' if report['quick'] else 'full'}; "
        f"suite wall time {report['wall_seconds']:.0f} s. Every figure is the median of the runs "
        "shown; each run is a fresh process. Ratios are to the case's baseline (†) from the same "
        "suite run. Sources: a slice of a pre-built list (1,024 records per batch) unless "
        "FileSource is named; sink: a transactional counting sink (two-phase commit "
        "bookkeeping, counts records, no I/O) for onceflow, and its equivalent (a counter) for the "
        "loop and Bytewax. Checkpoints go to the local disk. CPU s: user + system time of the "
        "measuring process and its children (workers) for the whole process, setup included; "
        "with 2 free cores a parallel run shows CPU s above its wall time.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {t['shown']} | {met} |")
    lines += [
        "",
        "## Throughput",
        "",
        "| case | variant | N | median s | M records/s | ratio | CPU s | peak RSS MB | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in report["cases"]:
        if case["name"] in ("checkpoint_state", "timeline", "profile"):
            continue
        for name, row in case["variants"].items():
            label = row["label"] + (" †" if row.get("baseline") == name else "")
            if "skipped" in row or "median_s" not in row:
                why = row.get("skipped") or "; ".join(row.get("errors", ["failed"]))[:120]
                lines.append(f"| {case['name']} | {label} | {row['n']:,} | — | — | — | — | — | {why} |")
                continue
            rss = f"{row['peak_rss_mb']:.0f}"
            if "worker_peak_rss_mb" in row:
                rss += f" (+ workers ≤ {row['worker_peak_rss_mb']:.0f} each)"
            ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
            cpu = f"{row['cpu_s']:.2f}" if "cpu_s" in row else "—"
            lines.append(
                f"| {case['name']} | {label} | {row['n']:,} | {row['median_s']:.3f} | "
                f"{_mrs(row['throughput'])} | {ratio} | {cpu} | {rss} | {row['runs']} |"
            )
    state = next((c for c in report["cases"] if c["name"] == "checkpoint_state"), None)
    if state:
        lines += [
            "",
            "## Checkpoint and restore of keyed state",
            "",
            "Final checkpoint of a job whose reduce holds the keys (barrier to `_metadata` "
            "written), and the time of a `JobRunner.run()` that restores it (read, verify, "
            "decode, load into the operator). One state file, local disk.",
            "",
            "| keys | checkpoint s | size MB | restore s | peak RSS MB | runs |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in state["variants"].values():
            if "checkpoint_seconds" not in row:
                lines.append(f"| {row['n']:,} | — | — | — | — | {row.get('errors', row.get('skipped'))} |")
                continue
            lines.append(
                f"| {row['n']:,} | {row['checkpoint_seconds']:.3f} | "
                f"{row['checkpoint_bytes'] / 1e6:.1f} | {row['restore_seconds']:.3f} | "
                f"{row['peak_rss_mb']:.0f} | {row['runs']} |"
            )
    timeline = report.get("timeline", {})
    if timeline:
        lines += [
            "",
            "## Throughput while checkpointing",
            "",
            "From the on_tick samples (every ~50 ms) of the keyed count with checkpoints every "
            "1 s: records/s while a checkpoint is in flight versus otherwise.",
            "",
            "| vocabulary | M rec/s during checkpoints | M rec/s otherwise | checkpoint durations s |",
            "| --- | ---: | ---: | --- |",
        ]
        for name, stats in timeline.items():
            lines.append(
                f"| {name} | {_mrs(stats['records_per_s_during_checkpoints'])} | "
                f"{_mrs(stats['records_per_s_otherwise'])} | "
                f"{', '.join(str(d) for d in stats['checkpoint_durations_s'])} |"
            )
    if report.get("plot"):
        lines += ["", f"![throughput over time]({report['plot']})"]
    elif report.get("plot_note"):
        lines += ["", f"Plot: {report['plot_note']}"]
    profiles = report.get("profiles", {})
    if profiles:
        lines += ["", "## Profiles (cProfile, by own time)", ""]
        for name, prof in profiles.items():
            lines += [
                f"**{name}** ({prof['seconds']:.2f} s under the profiler; full text in `profile_{name}.txt`)",
                "",
                "| function | calls | own s | share |",
                "| --- | ---: | ---: | ---: |",
            ]
            for row in prof["top"][:10]:
                lines.append(
                    f"| `{row['function']}` | {row['calls']:,} | {row['tottime']:.3f} | {row['share']:.0%} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def sample_rates(samples: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """Midpoints and M records/s between consecutive ``(seconds, records)`` samples."""
    xs, ys = [], []
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t1 > t0:
            xs.append((t0 + t1) / 2)
            ys.append((c1 - c0) / (t1 - t0) / 1e6)
    return xs, ys


def draw_plot(timeline_runs: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Throughput over time with checkpoint spans; returns a note instead when impossible."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install matplotlib, or the bench extra): no plot"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, run) for name, run in timeline_runs.items() if run.get("samples")]
    if not runs:
        return "no timeline samples"
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), squeeze=False)
    for ax, (_, run) in zip(axes[:, 0], runs):
        xs, ys = sample_rates(run["samples"])
        ax.plot(xs, ys, lw=1.2, color="tab:blue", label="records/s read (50 ms windows)")
        first = True
        for c in run["checkpoints"]:
            end = c["end"] if c["end"] is not None else c["start"]
            ax.axvspan(
                c["start"],
                max(end, c["start"] + 0.005),
                color="tab:orange",
                alpha=0.25,
                label="checkpoint in flight (start → end)" if first else None,
            )
            ax.axvline(c["start"], color="tab:orange", lw=0.8)
            ax.axvline(end, color="tab:red", lw=0.8, ls="--")
            first = False
        ax.set_title(
            f"keyed count, checkpoints every 1 s: {run['title']} ({run['seconds']:.1f} s)", fontsize=10
        )
        ax.set_ylabel("M records/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the first scheduler round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


README_START = "<!-- results:start (written by benchmarks/run.py) -->"
README_END = "<!-- results:end -->"


def update_readme(markdown: str) -> None:
    """Put the latest results (and plot) between the markers of benchmarks/README.md."""
    readme = ROOT / "benchmarks" / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return
    body = markdown.split("\n", 1)[1].replace("## ", "### ")
    body = body.replace("](throughput.png)", "](results/throughput.png)")
    body = body.replace("`profile_", "`results/profile_")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_START}\n{body.strip()}\n{README_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one run each (smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--only", action="append", default=[], help="run only these cases")
    parser.add_argument("--timeout", type=float, default=600.0, help="per measurement, seconds")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    cases = [c for c in build_cases(args.quick) if not args.only or c.name in args.only]
    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onceflow-bench-") as tmp:
        for case in cases:
            log(f"{case.name}: {case.title}")
            run_cases([case], tmp, args.timeout, log)
    wall = time.perf_counter() - started
    machine["load_average_at_end"] = list(os.getloadavg())

    summary = {case.name: summarise(case) for case in cases}
    report: dict[str, Any] = {
        "machine": machine,
        "quick": args.quick,
        "wall_seconds": wall,
        "targets": targets(summary),
        "cases": [
            {"name": c.name, "title": c.title, "reps": c.reps, "variants": summary[c.name]} for c in cases
        ],
    }
    timeline_runs = {
        name: runs[0]
        for c in cases
        if c.name == "timeline"
        for name, runs in c.runs.items()
        if runs and "samples" in runs[0]
    }
    report["timeline"] = {name: timeline_stats(run) for name, run in timeline_runs.items()}
    report["timeline_runs"] = timeline_runs
    profiles: dict[str, Any] = {}
    for c in cases:
        if c.name != "profile":
            continue
        for name, runs in c.runs.items():
            if runs and "top" in runs[0]:
                (out / f"profile_{name}.txt").write_text(runs[0]["text"], encoding="utf-8")
                profiles[name] = {"seconds": runs[0]["seconds"], "top": runs[0]["top"]}
    report["profiles"] = profiles
    if timeline_runs:
        note = draw_plot(timeline_runs, out / "throughput.png")
        if note is None:
            report["plot"] = "throughput.png"
        else:
            report["plot_note"] = note
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    markdown = render_markdown(report)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    if out.resolve() == (ROOT / "benchmarks" / "results").resolve() and not args.quick:
        update_readme(markdown)
    log(f"wrote {out / 'results.md'} and {out / 'results.json'} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
