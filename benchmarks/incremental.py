"""Incremental against full checkpoints of the heap backend, measured in one run.

Three measurements:

* ``bytes``: 10,000,000 keys in a reduce operator's ``HeapKeyedState``;
  per interval 1% of the keys, drawn at random (so every key group), get a
  new value. A full checkpoint writes every entry; an incremental one writes
  what changed. Both go through the engine's own ``SnapshotWriter`` to a
  local directory, and the bytes are those of the files each checkpoint wrote
  (including any compaction it did). The barrier-time capture is timed too.
* ``restore``: the newest incremental checkpoint of ``bytes`` (a base and a
  chain of deltas per segment) read, verified, decoded and loaded into a
  ``HeapKeyedState`` through the restore code; the full checkpoint likewise.
* ``restore`` (``--only restore``): chains of ``--keys`` keys after
  ``--intervals`` incremental checkpoints restored ``--repeats`` times, wall
  and CPU seconds each (the full checkpoint is not written). With
  ``--record`` its figures are kept in ``incremental.json`` under
  ``restore_chain`` (with the command and the load average), which a full
  run carries over.
* ``anatomy`` (``--only anatomy``): one incremental run of ``throughput``'s
  job; the rate in 10 ms bins around each steady checkpoint's trigger, against
  the same run's rate just before the triggers, and the processing a
  checkpoint costs (what inside spans cannot show: how deep and how long).
* ``throughput``: the engine's keyed count (``benchmarks.cases``) over
  1,000,000 distinct words (the state), then 15,000,000 words of a
  10,000-word vocabulary, checkpoints every 1 s: full, incremental, and off.
  Sampled every ~50 ms; the records per second inside checkpoint spans are
  compared with the rate of the run without checkpoints over the same phase.

Run: ``python benchmarks/incremental.py [--keys 10000000] [--out benchmarks/results]``;
it writes ``incremental.md``, ``incremental.json`` and ``incremental_throughput.png``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cases import TimelineSampler, _keyed_count_job
from benchmarks.common import CountingSink, SliceSource, make_words, vocabulary
from benchmarks.run import sample_rates
from onceflow.engine.checkpoint.restore import _load_chains, _load_full
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.checkpoint.writer import SnapshotWriter
from onceflow.engine.coordinator import CoordinatorSettings
from onceflow.engine.executors.local import ExecutionSettings
from onceflow.engine.runner import JobRunner
from onceflow.operators.base import OperatorSnapshot
from onceflow.state_backends.heap import HeapKeyedState
from onceflow.state_backends.key_groups import KeyGroupRange


def _write(writer: SnapshotWriter, checkpoint_id: int, snap: OperatorSnapshot) -> list:
    writer.submit(checkpoint_id, (0, 0), [("count", snap)])
    ack = writer.acks.get()
    writer.outstanding -= 1
    if ack.error is not None:
        raise ack.error
    return ack.handles


def _written(handles: list, seen: set[str]) -> int:
    """Bytes of the files ``handles`` list for the first time (a checkpoint's own and any compaction output).

    A compaction runs after a checkpoint's ack, so its new base is first
    listed, and counted, by the next checkpoint.
    """
    new = [h for h in handles if h.path not in seen]
    seen.update(h.path for h in new)
    return sum(h.bytes for h in new)


def bytes_and_restore(keys: int, intervals: int, tmp: str) -> dict[str, Any]:
    """Full and incremental checkpoints of ``keys`` keys with 1% random changes per interval."""
    rng = random.Random(13)
    names = [f"k{i}" for i in range(keys)]
    state = HeapKeyedState()
    values = state.table("value")
    values.update(zip(names, range(keys)))
    full_store = CheckpointStore(tempfile.mkdtemp(prefix="full-", dir=tmp), "bench")
    inc_store = CheckpointStore(tempfile.mkdtemp(prefix="inc-", dir=tmp), "bench")
    full_writer = SnapshotWriter(full_store, 128)
    inc_writer = SnapshotWriter(inc_store, 128)

    t = time.perf_counter()
    capture = state.capture()
    full_capture_s = time.perf_counter() - t
    t = time.perf_counter()
    full_handles = _write(full_writer, 1, OperatorSnapshot(keyed_state=capture.tables))
    full_write_s = time.perf_counter() - t
    full_bytes = _written(full_handles, set())
    del capture

    state.incremental = True
    dirty = state.dirty_keys("value")
    assert dirty is not None
    dirty.update(names)  # as in a run that wrote every key before its first checkpoint
    first = state.capture()
    handles = _write(inc_writer, 1, OperatorSnapshot(keyed_state=first.tables, keyed_kind=first.kind))
    seen = {h.path for h in handles}
    del first
    per_checkpoint = []
    changed = keys // 100
    for n in range(2, intervals + 2):
        batch = rng.sample(names, changed)
        for key in batch:
            values[key] += 1
        dirty.update(batch)
        t = time.perf_counter()
        capture = state.capture()
        capture_s = time.perf_counter() - t
        snap = OperatorSnapshot(keyed_state=capture.tables, keyed_kind=capture.kind, deleted=capture.deleted)
        t = time.perf_counter()
        handles = _write(inc_writer, n, snap)
        write_s = time.perf_counter() - t
        written = _written(handles, seen)
        per_checkpoint.append(
            {
                "checkpoint": n,
                "changed_keys": changed,
                "bytes": written,
                "ratio_to_full": written / full_bytes,
                "capture_s": round(capture_s, 4),
                "write_s": round(write_s, 3),
                "files_listed": len(handles),
                "compacted": any(h.kind == "base" and h.created == n for h in handles),
            }
        )
        print(f"checkpoint {n}: {written:,} bytes ({written / full_bytes:.2%}), capture {capture_s:.3f} s")
    full_writer.shutdown()
    inc_writer.shutdown()

    everything = KeyGroupRange(0, 128)
    restores = {}
    for label, store, hs, load in (
        ("incremental", inc_store, handles, _load_chains),
        ("full", full_store, full_handles, _load_full),
    ):
        t = time.perf_counter()
        _, keyed = load(store, hs, everything)
        restored = HeapKeyedState()
        restored.restore(keyed)
        seconds = time.perf_counter() - t
        # the incremental chain must give the live state; the full checkpoint predates the changes
        if label == "incremental":
            assert restored.tables["value"] == values, "the incremental restore differs from the live state"
        assert len(restored) == keys, (label, len(restored))
        restores[label] = {"seconds": round(seconds, 2), "files": len(hs), "keys": len(restored)}
        del keyed, restored
        print(f"restore {label}: {seconds:.2f} s, {len(hs)} files")
    ratios = [c["ratio_to_full"] for c in per_checkpoint]
    return {
        "keys": keys,
        "changed_per_interval": changed,
        "full": {
            "bytes": full_bytes,
            "capture_s": round(full_capture_s, 3),
            "write_s": round(full_write_s, 2),
        },
        "incremental": per_checkpoint,
        "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "ratio_mean": statistics.fmean(ratios),
        "restore": restores,
    }


def restore_chain(keys: int, intervals: int, tmp: str, repeats: int = 3) -> dict[str, Any]:
    """Restore ``keys`` keys from the chains the writer left after ``intervals`` incremental checkpoints.

    The chains are made as in :func:`bytes_and_restore` (a delta of every key,
    then 1% random changes per interval, paced compaction on), without the full
    checkpoint beside them. Each restore is timed in wall and process CPU
    seconds: read and verify, merge and decode (``_load_chains``), then the
    load into a ``HeapKeyedState``; ``repeats`` restores, each checked against
    the live state.
    """
    rng = random.Random(13)
    names = [f"k{i}" for i in range(keys)]
    state = HeapKeyedState()
    state.incremental = True
    values = state.table("value")
    values.update(zip(names, range(keys)))
    dirty = state.dirty_keys("value")
    assert dirty is not None
    dirty.update(names)
    store = CheckpointStore(tempfile.mkdtemp(prefix="restore-", dir=tmp), "bench")
    writer = SnapshotWriter(store, 128)
    t = time.perf_counter()
    handles: list = []
    for n in range(1, intervals + 2):
        if n > 1:
            batch = rng.sample(names, keys // 100)
            for key in batch:
                values[key] += 1
            dirty.update(batch)
        capture = state.capture()
        snap = OperatorSnapshot(keyed_state=capture.tables, keyed_kind=capture.kind, deleted=capture.deleted)
        handles = _write(writer, n, snap)
        del capture, snap
    writer.shutdown()
    seconds = time.perf_counter() - t
    print(f"{intervals + 1} checkpoints written in {seconds:.1f} s; {len(handles)} files listed")
    everything = KeyGroupRange(0, 128)
    runs = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        _, keyed = _load_chains(store, handles, everything)
        t1, c1 = time.perf_counter(), time.process_time()
        restored = HeapKeyedState()
        restored.restore(keyed)
        t2, c2 = time.perf_counter(), time.process_time()
        assert restored.tables["value"] == values, "the restore differs from the live state"
        run = {
            "wall_s": round(t2 - t, 2),
            "cpu_s": round(c2 - c, 2),
            "load_chains_wall_s": round(t1 - t, 2),
            "load_chains_cpu_s": round(c1 - c, 2),
            "into_state_wall_s": round(t2 - t1, 2),
            "load_average": round(os.getloadavg()[0], 1),
        }
        print(f"restore of {keys:,} keys: {run}")
        runs.append(run)
        del keyed, restored
    return {
        "keys": keys,
        "files": len(handles),
        "runs": runs,
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
    }


class _CpuSampler(TimelineSampler):
    """A :class:`TimelineSampler` that also records the process's CPU seconds with every sample.

    Records per CPU second do not depend on what else the machine runs, so
    on a shared machine they compare runs more reliably than records per
    wall second; the process's CPU includes the background writer's, so a
    checkpoint's whole cost is counted.

    It also samples at the first scheduler round that sees a checkpoint
    pending and at the first that sees it completed, and keeps those rounds'
    times as the checkpoint's span (``tick_spans``): an incremental checkpoint
    may take less than the sampling period, and a rate inside spans needs
    samples at their edges.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[float] = []
        self.thread_cpu: list[float] = []
        """CPU seconds of the thread that processes records (the local executor calls the hook on it)."""
        self.tick_starts: dict[int, float] = {}
        self.tick_ends: dict[int, float] = {}

    def __call__(self, executor: Any, now: float) -> None:
        coordinator = executor.coordinator
        pending = coordinator.pending.checkpoint_id if coordinator.pending is not None else None
        done = coordinator.last_completed.checkpoint_id if coordinator.last_completed is not None else None
        started = pending is not None and pending not in self.tick_starts
        ended = done is not None and done not in self.tick_ends
        if started or ended:
            self.last = -math.inf  # sample this round
        before = len(self.samples)
        super().__call__(executor, now)
        new = len(self.samples) - before
        self.cpu.extend([time.process_time()] * new)
        self.thread_cpu.extend([time.thread_time()] * new)
        if started:
            self.tick_starts[pending] = self.samples[-1][0]
        if ended:
            self.tick_ends[done] = self.samples[-1][0]


def _timeline(mode: str, words: list[str], tmp: str, every: float = 0.05) -> dict[str, Any]:
    """Run the keyed count with checkpoints ``mode`` (off, full, incremental), sampled every ``every`` s."""
    sink = CountingSink()
    sampler = _CpuSampler()
    sampler.every = every
    interval = 1e9 if mode == "off" else 1.0
    settings = ExecutionSettings(
        batch_size=1024,
        checkpoint=CoordinatorSettings(interval=interval, timeout=120.0),
        incremental_checkpoints=mode == "incremental",
    )
    runner = JobRunner(
        _keyed_count_job(SliceSource(words), sink),
        checkpoint_dir=tempfile.mkdtemp(prefix=f"tl-{mode}-", dir=tmp),
        settings=settings,
        on_tick=sampler,
    )
    t = time.perf_counter()
    result = runner.run()
    seconds = time.perf_counter() - t
    assert sink.committed == len(words), (sink.committed, len(words))
    spans = [
        (sampler.starts[c], sampler.ends[c])
        for c in sorted(sampler.starts)
        if c in sampler.ends and c != result.checkpoint_id
    ]
    return {
        "seconds": round(seconds, 2),
        "samples": sampler.samples,
        "cpu": sampler.cpu,
        "thread_cpu": sampler.thread_cpu,
        "spans": spans,
        "tick_spans": [
            (sampler.tick_starts[c], sampler.tick_ends[c])
            for c in sorted(sampler.tick_starts)
            if c in sampler.tick_ends and c != result.checkpoint_id
        ],
        "durations": [round(sampler.durations[c], 3) for c in sorted(sampler.durations)],
        "bytes": [sampler.sizes.get(c) for c in sorted(sampler.durations)],
    }


def _rate(
    samples: list[tuple[float, int]],
    spans: list[tuple[float, float]] | None,
    after: int,
    cpu: list[float] | None = None,
    *,
    until: int | None = None,
    since: float = 0.0,
) -> float:
    """Records per second between consecutive samples past ``after`` records, inside ``spans`` if given.

    Per wall second, or per CPU second of the process when ``cpu`` (one reading per sample) is given.
    Samples from ``until`` records on (all read: the final checkpoint, nothing left to process) and
    before ``since`` seconds are left out.
    """
    records = 0.0
    seconds = 0.0
    for i, ((t0, c0), (t1, c1)) in enumerate(zip(samples, samples[1:])):
        if c0 < after or t0 < since or (until is not None and c0 >= until):
            continue
        if spans is not None and not any(s <= t0 and t1 <= e for s, e in spans):
            continue
        records += c1 - c0
        seconds += t1 - t0 if cpu is None else cpu[i + 1] - cpu[i]
    return records / seconds if seconds else float("nan")


def throughput(state_keys: int, words: int, tmp: str, repeats: int = 3) -> dict[str, Any]:
    """Each mode ``repeats`` times, interleaved (off, full, incremental, then rotated), medians of the ratios.

    The machine's load drifts; interleaving exposes every mode to the same
    drift and the median of per-round ratios drops an outlier round.
    """
    data = vocabulary(state_keys) + make_words(words)
    modes = ["off", "full", "incremental"]
    rounds: list[dict[str, Any]] = []
    total = len(data)
    for r in range(repeats):
        order = modes[r % 3 :] + modes[: r % 3]
        runs_of_round: dict[str, Any] = {}
        for mode in order:
            load = os.getloadavg()[0]
            runs_of_round[mode] = _timeline(mode, data, tmp)
            runs_of_round[mode]["load"] = (round(load, 1), round(os.getloadavg()[0], 1))
        rounds.append(runs_of_round)
    for runs in rounds:
        off = runs["off"]
        off["rate"] = _rate(off["samples"], None, state_keys, until=total)
        off["cpu_rate"] = _rate(off["samples"], None, state_keys, off["cpu"], until=total)
        off["thread_cpu_rate"] = _rate(off["samples"], None, state_keys, off["thread_cpu"], until=total)
        for mode in ("full", "incremental"):
            run = runs[mode]
            samples = run["samples"]
            # Steady: checkpoints started after the end of the first one started once the state is
            # filled. An incremental run's first checkpoints carry the fill (every key new), as large
            # as a full checkpoint, and so does the first one after it (the keys since the previous).
            filled = next((t for t, c in samples if c >= state_keys), float("inf"))
            steady_from = next((e for s, e in run["tick_spans"] if s >= filled), float("inf"))
            run["steady_from_s"] = round(steady_from, 2)
            steady = [(s, e) for s, e in run["tick_spans"] if s >= steady_from]
            run["steady_checkpoints"] = len(steady)
            for prefix, spans in (("steady_", steady), ("steady_whole_", None)):
                rate = _rate(samples, spans, state_keys, until=total, since=steady_from)
                run[f"{prefix}ratio_during_to_off"] = rate / off["rate"]
                cpu_rate = _rate(samples, spans, state_keys, run["cpu"], until=total, since=steady_from)
                run[f"{prefix}cpu_ratio_during_to_off"] = cpu_rate / off["cpu_rate"]
                thread_rate = _rate(
                    samples, spans, state_keys, run["thread_cpu"], until=total, since=steady_from
                )
                run[f"{prefix}thread_cpu_ratio_during_to_off"] = thread_rate / off["thread_cpu_rate"]
            # What a steady checkpoint costs processing, whatever its span: the span's length times the
            # share of the off run's rate it did not reach, in ms per checkpoint.
            span_s = sum(e - s for s, e in steady)
            run["steady_lost_ms_per_checkpoint"] = (
                1000 * span_s * (1 - run["steady_ratio_during_to_off"]) / len(steady) if steady else 0.0
            )
            run["rate_during_checkpoints"] = _rate(samples, run["tick_spans"], state_keys, until=total)
            run["ratio_during_to_off"] = run["rate_during_checkpoints"] / off["rate"]
            cpu_rate = _rate(samples, run["tick_spans"], state_keys, run["cpu"], until=total)
            run["cpu_ratio_during_to_off"] = cpu_rate / off["cpu_rate"]
            run["ratio_whole_to_off"] = _rate(samples, None, state_keys, until=total) / off["rate"]
    runs = dict(rounds[len(rounds) // 2])  # the plot and the per-run columns: the middle round
    for mode in ("full", "incremental"):
        for figure in (
            "ratio_during_to_off",
            "cpu_ratio_during_to_off",
            "ratio_whole_to_off",
            "steady_ratio_during_to_off",
            "steady_cpu_ratio_during_to_off",
            "steady_thread_cpu_ratio_during_to_off",
            "steady_whole_ratio_during_to_off",
            "steady_whole_cpu_ratio_during_to_off",
            "steady_whole_thread_cpu_ratio_during_to_off",
            "steady_lost_ms_per_checkpoint",
        ):
            runs[mode] = {
                **runs[mode],
                f"{figure}_median": statistics.median(r[mode][figure] for r in rounds),
            }
            runs[mode][f"{figure}_rounds"] = [round(r[mode][figure], 3) for r in rounds]
        runs[mode]["load_rounds"] = [r[mode]["load"] for r in rounds]
    return runs


def anatomy(state_keys: int, words: int, tmp: str, bin_s: float = 0.01) -> dict[str, Any]:
    """Where a steady incremental checkpoint costs processing: the rate in ``bin_s`` bins after its trigger.

    One run, checkpoints every 1 s. Each bin's rate is compared with the same
    run's rate in the 200 ms before the triggers (median over the steady
    checkpoints), so a machine whose speed drifts between runs does not skew
    it; ``thread_cpu`` is the processing thread's CPU seconds per wall second
    in the bin (below 1: it waited, for the GIL or the CPU). The processing a
    checkpoint costs is the sum over its span of the rate it did not reach.
    """
    data = vocabulary(state_keys) + make_words(words)
    run = _timeline("incremental", data, tmp, every=0.0)  # a sample every scheduler round
    rounds = [(t, n, cpu) for (t, n), cpu in zip(run["samples"], run["thread_cpu"])]
    times = [r[0] for r in rounds]

    def rate(a: float, b: float) -> tuple[float, float] | None:
        i, j = bisect.bisect_left(times, a), bisect.bisect_left(times, b) - 1
        if j <= i:
            return None
        dt = rounds[j][0] - rounds[i][0]
        return (rounds[j][1] - rounds[i][1]) / dt, (rounds[j][2] - rounds[i][2]) / dt

    # steady: triggered once the state is filled and the fill's checkpoints are done, before the input ends
    filled = next(t for t, n, _ in rounds if n >= state_keys + 2_000_000)
    last = next(t for t, n, _ in rounds if n >= len(data) - 200_000)
    steady = [(t, end) for t, end in run["tick_spans"] if filled <= t <= last - 1.0]
    before = [r[0] for t, _ in steady if (r := rate(t - 0.2, t)) is not None]
    baseline = statistics.median(before)
    bins = []
    for k in range(-5, 31):
        found = [r for t, _ in steady if (r := rate(t + k * bin_s, t + (k + 1) * bin_s)) is not None]
        if found:
            bins.append(
                {
                    "from_ms": round(k * bin_s * 1000),
                    "rate_of_before": statistics.median(r[0] for r in found) / baseline,
                    "thread_cpu": statistics.median(r[1] for r in found),
                }
            )
    lost = []
    for t, end in steady:
        bins_in = [rate(t + k * bin_s, t + (k + 1) * bin_s) for k in range(int((end - t) / bin_s) + 1)]
        lost.append(sum(bin_s * (1 - r[0] / baseline) for r in bins_in if r is not None))
    return {
        "steady_checkpoints": len(steady),
        "rate_before_triggers": round(baseline),
        "span_ms_median": round(1000 * statistics.median(e - t for t, e in steady)),
        "lost_ms_per_checkpoint_median": round(1000 * statistics.median(lost), 1),
        "bins": bins,
    }


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = {"off": "grey", "full": "tab:red", "incremental": "tab:blue"}
    for mode, run in runs.items():
        xs, ys = sample_rates(run["samples"])
        label = {"off": "checkpoints off", "full": "heap, full", "incremental": "heap, incremental"}[mode]
        ax.plot(xs, ys, color=colors[mode], label=label, linewidth=1)
        for start, end in run.get("spans", []):
            ax.axvspan(start, end, color=colors[mode], alpha=0.08)
    ax.set_xlabel("seconds")
    ax.set_ylabel("M records/s")
    ax.set_title("Keyed count, 1,000,000 keys in state, checkpoints every 1 s (shaded: checkpoint in flight)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict[str, Any]) -> str:
    b = result["bytes"]
    t = result["throughput"]
    lines = [
        "# Incremental checkpoints (heap backend)",
        "",
        f"Machine: {os.cpu_count()} cores, shared; one run of `python benchmarks/incremental.py`; "
        f"load average (1 min) {result['load'][0]:.1f} at start, {result['load'][1]:.1f} at end.",
        "",
        f"## Bytes per checkpoint: {b['keys']:,} keys, {b['changed_per_interval']:,} random keys changed "
        "per interval",
        "",
        "| checkpoint | bytes written | of a full checkpoint | capture at the barrier s | write s | "
        "files listed | compaction |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| full | {b['full']['bytes']:,} | 100% | {b['full']['capture_s']} | {b['full']['write_s']} | 1 | |",
    ]
    for c in b["incremental"]:
        lines.append(
            f"| incremental {c['checkpoint']} | {c['bytes']:,} | {c['ratio_to_full']:.2%} | "
            f"{c['capture_s']} | {c['write_s']} | {c['files_listed']} | {'yes' if c['compacted'] else ''} |"
        )
    lines += [
        "",
        f"Median {b['ratio_median']:.2%}, mean (compactions included) {b['ratio_mean']:.2%}, "
        f"max {b['ratio_max']:.2%} of a full checkpoint.",
        "",
        f"## Restore of {b['keys']:,} keys (read, verify, decode, load into the heap state)",
        "",
        "| checkpoint | seconds | files |",
        "| --- | ---: | ---: |",
    ]
    for label, r in b["restore"].items():
        lines.append(f"| {label} | {r['seconds']} | {r['files']} |")
    lines += [
        "",
        "## Throughput during checkpoints: 1,000,000 keys, checkpoints every 1 s",
        "",
        f"{len(t['incremental']['ratio_during_to_off_rounds'])} interleaved rounds (off, full, incremental, "
        "then rotated); ratios are the median over the rounds of each round's ratio to its own "
        "checkpoints-off run, after the state is filled. Wall: records per wall second inside checkpoint "
        "spans. CPU: records per CPU second of the process (background writer included) inside "
        "checkpoint spans, which other jobs on the machine skew less. After the fill: only checkpoints "
        "started once the keys are all in the state (an incremental run's first checkpoints carry the "
        "fill, every key new, as large as a full one). Processing thread CPU: per CPU second of the "
        "thread that processes records only (the barrier's capture, not the writer's work; a writer "
        "holding the GIL shows in wall, not here). Whole: the whole phase, checkpoints or not. "
        "Steady phase: every record after the end of the first checkpoint started once the state is "
        "filled, checkpoints or not. Lost per checkpoint: a steady span's length times the share of "
        "the off run's rate it did not reach (ms of processing a checkpoint costs, however long its span). "
        "Spans run from the scheduler round that first sees a checkpoint "
        "pending to the one that first sees it completed (sampled at both). Records read after the "
        "last one (the final checkpoint) count in no rate. "
        "The other columns are the middle round's.",
        "",
        "| run | wall s | M rec/s inside checkpoint spans | wall, of off (median) | CPU, of off (median) | "
        "wall, spans after the fill | CPU, spans after the fill | processing thread CPU, after the fill "
        "| whole, of off (median) | steady phase: wall | steady phase: processing thread CPU "
        "| lost per steady checkpoint ms (median) | per round (wall) | load average per round "
        "| checkpoint durations s |",
        "| --- " + "| ---: " * 11 + "| --- | --- | --- |",
        f"| checkpoints off | {t['off']['seconds']} | {t['off']['rate'] / 1e6:.2f} (whole run) | 100% | 100% "
        "| 100% | 100% | 100% | 100% | 100% | 100% | | | | |",
    ]
    for mode in ("full", "incremental"):
        r = t[mode]
        per_round = ", ".join(f"{x:.0%}" for x in r["ratio_during_to_off_rounds"])
        lines.append(
            f"| heap, {mode} | {r['seconds']} | {r['rate_during_checkpoints'] / 1e6:.2f} | "
            f"{r['ratio_during_to_off_median']:.0%} | {r['cpu_ratio_during_to_off_median']:.0%} | "
            f"{r['steady_ratio_during_to_off_median']:.0%} | "
            f"{r['steady_cpu_ratio_during_to_off_median']:.0%} | "
            f"{r['steady_thread_cpu_ratio_during_to_off_median']:.0%} | "
            f"{r['ratio_whole_to_off_median']:.0%} | "
            f"{r['steady_whole_ratio_during_to_off_median']:.0%} | "
            f"{r['steady_whole_thread_cpu_ratio_during_to_off_median']:.0%} | "
            f"{r['steady_lost_ms_per_checkpoint_median']:.0f} | {per_round} "
            f"| {', '.join(f'{a}-{b}' for a, b in r['load_rounds'])} "
            f"| {', '.join(str(d) for d in r['durations'])} |"
        )
    lines += ["", "![throughput](incremental_throughput.png)", ""]
    return "\n".join(lines)


def _recorded(out: Path) -> dict[str, Any]:
    """Return the figures last written to ``out/incremental.json`` (none yet: empty)."""
    path = out / "incremental.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument(
        "--intervals",
        type=int,
        default=140,
        help="incremental checkpoints (140: two compaction cycles of 64 and more)",
    )
    parser.add_argument("--state-keys", type=int, default=1_000_000)
    parser.add_argument("--words", type=int, default=15_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the throughput runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--only",
        choices=("bytes", "throughput", "restore", "anatomy"),
        help="run one measurement and print its figures, writing no results (for development)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="with --only restore: also keep its figures in <out>/incremental.json under restore_chain",
    )
    args = parser.parse_args()
    if args.record and args.only != "restore":
        parser.error("--record goes with --only restore")
    load_start = os.getloadavg()[0]
    if args.only is not None:
        with tempfile.TemporaryDirectory(prefix="onceflow-incremental-") as tmp:
            if args.only == "bytes":
                figures = bytes_and_restore(args.keys, args.intervals, tmp)
                figures.pop("incremental")
            elif args.only == "restore":
                figures = restore_chain(args.keys, args.intervals, tmp, args.repeats)
            elif args.only == "anatomy":
                figures = anatomy(args.state_keys, args.words, tmp)
            else:
                figures = throughput(args.state_keys, args.words, tmp, args.repeats)
                figures = {
                    mode: {
                        k: v
                        for k, v in run.items()
                        if k.endswith(("_median", "_rounds"))
                        or k in ("seconds", "durations", "steady_from_s", "steady_checkpoints", "load")
                    }
                    for mode, run in figures.items()
                }
        if args.only == "anatomy":
            print(json.dumps({k: v for k, v in figures.items() if k != "bins"}))
            print("ms after trigger | rate, of the 200 ms before | processing thread CPU per wall s")
            for b in figures["bins"]:
                print(f"{b['from_ms']:>16} | {b['rate_of_before']:26.2f} | {b['thread_cpu']:.2f}")
        else:
            print(json.dumps(figures, indent=1, default=str))
        print(f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
        if args.record:
            figures["command"] = "python benchmarks/incremental.py " + " ".join(sys.argv[1:])
            figures["load"] = (load_start, os.getloadavg()[0])
            args.out.mkdir(parents=True, exist_ok=True)
            recorded = _recorded(args.out)
            recorded["restore_chain"] = figures
            (args.out / "incremental.json").write_text(json.dumps(recorded, indent=1, default=str))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onceflow-incremental-") as tmp:
        result: dict[str, Any] = {"throughput": throughput(args.state_keys, args.words, tmp, args.repeats)}
        result["bytes"] = bytes_and_restore(args.keys, args.intervals, tmp)
    result["load"] = (load_start, os.getloadavg()[0])
    if "restore_chain" in _recorded(args.out):
        result["restore_chain"] = _recorded(args.out)["restore_chain"]
    plot(result["throughput"], args.out / "incremental_throughput.png")
    (args.out / "incremental.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "incremental.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
