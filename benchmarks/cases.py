"""One benchmark measurement per process: ``python -m benchmarks.cases CASE VARIANT --n N --tmp DIR``.

``benchmarks.run`` starts this module once per (case, variant, repetition), so
each measurement has a fresh interpreter and its own peak RSS. It prints one
JSON object on its last stdout line::

    {"seconds": ..., "records": ..., "max_rss_mb": ..., "children_max_rss_mb": ..., ...}

``seconds`` covers the measured work only: input data is built before the
clock starts. Engine runs are end to end (plan, executor, final checkpoint and
commit) with checkpoints on the local disk under ``--tmp``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CountingSink,
    RangeSource,
    SliceSource,
    add,
    is_short,
    key_of,
    make_words,
    spin,
    to_pair,
    vocabulary,
    write_words_file,
)

JOBS_DIR = Path(__file__).resolve().parent / "jobs"
CHECKPOINTS_OFF = 1e9
"""A checkpoint interval that never comes: only the final checkpoint is taken."""


# -- helpers -------------------------------------------------------------------


def _settings(interval: float, batch_size: int = 1024) -> Any:
    from onceflow import CoordinatorSettings, ExecutionSettings

    return ExecutionSettings(
        batch_size=batch_size, checkpoint=CoordinatorSettings(interval=interval, timeout=120.0)
    )


def _run_engine(job: Any, tmp: str, interval: float, **kwargs: Any) -> tuple[float, Any, Any]:
    """Run ``job`` with checkpoints under ``tmp``; return (seconds, result, runner)."""
    from onceflow import JobRunner

    checkpoint_dir = tempfile.mkdtemp(prefix="chk-", dir=tmp)
    runner = JobRunner(job, checkpoint_dir=checkpoint_dir, settings=_settings(interval), **kwargs)
    start = time.perf_counter()
    result = runner.run()
    seconds = time.perf_counter() - start
    return seconds, result, runner


def _keyed_count_job(source: Any, sink: CountingSink) -> Any:
    from onceflow import Job

    job = Job("bench-keyed-count")
    (
        job.source(source, name="words", uid="words")
        .map(to_pair, name="pair")
        .key_by(key_of)
        .reduce(add, name="count", uid="count")
        .sink(sink, name="count-sink", uid="count-sink")
    )
    return job


def _stateless_job(source: Any, sink: CountingSink) -> Any:
    from onceflow import Job

    job = Job("bench-stateless")
    (
        job.source(source, name="words", uid="words")
        .map(to_pair, name="pair")
        .filter(is_short, name="short")
        .sink(sink, name="count-sink", uid="count-sink")
    )
    return job


def _check(expected: int, got: int, what: str) -> None:
    if expected != got:
        msg = f"{what}: expected {expected} records, got {got}"
        raise AssertionError(msg)


# -- keyed count -----------------------------------------------------------------


def keyed_count_loop(words: list[str]) -> int:
    """The limit for per-record Python: the same user functions in one plain loop."""
    counts: dict[str, tuple[str, int]] = {}
    get = counts.get
    emitted = 0
    for word in words:
        pair = to_pair(word)
        key = key_of(pair)
        previous = get(key)
        if previous is not None:
            pair = add(previous, pair)
        counts[key] = pair
        emitted += 1  # the sink: count what is emitted
    return emitted


def case_keyed_count(variant: str, n: int, tmp: str) -> dict[str, Any]:
    if variant == "bytewax_recovery_1s":
        return _bytewax_keyed_count(n, tmp)
    words = make_words(n)
    if variant == "loop":
        start = time.perf_counter()
        emitted = keyed_count_loop(words)
        seconds = time.perf_counter() - start
        _check(n, emitted, variant)
        return {"seconds": seconds, "records": n}
    sink = CountingSink()
    if variant == "engine_filesource_ckpt_1s":
        path = os.path.join(tmp, "words.txt")
        write_words_file(path, words)
        from onceflow import FileSource

        source: Any = FileSource(path)
    else:
        source = SliceSource(words)
    interval = CHECKPOINTS_OFF if variant == "engine_ckpt_off" else 1.0
    seconds, result, _ = _run_engine(_keyed_count_job(source, sink), tmp, interval)
    _check(n, sink.committed, variant)
    return {"seconds": seconds, "records": n, "checkpoints": result.checkpoints_completed}


def _bytewax_keyed_count(n: int, tmp: str) -> dict[str, Any]:
    """The same job on Bytewax, with recovery on and a snapshot (epoch) every second."""
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    class _Partition(StatelessSinkPartition):
        def __init__(self, box: list[int]) -> None:
            self.box = box

        def write_batch(self, items: list) -> None:
            self.box[0] += len(items)

    class _CountingSink(DynamicSink):
        def __init__(self) -> None:
            self.box = [0]

        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
            return _Partition(self.box)

    def running_count(state: Any, pair: Any) -> tuple[Any, Any]:
        value = pair if state is None else add(state, pair)
        return value, value

    words = make_words(n)
    flow = Dataflow("bench_keyed_count")
    stream = op.input("words", flow, TestingSource(words, batch_size=1024))
    pairs = op.map("pair", stream, to_pair)
    keyed = op.key_on("key", pairs, key_of)
    counts = op.stateful_map("count", keyed, running_count)
    sink = _CountingSink()
    op.output("count_sink", counts, sink)
    db_dir = tempfile.mkdtemp(prefix="bytewax-", dir=tmp)
    init_db_dir(Path(db_dir), 1)
    start = time.perf_counter()
    run_main(
        flow,
        epoch_interval=timedelta(seconds=1),
        recovery_config=RecoveryConfig(Path(db_dir)),
    )
    seconds = time.perf_counter() - start
    _check(n, sink.box[0], "bytewax")
    return {"seconds": seconds, "records": n}


# -- stateless -------------------------------------------------------------------


def stateless_loop(words: list[str]) -> int:
    emitted = 0
    for word in words:
        pair = to_pair(word)
        if is_short(pair):
            emitted += 1
    return emitted


def case_stateless(variant: str, n: int, tmp: str) -> dict[str, Any]:
    words = make_words(n)
    if variant == "loop":
        start = time.perf_counter()
        emitted = stateless_loop(words)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "records": n, "emitted": emitted}
    sink = CountingSink()
    interval = CHECKPOINTS_OFF if variant == "engine_ckpt_off" else 1.0
    seconds, result, _ = _run_engine(_stateless_job(SliceSource(words), sink), tmp, interval)
    _check(stateless_loop(words), sink.committed, variant)
    return {
        "seconds": seconds,
        "records": n,
        "emitted": sink.committed,
        "checkpoints": result.checkpoints_completed,
    }


# -- scaling (process executor) ---------------------------------------------------


def process_executor_support() -> tuple[Callable[..., Any] | None, str]:
    """Return (make_runner, how) when a process executor exists, else (None, why not).

    ``make_runner(job, job_file, params, checkpoint_dir, parallelism, settings)``.
    Checks the runner's signature rather than assuming an API.
    """
    import inspect

    from onceflow import JobRunner

    params = inspect.signature(JobRunner.__init__).parameters
    if "executor" not in params:
        return None, "skipped: process executor not available (JobRunner has no executor=)"
    job_file_arg = next((p for p in ("job_file", "jobfile", "job_path") if p in params), None)

    def make_runner(
        job: Any,
        job_file: str,
        run_params: dict[str, str],
        checkpoint_dir: str,
        parallelism: int,
        settings: Any,
    ) -> Any:
        kwargs: dict[str, Any] = {
            "checkpoint_dir": checkpoint_dir,
            "parallelism": parallelism,
            "settings": settings,
            "params": run_params,
            "executor": "process",
        }
        if job_file_arg:
            kwargs[job_file_arg] = job_file
        return JobRunner(job, **kwargs)

    return make_runner, f"JobRunner(executor='process'{', ' + job_file_arg + '=...' if job_file_arg else ''})"


def _spin_share(n: int, start: int, step: int) -> None:
    for i in range(start, n, step):
        spin(i)


def _plain_processes(n: int, processes: int) -> float:
    """The machine's own ceiling: ``spin`` over the same numbers in forked processes, no engine."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    workers = [ctx.Process(target=_spin_share, args=(n, i, processes)) for i in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def case_scaling(variant: str, n: int, tmp: str) -> dict[str, Any]:
    if variant.startswith("plain_"):
        return {"seconds": _plain_processes(n, 2 if variant.endswith("p2") else 1), "records": n}
    from onceflow.engine.loader import load_job

    job_file = str(JOBS_DIR / "scaling.py")
    params = {"n": str(n), "shuffle": "0" if variant.endswith("_noshuffle") else "1"}
    job = load_job(job_file, params)
    checkpoint_dir = tempfile.mkdtemp(prefix="chk-", dir=tmp)
    settings = _settings(1.0)
    parallelism = 2 if "_p2" in variant else 1
    if variant.startswith("local"):
        from onceflow import JobRunner

        runner = JobRunner(
            job,
            checkpoint_dir=checkpoint_dir,
            parallelism=parallelism,
            settings=settings,
            params=params,
        )
    else:
        make_runner, how = process_executor_support()
        if make_runner is None:
            return {"skipped": how}
        runner = make_runner(job, job_file, params, checkpoint_dir, parallelism, settings)
    start = time.perf_counter()
    result = runner.run()
    seconds = time.perf_counter() - start
    _check(n, result.records_read, variant)
    return {"seconds": seconds, "records": n, "checkpoints": result.checkpoints_completed}


# -- map_batches over Arrow --------------------------------------------------------

ARROW_BATCH_ROWS = 65_536


def _arrow_input(n: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    price = pc.multiply(pc.random(n, initializer=7), 100.0)
    qty = pc.add(pc.cast(pc.floor(pc.multiply(pc.random(n, initializer=8), 9.0)), pa.int64()), 1)
    return pa.record_batch({"price": price, "qty": qty})


def amount_over_250(batch: Any) -> Any:
    """The vectorized user function: amount = price * qty, keep amounts over 250."""
    import pyarrow as pa
    import pyarrow.compute as pc

    amount = pc.multiply(batch["price"], batch["qty"])
    keep = pc.greater(amount, 250.0)
    return pa.RecordBatch.from_arrays(
        [pc.filter(batch["qty"], keep), pc.filter(amount, keep)], names=["qty", "amount"]
    )


def _amount_as_one_record(batch: Any) -> list:
    return [amount_over_250(batch)]


def case_map_batches(variant: str, n: int, tmp: str) -> dict[str, Any]:
    from onceflow import Job

    data = _arrow_input(n)
    if variant == "pyarrow_compute":
        start = time.perf_counter()
        rows = 0
        for offset in range(0, n, ARROW_BATCH_ROWS):
            rows += amount_over_250(data.slice(offset, ARROW_BATCH_ROWS)).num_rows
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "records": n, "rows_out": rows}
    as_rows = variant == "engine_map_batches_to_rows"
    sink = CountingSink(arrow=not as_rows)
    job = Job("bench-map-batches")
    (
        job.source(SliceSource(data, batch_size=ARROW_BATCH_ROWS), name="arrow", uid="arrow")
        .map_batches(amount_over_250 if as_rows else _amount_as_one_record, arrow=True, name="amount")
        .sink(sink, name="count-sink", uid="count-sink")
    )
    seconds, _, _ = _run_engine(job, tmp, 1.0)
    return {"seconds": seconds, "records": n, "rows_out": sink.committed}


# -- checkpoint size, duration and restore --------------------------------------------


def case_checkpoint_state(variant: str, n: int, tmp: str) -> dict[str, Any]:
    """Fill keyed state with ``n`` keys, take the final checkpoint, then restore it."""
    from onceflow import JobRunner

    keys = vocabulary(n)
    checkpoint_dir = tempfile.mkdtemp(prefix="chk-", dir=tmp)
    runner = JobRunner(
        _keyed_count_job(SliceSource(keys), CountingSink()),
        checkpoint_dir=checkpoint_dir,
        settings=_settings(CHECKPOINTS_OFF),
    )
    result = runner.run()
    meta = runner.store.read_metadata(result.checkpoint_id)
    restorer = JobRunner(_keyed_count_job(SliceSource(keys), CountingSink()), checkpoint_dir=checkpoint_dir)
    start = time.perf_counter()
    restored = restorer.run()  # loads, verifies and restores every state file, then stops
    restore_seconds = time.perf_counter() - start
    if restored.status.value != "already finished":
        msg = f"restore run ended {restored.status}"
        raise AssertionError(msg)
    duration = meta.timings.duration_s
    return {
        "seconds": duration,
        "keys": n,
        "checkpoint_seconds": duration,
        "checkpoint_bytes": meta.size_bytes,
        "restore_seconds": restore_seconds,
    }


# -- peak RSS under backpressure --------------------------------------------------------


def _mod_pair(i: int) -> tuple[int, int]:
    return (i % 10_000, 1)


def case_backpressure(variant: str, n: int, tmp: str) -> dict[str, Any]:
    """``n`` generated records through a keyed count into a sink that sleeps 0.5 ms per batch."""
    from onceflow import Job

    sink = CountingSink(delay=0.0005)
    job = Job("bench-backpressure")
    (
        job.source(RangeSource(n), name="numbers", uid="numbers")
        .map(_mod_pair, name="pair")
        .key_by(key_of)
        .reduce(add, name="count", uid="count")
        .sink(sink, name="slow-sink", uid="slow-sink")
    )
    seconds, result, _ = _run_engine(job, tmp, 1.0)
    _check(n, sink.committed, variant)
    return {"seconds": seconds, "records": n, "checkpoints": result.checkpoints_completed}


# -- throughput over time ------------------------------------------------------------


class TimelineSampler:
    """An ``on_tick`` hook: records read so far every ~50 ms, and each checkpoint's start and end."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.t0: float | None = None
        self.last = -1.0
        self.samples: list[tuple[float, int]] = []
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self.durations: dict[int, float] = {}
        self.sizes: dict[int, int] = {}

    def __call__(self, executor: Any, now: float) -> None:
        if self.t0 is None:
            self.t0 = now
            self.samples.append((0.0, 0))
        coordinator = executor.coordinator
        pending = coordinator.pending
        if pending is not None and pending.checkpoint_id not in self.starts:
            self.starts[pending.checkpoint_id] = pending.started - self.t0
        done = coordinator.last_completed
        if done is not None and done.checkpoint_id not in self.ends:
            start = self.starts.get(done.checkpoint_id, now - self.t0 - done.duration_s)
            self.ends[done.checkpoint_id] = start + done.duration_s
            self.durations[done.checkpoint_id] = done.duration_s
            self.sizes[done.checkpoint_id] = done.size_bytes
        if now - self.last >= self.every:
            self.last = now
            self.samples.append((now - self.t0, sum(m.source_records for m in executor.metrics())))


def case_timeline(variant: str, n: int, tmp: str) -> dict[str, Any]:
    """The keyed count with checkpoints every 1 s, sampled.

    ``keys_10k``: ``n`` words of the 10,000-word vocabulary. ``keys_1m``: first
    1,000,000 distinct words (``n // 6`` in tiny runs), which fill the state,
    then ``n`` words of the 10,000-word vocabulary (a subset): from then on
    every checkpoint writes the full state while processing goes on.
    """
    words = make_words(n)
    title = f"{n:,} words of a 10,000-word vocabulary"
    vocab = 10_000
    if variant == "keys_1m":
        vocab = 1_000_000 if n >= 1_000_000 else max(n // 6, 10_000)
        title = f"{vocab:,} distinct words, then {n:,} words of a 10,000-word vocabulary"
        words = vocabulary(vocab) + words
        n = len(words)
    sink = CountingSink()
    sampler = TimelineSampler()
    seconds, result, runner = _run_engine(
        _keyed_count_job(SliceSource(words), sink), tmp, 1.0, on_tick=sampler
    )
    _check(n, sink.committed, variant)
    # The loop ends as soon as the final checkpoint completes, before on_tick sees it.
    final = result.checkpoint_id
    if final in sampler.starts and final not in sampler.ends:
        duration = runner.store.read_metadata(final).timings.duration_s
        sampler.ends[final] = sampler.starts[final] + duration
        sampler.durations[final] = duration
    return {
        "seconds": seconds,
        "records": n,
        "vocabulary": vocab,
        "title": title,
        "samples": [(round(t, 4), c) for t, c in sampler.samples],
        "checkpoints": [
            {
                "id": cid,
                "start": round(start, 4),
                "end": round(sampler.ends[cid], 4) if cid in sampler.ends else None,
                "duration_s": sampler.durations.get(cid),
                "bytes": sampler.sizes.get(cid),
            }
            for cid, start in sorted(sampler.starts.items())
        ],
    }


# -- profile ---------------------------------------------------------------------------


def case_profile(variant: str, n: int, tmp: str) -> dict[str, Any]:
    """cProfile the keyed count (checkpoints every 1 s) or one write of a 1M-key state file."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    if variant == "state_write_1m":
        import fsspec

        from onceflow.state_backends import KeyGroupAssigner, write_state_file

        table = {k: (k, 1) for k in vocabulary(n)}
        fs = fsspec.filesystem("file")
        assigner = KeyGroupAssigner(max_parallelism=128)
        profiler.enable()
        start = time.perf_counter()
        write_state_file(
            fs,
            os.path.join(tmp, "state.arrow"),
            keyed_state={"value": table},
            operator_state=None,
            key_group_of=assigner.key_group,
        )
        seconds = time.perf_counter() - start
        profiler.disable()
    else:
        words = make_words(n)
        job = _keyed_count_job(SliceSource(words), CountingSink())
        profiler.enable()
        seconds, _, _ = _run_engine(job, tmp, 1.0)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:12]  # type: ignore[attr-defined]
    rows = [
        {
            "function": f"{Path(file).name}:{line}({name})" if file != "~" else name,
            "calls": calls,
            "tottime": round(tottime, 4),
            "share": round(tottime / total, 3) if total else 0.0,
        }
        for (file, line, name), (_, calls, tottime, _, _) in top
    ]
    return {"seconds": seconds, "records": n, "top": rows, "text": out.getvalue()}


PLAIN_WORDCOUNT = """
import sys
from collections import defaultdict

src, dst = sys.argv[1], sys.argv[2]
counts = defaultdict(int)
out = []
with open(src, encoding="utf-8") as f:
    for line in f:
        for word in line.split():
            word = word.lower()
            counts[word] += 1
            out.append(f"{word},{counts[word]}")
with open(dst, "w", encoding="utf-8") as f:
    f.write("\\n".join(out))
    f.write("\\n")
"""
"""The same word count as ``jobs/wordcount.py`` in plain Python: read, count, write."""


def case_cli_wordcount(variant: str, n: int, tmp: str) -> dict[str, Any]:
    """Time a whole process, start to exit: ``onceflow run jobs/wordcount.py`` or a plain script.

    What a user waits for: interpreter start, imports, planning, the run, the
    final checkpoint and the commit of the output (or, for the script, the
    same read, count and write with nothing else). Reports wall seconds and
    the child's CPU seconds (user + system), which a busy machine disturbs far
    less than wall time.

    The child runs with bytecode caching on, after one warm-up run: an
    installed package has its ``.pyc`` files, so compiling onceflow's modules
    on every start (what ``PYTHONDONTWRITEBYTECODE=1`` would force) is not a
    cost users pay.
    """
    import resource
    import subprocess

    words_file = os.path.join(tmp, "words.txt")
    words = make_words(n)
    with open(words_file, "w", encoding="utf-8") as f:  # ten words a line, like prose
        f.writelines(" ".join(words[i : i + 10]) + "\n" for i in range(0, n, 10))
    out = os.path.join(tmp, "out")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if variant == "script":
        script = os.path.join(tmp, "plain_wordcount.py")
        Path(script).write_text(PLAIN_WORDCOUNT, encoding="utf-8")
        cmd = [sys.executable, script, words_file, os.path.join(tmp, "counts.txt")]
    elif variant in ("onceflow", "onceflow_reduce"):
        here = Path(__file__).resolve().parent
        job = str(here.parent / "jobs" / "wordcount.py")
        if variant == "onceflow_reduce":
            job = str(here / "wordcount_reduce.py")
        tiny = os.path.join(tmp, "tiny.txt")
        Path(tiny).write_text("warm up\n", encoding="utf-8")
        warm = [
            sys.executable, "-m", "onceflow", "run", job, "-p", f"input={tiny}", "-p", f"output={out}-warm",
            "--checkpoint-dir", os.path.join(tmp, "chk-warm"), "--progress", "off",
        ]  # fmt: skip
        subprocess.run(warm, check=True, stdout=subprocess.DEVNULL, env=env, timeout=600)
        cmd = [
            sys.executable, "-m", "onceflow", "run", job, "-p", f"input={words_file}", "-p", f"output={out}",
            "--checkpoint-dir", os.path.join(tmp, "chk"), "--progress", "off",
        ]  # fmt: skip
    else:
        msg = f"unknown variant {variant!r}"
        raise SystemExit(msg)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, timeout=600)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if variant == "script":
        lines = sum(1 for _ in open(os.path.join(tmp, "counts.txt"), encoding="utf-8"))
    else:
        lines = sum(1 for p in Path(out).glob("part-*") for _ in open(p, encoding="utf-8"))
    _check(n, lines, f"{variant} output lines")
    return {"seconds": seconds, "records": n, "run_cpu_s": round(run_cpu, 3)}


CASES: dict[str, Callable[[str, int, str], dict[str, Any]]] = {
    "keyed_count": case_keyed_count,
    "cli_wordcount": case_cli_wordcount,
    "stateless": case_stateless,
    "scaling": case_scaling,
    "map_batches": case_map_batches,
    "checkpoint_state": case_checkpoint_state,
    "backpressure": case_backpressure,
    "timeline": case_timeline,
    "profile": case_profile,
}


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("variant")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--tmp", default=None, help="scratch directory (checkpoints, files)")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="onceflow-bench-", dir=args.tmp)
    try:
        result = CASES[args.case](args.variant, args.n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3)
    result["max_rss_mb"] = round(_rss_mb(resource.RUSAGE_SELF), 1)
    result["children_max_rss_mb"] = round(_rss_mb(resource.RUSAGE_CHILDREN), 1)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
