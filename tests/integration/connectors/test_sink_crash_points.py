"""Issue 11: a kill -9 at every named phase of the checkpoint protocol, for every sink.

Each test runs the real CLI (``python -m onceflow run``, the local executor)
on ``tests/support/jobs/lost_checkpoint_job.py`` (a keyed running count into a
FileSink, a PostgresSink or a RedisStreamSink) with ``ONCEFLOW_CRASH_AT`` set
to one label of ``engine/faults.py``, so the process kills itself with
SIGKILL at that phase. The run must die with -9 and its committed output must
be a valid prefix (no duplicate, nothing outside the oracle); then the same
command is rerun to the end (exit 0) and the committed output must equal the
plain-Python oracle exactly. Afterwards nothing of the protocol may be left:
no prepared transaction of the job in ``pg_prepared_xacts``, no staging list
of the job in Redis, no ``.pending``/``.inprogress`` file in the FileSink
directory.

The restore labels need a restore: ``during_restore`` follows a kill at
``before_snapshot``, ``during_commit_on_restore`` a kill at
``after_metadata_before_notify`` (a completed checkpoint whose commit is
owed). ``during_graceful_stop`` sends SIGTERM to the run's process group once
a checkpoint completed. A label a sink never passes (e.g. FileSink's
``after_pending_rename_before_commit_rename`` for the other sinks) is run
too: the run must exit 0 without reaching the crash point, with exact output.

Seeds: ``CHAOS_SEED`` replays a test (the checkpoint k a label fires at and
the hash seeds); every assertion message carries the seed and the logs
directory.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from tests.integration.connectors.conftest import unique
from tests.integration.connectors.test_lost_checkpoints import (
    DELAY_US,
    JOB_FILE,
    N_KEYS,
    N_RECORDS,
    TASKS,
    Output,
)
from tests.support.chaos import CliRuns, RunOutcome
from tests.support.oracles import compare, expected, write_input
from tests.support.stopping import signal_mid_run

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(120)]

SINKS = ["file", "postgres", "redis"]
LABELS = [
    "before_snapshot",
    "after_task_snapshots_before_metadata",
    "after_metadata_before_notify",
    "mid_commit",
    "after_pending_rename_before_commit_rename",
    "after_prepare_before_ack",
    "after_commit_prepared_before_bookkeeping",
    "during_restore",
    "during_commit_on_restore",
    "end_of_input_before_final_checkpoint",
    "during_graceful_stop",
]
FIRES: dict[str, set[str]] = {
    "after_pending_rename_before_commit_rename": {"file"},
    "after_prepare_before_ack": {"postgres", "redis"},
    "after_commit_prepared_before_bookkeeping": {"postgres"},
}
"""Labels only some sinks pass; every other label fires for every sink."""
RESTORE_AFTER = {
    "during_restore": "before_snapshot",
    "during_commit_on_restore": "after_metadata_before_notify",
}
"""Restore labels: the label of the kill before them, which leaves a checkpoint to restore."""
CRASH_TEXT = "onceflow: crash point"


def crash_spec(label: str, k: int) -> str:
    """``label:n`` that fires at checkpoint ``k`` (once per checkpoint, or once per task)."""
    if label == "before_snapshot":
        return f"{label}:{TASKS * k + 1}"  # checkpoint k done, k+1 starting
    if label in ("end_of_input_before_final_checkpoint", "during_graceful_stop", *RESTORE_AFTER):
        return f"{label}:1"  # once per run, or the first pass of the rerun's restore
    return f"{label}:{k}"


def leftovers(output: Output, job: str) -> list[str]:
    """What the sink's protocol left behind after the final run (should be nothing)."""
    if output.sink == "file":
        names = os.listdir(output.dir) if output.dir.exists() else []
        return [n for n in names if n.endswith((".pending", ".inprogress"))]
    if output.sink == "postgres":
        return output.pg.prepared(job, "sink")
    digest = hashlib.sha256(f"{job}\x00sink".encode()).hexdigest()[:16]
    client = output.rds.client
    found = sorted(client.scan_iter(match=f"onceflow:sink:{digest}:stage:*", count=1000))
    if found:
        client.delete(*found)  # the test fails on them; do not leave them in Redis
    return found


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("sink", SINKS)
def test_a_kill_at_each_protocol_phase_then_a_rerun_gives_exact_output(
    sink: str, label: str, request: pytest.FixtureRequest, chaos_seed: int, tmp_path: Path
) -> None:
    job = unique("crashpt")
    output = Output(sink, request, tmp_path, job)
    write_input(tmp_path / "input", N_RECORDS, N_KEYS, 2)
    oracle = expected(N_RECORDS, N_KEYS, "keyed")
    chk = tmp_path / "chk"
    runs = CliRuns(
        JOB_FILE,
        params={"job": job, "input": str(tmp_path / "input"), "delay_us": str(DELAY_US), **output.params},
        args=["--checkpoint-dir", str(chk), "--checkpoint-interval", "0.1", "--batch-size", "64"],
        logs=tmp_path / "logs",
        seed=chaos_seed,
    )
    k = runs.rng.randint(2, 4)
    fires = sink in FIRES.get(label, set(SINKS))
    where = f"sink={sink} label={label} k={k}; {runs.where()}"

    def figures() -> dict[str, int]:
        return compare(output.lines(), oracle, "keyed")

    def check_killed(outcome: RunOutcome, spec: str) -> None:
        runs.expect_killed(outcome)
        assert f"{CRASH_TEXT} {spec} reached" in outcome.stderr, (
            f"run {outcome.index} died -9 but not at {spec}; {where}\nstderr:\n{outcome.stderr[-3000:]}"
        )
        now = figures()
        bad = {name: now[name] for name in ("duplicates", "unexpected", "wrong_value", "not_prefix")}
        assert not any(bad.values()), f"after the kill at {spec}: {now}; {where}"

    kills: list[str] = []
    if label in RESTORE_AFTER:
        first = crash_spec(RESTORE_AFTER[label], k)
        check_killed(runs.run(crash_at=first), first)
        kills.append(first)
    spec = crash_spec(label, k)
    if label == "during_graceful_stop":
        outcome = runs.run(crash_at=spec, during=signal_mid_run(runs, chk, signal.SIGTERM))
    else:
        outcome = runs.run(crash_at=spec)
    if fires:
        check_killed(outcome, spec)
        kills.append(spec)
        final = runs.run()
    else:
        # The sink never passes this label: the run is simply a complete, clean run.
        assert CRASH_TEXT not in outcome.stderr, (outcome.stderr[-3000:], where)
        final = outcome
    runs.expect_ok(final)
    assert CRASH_TEXT not in final.stderr, (final.stderr[-3000:], where)

    result = figures()
    wrong = {name: result[name] for name in ("duplicates", "lost", "unexpected", "wrong_value")}
    assert not any(wrong.values()) and result["committed"] == len(oracle), (
        f"rerun after {kills}: {result}; {where}"
    )
    left = leftovers(output, job)
    assert not left, f"left behind after the final run: {left}; {where}"
    runs.summary(
        f"crash-point {sink} x {label}",
        {"k": k, "fires": fires, "kills": kills},
        final_exit=final.returncode,
        committed=result["committed"],
        expected=len(oracle),
        duplicates=result["duplicates"],
        lost=result["lost"],
    )
