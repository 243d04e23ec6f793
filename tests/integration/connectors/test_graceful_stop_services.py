"""Graceful stop with real services: a PostgresSink job and an unbounded RedisStreamSource job.

``tests/support/jobs/stop_job.py`` runs under both executors and is signalled
(its whole process group) once its first checkpoint completed. PostgresSink:
the run exits 143/130 at a completed, non-final checkpoint, no transaction of
the sink is left prepared (they would hold locks until the next run), the
committed rows are a valid prefix, and a rerun resumes to the exact table. A
second signal exits at once and a rerun is still exact. Unbounded Redis
source: a stop ends it the same way; a resumed run commits the rest and is
stopped again once everything is committed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.chaos import JOBS, CliRuns
from tests.support.oracles import compare, expected, write_input
from tests.support.stopping import (
    checkpoint_metadata,
    completed_checkpoints,
    exit_code,
    signal_mid_run,
    stopped_at,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

N, K = 6_000, 40
DELAY_US = 1_000
ARGS = ["--checkpoint-interval", "0.3", "--parallelism", "2", "--batch-size", "64"]


def pg_runs(pg, tmp_path: Path, executor: str) -> tuple[CliRuns, str, str, Path]:
    write_input(tmp_path / "in", N, K, 4)
    table = pg.table("line text")
    job = pg.job("stop")
    chk = tmp_path / "chk"
    runs = CliRuns(
        JOBS / "stop_job.py",
        params={
            "job": job,
            "input": str(tmp_path / "in"),
            "sink": "postgres",
            "dsn": pg.dsn,
            "table": table,
            "delay_us": str(DELAY_US),
            "slow_marker": str(tmp_path / "slow"),
        },
        args=["--checkpoint-dir", str(chk), *ARGS, "--executor", executor],
        logs=tmp_path / "logs",
        seed=0,
    )
    return runs, table, job, chk


def check_table(pg, table: str, *, exact: bool) -> dict[str, int]:
    lines = [line for (line,) in pg.q(f"SELECT line FROM {table}")]
    figures = compare(lines, expected(N, K, "keyed"), "keyed")
    bad = {k: figures[k] for k in ("duplicates", "unexpected", "wrong_value", "not_prefix")}
    assert not any(bad.values()), f"committed rows are not a valid prefix: {figures}"
    if exact:
        assert figures["lost"] == 0 and figures["committed"] == figures["expected"], figures
    return figures


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("executor", ["local", "process"])
def test_postgres_sink_stops_with_nothing_prepared_and_resumes_exactly(pg, tmp_path, executor, sig) -> None:
    runs, table, job, chk = pg_runs(pg, tmp_path, executor)
    stopped = runs.run(during=signal_mid_run(runs, chk, sig))
    assert stopped.returncode == exit_code(sig), stopped.stderr[-3000:]
    checkpoint_id = stopped_at(stopped)
    assert checkpoint_metadata(chk, checkpoint_id)["final"] is False
    assert pg.prepared(job, "pg") == [], "a stopped run left prepared transactions"
    figures = check_table(pg, table, exact=False)
    assert 0 < figures["committed"] < figures["expected"], figures

    rerun = runs.run()
    runs.expect_ok(rerun)
    assert f"resumed from checkpoint {checkpoint_id}" in rerun.stdout, rerun.stdout
    check_table(pg, table, exact=True)
    assert pg.prepared(job, "pg") == []


@pytest.mark.parametrize("executor", ["local", "process"])
def test_postgres_sink_second_signal_exits_at_once_and_a_rerun_is_exact(pg, tmp_path, executor) -> None:
    runs, table, job, chk = pg_runs(pg, tmp_path, executor)
    slow = tmp_path / "slow"
    killed = runs.run(during=signal_mid_run(runs, chk, signal.SIGTERM, second=True, slow_marker=slow))
    assert killed.returncode == 143, killed.stderr[-3000:]
    assert "exiting at once" in killed.stderr, killed.stderr[-3000:]
    check_table(pg, table, exact=False)

    slow.unlink()
    runs.expect_ok(runs.run())
    check_table(pg, table, exact=True)
    assert pg.prepared(job, "pg") == []


@pytest.mark.parametrize("executor", ["local", "process"])
def test_unbounded_redis_source_stops_the_same_way(rds, redis_url, tmp_path, executor) -> None:
    from onceflow.operators.files import read_committed_lines

    write_input(tmp_path / "in", N, K, 1)
    stream = rds.stream("of_stop")
    pipe = rds.client.pipeline(transaction=False)
    for line in (tmp_path / "in" / "in-000.csv").read_text().splitlines():
        pipe.xadd(stream, {"line": line})
    pipe.execute()
    out, chk = tmp_path / "out", tmp_path / "chk"
    runs = CliRuns(
        JOBS / "stop_job.py",
        params={
            "source": "redis",
            "redis": redis_url,
            "stream": stream,
            "output": str(out),
            "delay_us": str(DELAY_US // 4),
        },
        args=["--checkpoint-dir", str(chk), *ARGS, "--executor", executor],
        logs=tmp_path / "logs",
        seed=0,
    )

    def committed() -> list[str]:
        return read_committed_lines(str(out)) if out.exists() else []

    stopped = runs.run(during=signal_mid_run(runs, chk, signal.SIGTERM))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    first = stopped_at(stopped)
    assert checkpoint_metadata(chk, first)["final"] is False
    assert not [p.name for p in out.iterdir() if p.name.endswith((".pending", ".inprogress"))]
    figures = compare(committed(), expected(N, K, "keyed"), "keyed")
    assert figures["duplicates"] == figures["not_prefix"] == figures["unexpected"] == 0, figures
    assert figures["committed"] < figures["expected"], figures

    want = len(expected(N, K, "keyed"))

    def stop_when_all_committed(proc: subprocess.Popen) -> None:
        if wait_for(lambda: len(committed()) >= want, proc, "every record committed"):
            time.sleep(0.2)  # an unbounded source keeps polling; nothing more may come
            proc.send_signal(signal.SIGINT)

    resumed = runs.run(during=stop_when_all_committed)
    assert resumed.returncode == 130, resumed.stderr[-3000:]
    assert stopped_at(resumed) > first
    assert completed_checkpoints(chk)[-1] == stopped_at(resumed)
    figures = compare(committed(), expected(N, K, "keyed"), "keyed")
    assert figures["committed"] == figures["expected"] and figures["duplicates"] == 0, figures
