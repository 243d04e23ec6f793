"""Formats under SIGKILL: CSV/JSON-lines/Parquet in and out, a watched folder, readers during a run.

The job (``tests/support/jobs/formats_job.py``) reads ``{id, key, value}``
rows (gzip CSV, zstd JSON lines or Parquet with small row groups), keeps a
running ``(count, sum)`` per key and writes rows in another format, in Hive
``part=<id % 3>/`` folders. Oracle: the plain-Python running count/sum of
``tests/support/oracles.py`` (ids with ``id % 7 == 3`` dropped). After every
kill: nothing committed twice, nothing outside the oracle, nothing committed
before gone, no key's counts other than ``1..m``; at the end exactly the
oracle, no hidden leftovers, and a rerun that changes nothing.

The watch test adds input files to the landing folder while runs are alive
and between a kill and the rerun; a graceful stop (SIGTERM) ends the last
run once everything is committed: each file counted once. The readers test
reads the committed Parquet output with ``pyarrow.dataset`` and DuckDB over
and over while a job writes it: no read may fail on a partial file or see a
row twice. The commit-phase test kills the partitioned Parquet job at named
crash points of the two-phase commit, then finishes it exactly.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.support.chaos import JOBS, REPO, ChaosRun, Workload
from tests.support.oracles import compare, expected, value_of
from tests.support.stopping import completed_checkpoints

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N = 30_000
N_KEYS = 300
N_FILES = 6
SLOW_US = 300
"""Spin per record in ``normalize``: a full run takes about 9 s, so random kills land mid-run."""
WATCH_FILES = 12
SPIN_US = SLOW_US * (2 if os.environ.get("CHAOS_EXECUTOR") == "process" else 1)
"""Worker processes use both cores: twice the spin keeps a run as long as on the local executor."""
BATCH = ["--batch-size", "128"]
"""Small batches: barriers pass every few tens of ms, so checkpoints complete between kills."""
SUFFIX = {"csv": ".csv.gz", "jsonl": ".jsonl.zst", "parquet": ".parquet"}
HIDDEN = (".", "_")


def file_rows(f: int, n: int = N, k: int = N_KEYS, n_files: int = N_FILES) -> list[dict]:
    """The rows of input file ``f``: every key ``(id % k) % n_files == f``, in id order."""
    return [
        {"id": rid, "key": f"user-{rid % k}", "value": value_of(rid)}
        for rid in range(n)
        if (rid % k) % n_files == f
    ]


def write_file(path: Path, fmt: str, rows: list[dict]) -> None:
    """Write one input file in ``fmt`` (gzip CSV, zstd JSON lines, Parquet with 1,000-row groups)."""
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
        return
    if fmt == "csv":
        text = "id,key,value\n" + "".join(f"{r['id']},{r['key']},{r['value']}\n" for r in rows)
        path.write_bytes(gzip.compress(text.encode()))
        return
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))


def committed_rows(out: Path, fmt: str) -> list[dict]:
    """Rows of every committed file below ``out``, read as a downstream reader would."""
    if not out.exists():
        return []
    if fmt == "parquet":
        if not any(out.rglob("part-*.parquet")):
            return []
        return ds.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()
    rows: list[dict] = []
    for path in sorted(out.rglob("part-*")):
        if any(part.startswith(HIDDEN) for part in path.relative_to(out).parts):
            continue
        with path.open() as handle:
            rows.extend(csv.DictReader(handle) if fmt == "csv" else map(json.loads, handle))
    return rows


class FormatsChaosRun(ChaosRun):
    """Runs of ``formats_job.py``; committed output is read back from its format into oracle lines."""

    def __init__(self, root: Path, workload: Workload, seed: int, *, out_format: str, **kwargs) -> None:
        self.out_format = out_format
        super().__init__(root, workload, seed, job_file=JOBS / "formats_job.py", **kwargs)

    def committed(self) -> list[str]:
        return [
            f"{r['id']},{r['key']},{r['count']},{r['sum']}" for r in committed_rows(self.out, self.out_format)
        ]

    def check_final(self) -> dict[str, int]:
        leftovers = sorted(
            str(p.relative_to(self.out))
            for p in self.out.rglob("*")
            if p.name.endswith((".inprogress", ".pending", ".tmp"))
        )
        assert not leftovers, f"leftover hidden files in the output: {leftovers}; {self.where()}"
        return super().check_final()


def make_input(directory: Path, fmt: str) -> Workload:
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(N_FILES):
        write_file(directory / f"in-{f:02d}{SUFFIX[fmt]}", fmt, file_rows(f))
    return Workload(directory, N, N_KEYS, N_FILES)


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("in_format", "out_format", "partition"),
    [("csv", "parquet", "1"), ("jsonl", "csv", "0"), ("parquet", "jsonl", "1")],
)
def test_formats_in_and_out_are_exact_under_random_kills(
    in_format, out_format, partition, tmp_path_factory, chaos_dir, chaos_seed
) -> None:
    """Kill at >= 5 random moments, then finish: committed rows exactly the oracle."""
    workload = make_input(tmp_path_factory.mktemp(f"in-{in_format}"), in_format)
    run = FormatsChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        out_format=out_format,
        parallelism=2,
        delay_us=SPIN_US,
        params={"in_format": in_format, "out_format": out_format, "partition": partition},
        args=BATCH,
    )
    run.kill_at_random(5, (0.8, 2.5))
    figures = run.check_final()
    run.assert_kills_landed_mid_run(figures["expected"], at_least=1)
    run.summary(
        f"test_formats_in_and_out_are_exact_under_random_kills[{in_format}-{out_format}]",
        {"p": run.parallelism, "partition": partition, "repo": REPO.name},
        **{
            k: figures[k]
            for k in ("committed", "expected", "duplicates", "lost", "unexpected", "wrong_value")
        },
        committed_at_kills=run.committed_at_kill,
    )


class LandingFolder:
    """Input files to move into a watched folder one by one (written hidden, renamed in)."""

    def __init__(self, directory: Path, staging: Path) -> None:
        self.directory = directory
        self.todo = list(range(WATCH_FILES))
        self.lock = threading.Lock()
        self.added_during = 0
        directory.mkdir(parents=True)
        staging.mkdir(parents=True, exist_ok=True)
        self.staged = {}
        for f in self.todo:
            path = staging / f"in-{f:02d}{SUFFIX['csv']}"
            write_file(path, "csv", file_rows(f, n_files=WATCH_FILES))
            self.staged[f] = path.read_bytes()

    def add_one(self) -> bool:
        """Move the next file in: odd ones written hidden and renamed, even ones written in place."""
        with self.lock:
            if not self.todo:
                return False
            f = self.todo.pop(0)
        name = f"in-{f:02d}{SUFFIX['csv']}"
        if f % 2:
            hidden = self.directory / f".{name}.tmp"
            hidden.write_bytes(self.staged[f])
            os.rename(hidden, self.directory / name)
        else:
            (self.directory / name).write_bytes(self.staged[f])
        return True

    def adder(self, after: float):
        """A ``during`` callback: move one file in ``after`` seconds into the run, if it still runs."""

        def during(proc: subprocess.Popen) -> None:
            deadline = time.monotonic() + after
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                self.added_during += self.add_one()

        return during


@pytest.mark.timeout(400)
def test_watched_folder_counts_each_file_once_across_kills_and_a_graceful_stop(
    tmp_path_factory, chaos_dir, chaos_seed
) -> None:
    """Files arrive during runs and between kill and rerun; after >= 4 kills and a SIGTERM: exact."""
    landing = LandingFolder(chaos_dir / "landing", tmp_path_factory.mktemp("staging"))
    landing.add_one()
    workload = Workload(landing.directory, N, N_KEYS, WATCH_FILES)
    run = FormatsChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        out_format="parquet",
        parallelism=2,
        delay_us=SPIN_US // 6,
        params={"in_format": "csv", "out_format": "parquet", "watch": "1", "poll_interval": "0.2"},
        args=BATCH,
    )
    added_between = 0
    while sum(run.kills.values()) < 4:
        outcome = run.run(
            kill_after=run.rng.uniform(1.0, 2.5), during=landing.adder(run.rng.uniform(0.3, 0.9))
        )
        run.expect_killed(outcome)
        added_between += landing.add_one()
    while landing.add_one():
        added_between += 1
    oracle_size = len(expected(N, N_KEYS, "keyed"))
    before = completed_checkpoints(run.chk)[-1:]

    def stop_when_complete(proc: subprocess.Popen) -> None:
        """SIGTERM once this run completed a checkpoint of its own and every row is committed."""
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            mine = completed_checkpoints(run.chk)[-1:] != before
            if mine and len(committed_rows(run.out, "parquet")) >= oracle_size:
                os.killpg(proc.pid, signal.SIGTERM)
                return
            time.sleep(0.2)

    final = run.run(during=stop_when_complete, timeout=150)
    assert final.returncode == 128 + signal.SIGTERM, (
        f"the last run exited {final.returncode}, expected 143 (graceful stop); {run.where()}\n"
        f"{final.stderr[-3000:]}"
    )
    figures = run.final_figures()
    leftovers = [p.name for p in run.out.rglob("*") if p.name.endswith((".inprogress", ".pending"))]
    assert not leftovers, f"leftovers after the graceful stop: {leftovers}; {run.where()}"
    assert landing.added_during >= 2 and added_between >= 4, (landing.added_during, added_between)
    run.summary(
        "test_watched_folder_counts_each_file_once_across_kills_and_a_graceful_stop",
        {
            "p": run.parallelism,
            "files": WATCH_FILES,
            "added_during_runs": landing.added_during,
            "added_between_runs": added_between,
            "repo": REPO.name,
        },
        **{
            k: figures[k]
            for k in ("committed", "expected", "duplicates", "lost", "unexpected", "wrong_value")
        },
    )


@pytest.mark.timeout(300)
def test_readers_never_see_partial_parquet_files_while_a_job_writes(
    tmp_path_factory, chaos_dir, chaos_seed
) -> None:
    """pyarrow.dataset and DuckDB read the output in a loop during a run: no error, no duplicate, growing."""
    duckdb = pytest.importorskip("duckdb")
    workload = make_input(tmp_path_factory.mktemp("in-readers"), "csv")
    run = FormatsChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        out_format="parquet",
        parallelism=2,
        delay_us=SPIN_US // 3,
        params={"in_format": "csv", "out_format": "parquet", "partition": "1"},
        args=["--checkpoint-interval", "0.05", *BATCH],
    )
    oracle = expected(N, N_KEYS, "keyed")
    reads = {"pyarrow": [], "duckdb": []}
    errors: list[str] = []

    def lines_of(rows: list[dict]) -> list[str]:
        return [f"{r['id']},{r['key']},{r['count']},{r['sum']}" for r in rows]

    def read_loop(proc: subprocess.Popen) -> None:
        con = duckdb.connect()
        glob = f"{run.out}/**/*.parquet"
        while proc.poll() is None:
            try:
                if any(run.out.rglob("part-*.parquet")):
                    rows = ds.dataset(run.out, format="parquet", partitioning="hive").to_table().to_pylist()
                    reads["pyarrow"].append(lines_of(rows))
                    table = con.sql(
                        f"select * from read_parquet('{glob}', hive_partitioning=true)"
                    ).to_arrow_table()
                    reads["duckdb"].append(lines_of(table.to_pylist()))
            except Exception as exc:  # a partial or vanished file would surface here
                errors.append(f"{type(exc).__name__}: {exc}")

    outcome = run.run(during=read_loop, timeout=120)
    run.expect_ok(outcome)
    assert not errors, f"{len(errors)} reads failed during the run, e.g. {errors[:3]}; {run.where()}"
    for reader, snapshots in reads.items():
        sizes = [len(s) for s in snapshots]
        assert sizes == sorted(sizes), f"{reader}: committed rows shrank between reads {sizes}; {run.where()}"
        for lines in snapshots:
            figures = compare(lines, oracle, "keyed")
            bad = {k: figures[k] for k in ("duplicates", "unexpected", "wrong_value")}
            assert not any(bad.values()), f"{reader} read broken rows mid-run: {bad}; {run.where()}"
    mid = {
        reader: sum(1 for s in snapshots if 0 < len(s) < len(oracle)) for reader, snapshots in reads.items()
    }
    assert all(n >= 3 for n in mid.values()), f"too few reads saw a partial output: {mid}; {run.where()}"
    figures = run.check_final()
    run.summary(
        "test_readers_never_see_partial_parquet_files_while_a_job_writes",
        {"p": run.parallelism, "repo": REPO.name},
        reads_pyarrow=len(reads["pyarrow"]),
        reads_duckdb=len(reads["duckdb"]),
        reads_mid_run=mid,
        read_errors=len(errors),
        **{k: figures[k] for k in ("committed", "expected", "duplicates", "lost", "unexpected")},
    )


CRASH_LABELS = [
    "after_pending_rename_before_commit_rename",
    "mid_commit",
    "after_metadata_before_notify",
    "after_task_snapshots_before_metadata",
]


@pytest.mark.timeout(300)
def test_partitioned_parquet_commit_survives_a_kill_at_each_commit_phase(
    tmp_path_factory, chaos_dir, chaos_seed
) -> None:
    """Kill -9 at each commit phase (``mid_commit``: before the n-th partition file moves), then finish."""
    workload = make_input(tmp_path_factory.mktemp("in-crash"), "csv")
    run = FormatsChaosRun(
        chaos_dir,
        workload,
        chaos_seed,
        out_format="parquet",
        parallelism=2,
        delay_us=SPIN_US // 3,
        params={"in_format": "csv", "out_format": "parquet", "partition": "1"},
        args=BATCH,
    )
    for kind, spec in run.fault_plan(0, CRASH_LABELS, max_n=4):
        assert kind == "crash"
        outcome = run.run(crash_at=str(spec))
        if outcome.returncode == 0:
            break  # the job ended before the label's n-th pass; nothing left to kill
        run.expect_killed(outcome)
    labels = sorted(run.kills)
    assert len(labels) >= 3, f"only {labels} crash points fired; {run.where()}"
    run.run_to_completion()
    figures = run.check_final()
    run.summary(
        "test_partitioned_parquet_commit_survives_a_kill_at_each_commit_phase",
        {"p": run.parallelism, "repo": REPO.name},
        **{
            k: figures[k]
            for k in ("committed", "expected", "duplicates", "lost", "unexpected", "wrong_value")
        },
    )
