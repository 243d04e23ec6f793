"""Issue 11, hole 1: a lost or damaged newest checkpoint never gives exit 0 with wrong output.

Each test runs the real CLI (``python -m onceflow run``, the local executor)
on ``tests/support/jobs/lost_checkpoint_job.py``: a keyed running count over
generated input into a FileSink, a PostgresSink (insert) or a
RedisStreamSink. The first run dies by the crash point ``before_snapshot``
at the source's snapshot of checkpoint k+1, so checkpoint k is the newest
completed one and every sink has committed its output (the local executor
commits on the completion notice, before the next checkpoint starts). Then
checkpoint k is damaged in one of three ways and the job is rerun:

* ``metadata``: ``chk-k/_metadata`` deleted;
* ``directory``: the whole ``chk-k`` deleted;
* ``state``: a state file of ``chk-k`` truncated.

The rerun can only restore checkpoint k-1, behind what the sinks committed.
FileSink rolls back the part files of checkpoints after k-1 and writes them
again: exit 0 and exact output. PostgresSink and RedisStreamSink cannot take
back committed rows and entries: the rerun must refuse (non-zero exit, a
message naming both checkpoints), leave the output as it was, and the
remedies the message names must work (put the checkpoint back, or clear the
destination and rerun with ``--fresh``).

Seeds: ``CHAOS_SEED`` replays a test (k and the hash seeds); every assertion
message carries the seed and the logs directory.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from onceflow import read_committed_lines
from tests.integration.connectors.conftest import unique
from tests.support.chaos import JOBS, CliRuns, RunOutcome
from tests.support.oracles import compare, expected, write_input

pytestmark = pytest.mark.timeout(120)

JOB_FILE = JOBS / "lost_checkpoint_job.py"
N_RECORDS = 4000
N_KEYS = 50
DELAY_US = 300
"""Busy pause per record: the job runs about 1.2 s, long enough for k+1 checkpoints at 0.1 s."""
TASKS = 2
"""Subtasks of the job at parallelism 1 (read+parse+filter, running+sink): passes of
``before_snapshot`` per checkpoint."""
DAMAGES = ["metadata", "directory", "state"]
SINKS = ["file", "postgres", "redis"]


class Output:
    """Where one test's sink writes, and how to read and clear it."""

    def __init__(self, sink: str, request: pytest.FixtureRequest, tmp_path: Path, job: str) -> None:
        self.sink = sink
        self.params: dict[str, str] = {"sink": sink}
        if sink == "file":
            self.dir = tmp_path / "out"
            self.params["output"] = str(self.dir)
        elif sink == "postgres":
            self.pg = request.getfixturevalue("pg")
            self.pg.jobs.append(job)
            self.table = self.pg.table("line text")
            self.params.update(dsn=self.pg.dsn, table=self.table)
        else:
            self.rds = request.getfixturevalue("rds")
            self.stream = self.rds.stream("of_lost")
            digest = hashlib.sha256(f"{job}\x00sink".encode()).hexdigest()[:16]
            self.rds.keys.append(f"onceflow:sink:{digest}:committed")
            self.params.update(redis=request.getfixturevalue("redis_url"), stream=self.stream)

    def lines(self) -> list[str]:
        if self.sink == "file":
            return read_committed_lines(str(self.dir)) if self.dir.exists() else []
        if self.sink == "postgres":
            return [line for (line,) in self.pg.q(f"SELECT line FROM {self.table}")]
        return [fields["line"] for _, fields in self.rds.client.xrange(self.stream)]

    def clear(self) -> None:
        """What the user does before ``--fresh`` when the sink cannot replace its output."""
        if self.sink == "postgres":
            self.pg.q(f"TRUNCATE {self.table}")
        elif self.sink == "redis":
            self.rds.client.delete(self.stream)


def completed_ids(job_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("chk-")) for p in job_dir.glob("chk-*/_metadata"))


def damage_checkpoint(chk_dir: Path, damage: str) -> str:
    """Damage checkpoint ``chk_dir`` as ``damage`` says; return what was done, for messages."""
    if damage == "metadata":
        (chk_dir / "_metadata").unlink()
        return f"deleted {chk_dir}/_metadata"
    if damage == "directory":
        shutil.rmtree(chk_dir)
        return f"deleted {chk_dir}"
    state = chk_dir / "running-0.arrow"
    size = state.stat().st_size
    with open(state, "r+b") as f:
        f.truncate(size // 2)
    return f"truncated {state} from {size} to {size // 2} bytes"


def check_warning(outcome: RunOutcome, damage: str, k: int, where: str) -> None:
    """A checkpoint skipped as damaged is named, with the one restored instead."""
    if damage == "directory":
        return  # nothing on storage is left to name; the sinks' checks cover it
    warning = f"checkpoint {k} is unusable"
    assert warning in outcome.stderr and f"restoring from checkpoint {k - 1}" in outcome.stderr, (
        f"no warning naming checkpoint {k} as skipped; {where}\nstderr:\n{outcome.stderr[-3000:]}"
    )


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_gives_exact_output_or_a_refusal(
    damage: str, sink: str, request: pytest.FixtureRequest, chaos_seed: int, tmp_path: Path
) -> None:
    job = unique("lostchk")
    output = Output(sink, request, tmp_path, job)
    write_input(tmp_path / "input", N_RECORDS, N_KEYS, 2)
    oracle = expected(N_RECORDS, N_KEYS, "keyed")
    chk = tmp_path / "chk"
    runs = CliRuns(
        JOB_FILE,
        params={"job": job, "input": str(tmp_path / "input"), "delay_us": str(DELAY_US), **output.params},
        args=[
            "--checkpoint-dir",
            str(chk),
            "--checkpoint-interval",
            "0.1",
            "--batch-size",
            "64",
            "--retain",
            "10",
        ],
        logs=tmp_path / "logs",
        seed=chaos_seed,
    )
    k = runs.rng.randint(3, 5)
    where = f"damage={damage} sink={sink} k={k}; {runs.where()}"

    def check(outcome: RunOutcome, figures: dict[str, int], what: str) -> None:
        wrong = {name: figures[name] for name in ("duplicates", "lost", "unexpected", "wrong_value")}
        assert outcome.returncode == 0 and not any(wrong.values()), (
            f"{what}: exit {outcome.returncode}, figures {figures}; {where}\n"
            f"stderr:\n{outcome.stderr[-3000:]}"
        )

    # Run 1: dies as checkpoint k+1 starts; k is complete and committed.
    runs.expect_killed(runs.run(crash_at=f"before_snapshot:{TASKS * k + 1}"))
    job_dir = chk / job
    assert completed_ids(job_dir)[-1:] == [k], f"checkpoints {completed_ids(job_dir)} completed; {where}"
    before = compare(output.lines(), oracle, "keyed")
    assert before["duplicates"] == before["unexpected"] == before["not_prefix"] == 0, (before, where)

    newest = job_dir / f"chk-{k}"
    backup = tmp_path / "backup"
    shutil.copytree(newest, backup)
    done = damage_checkpoint(newest, damage)
    where = f"{where} ({done})"

    rerun = runs.run()
    figures = compare(output.lines(), oracle, "keyed")
    print(
        f"lost-checkpoint {damage} x {sink}: k={k} committed before={before['committed']} "
        f"rerun exit={rerun.returncode} after={figures} seed={chaos_seed}"
    )
    if sink == "file":
        check(rerun, figures, "FileSink rerun after the damage")
        assert figures["committed"] == len(oracle), (figures, where)
        check_warning(rerun, damage, k, where)
        return

    # A transactional sink committed k: refused, naming both checkpoints, nothing written.
    assert rerun.returncode not in (0, -9), (
        f"the rerun restored checkpoint {k - 1} behind the sink's commit of {k} and exited "
        f"{rerun.returncode} with figures {figures}; {where}\nstderr:\n{rerun.stderr[-3000:]}"
    )
    for text in (f"committed checkpoint {k}", f"restore checkpoint {k - 1}", "--fresh", "twice"):
        assert text in rerun.stderr, f"refusal without {text!r}; {where}\nstderr:\n{rerun.stderr[-3000:]}"
    assert figures == before, f"the refused rerun changed the output: {before} -> {figures}; {where}"
    check_warning(rerun, damage, k, where)

    # The remedies the refusal names.
    if damage == "metadata":
        # Put checkpoint k back (the whole directory, as a backup has it) and rerun.
        shutil.rmtree(newest, ignore_errors=True)
        shutil.copytree(backup, newest)
        resumed = runs.run()
        figures = compare(output.lines(), oracle, "keyed")
        check(resumed, figures, f"rerun with checkpoint {k} put back")
    else:
        output.clear()
        runs.args.append("--fresh")
        resumed = runs.run()
        figures = compare(output.lines(), oracle, "keyed")
        check(resumed, figures, "rerun with --fresh after clearing the destination")
    assert figures["committed"] == len(oracle), (figures, where)
