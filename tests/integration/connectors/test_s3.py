"""Checkpoints, FileSource input and FileSink output on s3:// (s3fs against a moto server on 127.0.0.1).

moto is an emulator: these tests show that onceflow's protocol holds on an
object store without rename (copy, then delete) and with listing caches; they
say nothing about AWS-only behaviour such as conditional writes.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter

import fsspec
import pytest

from onceflow import FileSink, FileSource, Job, SinkCommitError, read_committed_lines
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.context import SubtaskContext
from onceflow.engine.testing import run_job_for_test
from onceflow.state_backends.key_groups import KeyGroupRange
from tests.support.chaos import JOBS, CliRuns

JOB_FILE = JOBS / "s3_counts.py"
N_FILES, LINES_PER_FILE, N_KEYS = 4, 12_000, 300


def write_input(url: str, seed: int) -> Counter:
    """``key,i`` lines in N_FILES objects; return the count per key."""
    rng = random.Random(seed)
    fs = fsspec.filesystem("s3")
    counts: Counter = Counter()
    for f in range(N_FILES):
        keys = [f"k{rng.randrange(N_KEYS)}" for _ in range(LINES_PER_FILE)]
        counts.update(keys)
        fs.pipe_file(f"{url}/part-{f}.txt", "".join(f"{k},{i}\n" for i, k in enumerate(keys)).encode())
    return counts


def expected_lines(counts: Counter) -> Counter:
    return Counter(f"{k},{i}" for k, c in counts.items() for i in range(1, c + 1))


def committed_lines(directory: str) -> list[str]:
    """Committed output; none yet when a run was killed before its sink created anything."""
    try:
        return read_committed_lines(directory)
    except FileNotFoundError:
        return []


def check_prefixes(lines: list[str], counts: Counter, when: str) -> Counter:
    """Committed running counts: no line twice, and every key's counts are exactly 1..m."""
    seen = Counter(lines)
    dup = [line for line, n in seen.items() if n > 1]
    assert not dup, f"{when}: duplicated lines {dup[:5]}"
    per_key: dict[str, list[int]] = {}
    for line in lines:
        key, count = line.rsplit(",", 1)
        per_key.setdefault(key, []).append(int(count))
    for key, values in per_key.items():
        assert sorted(values) == list(range(1, len(values) + 1)), f"{when}: {key} is not a prefix"
        assert len(values) <= counts[key], f"{when}: {key} has more than its {counts[key]} lines"
    return seen


@pytest.mark.timeout(90)
def test_checkpoints_and_file_output_on_s3_survive_a_failure(s3_bucket, tmp_path) -> None:
    counts = write_input(f"{s3_bucket}/in", seed=7)
    marker = tmp_path / "failed"
    seen = {"n": 0}

    def parse(line: str) -> tuple[str, int]:
        seen["n"] += 1
        if seen["n"] == 12_000 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure")
        return (line.split(",")[0], 1)

    job = Job("s3_inprocess")
    (
        job.source(FileSource(f"{s3_bucket}/in", read_size=8192), name="read", uid="read")
        .map(parse, name="parse")
        .key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
        .sink(FileSink(f"{s3_bucket}/out"), name="write", uid="write")
    )
    result = run_job_for_test(job, checkpoint_dir=f"{s3_bucket}/chk", parallelism=2, checkpoint_interval=0.05)

    assert result.restarts == 1
    assert Counter(read_committed_lines(f"{s3_bucket}/out")) == expected_lines(counts)
    store = CheckpointStore(f"{s3_bucket}/chk", "s3_inprocess")
    ids = store.checkpoint_ids()
    assert ids and store.read_metadata(ids[-1]).final is True


@pytest.mark.timeout(60)
def test_file_sink_commit_on_s3_is_copy_then_delete_and_idempotent(s3_bucket) -> None:
    directory = f"{s3_bucket}/sink"
    ctx = SubtaskContext(
        job_name="s3_commit",
        operator_name="write",
        uid="write",
        subtask_index=0,
        parallelism=1,
        max_parallelism=128,
        key_group_range=KeyGroupRange(0, 128),
        attempt_id=uuid.uuid4().hex[:12],
        restored_checkpoint_id=None,
        overwrite_output=False,
    )
    writer = FileSink(directory).create_writer(0, 1)
    writer.open(ctx)
    fs = fsspec.filesystem("s3")
    writer.process_batch(["a", "b"])
    [(_, c1)] = writer.snapshot_state(1).operator_state
    assert read_committed_lines(directory) == []  # pending: hidden
    fs.copy(c1["pending"], c1["final"])  # a commit killed between its copy and its delete

    writer.notify_checkpoint_complete(1)  # commit: the final object exists, delete the pending one
    writer.commit(c1)  # and again: nothing to do

    assert not fs.exists(c1["pending"])
    assert read_committed_lines(directory) == ["a", "b"]
    writer.process_batch(["c"])
    [(_, c2)] = writer.snapshot_state(2).operator_state
    fs.rm(c2["pending"])  # a lifecycle rule deleted the pending object
    with pytest.raises(SinkCommitError, match="lost"):
        writer.commit(c2)
    writer.close()


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(200)
def test_s3_chaos_kills_resume_to_the_reference_output(s3_bucket, chaos_seed, tmp_path) -> None:
    counts = write_input(f"{s3_bucket}/in", chaos_seed)
    out = f"{s3_bucket}/out"
    runs = CliRuns(
        job_file=JOB_FILE,
        params={"input": f"{s3_bucket}/in", "output": out, "delay_us": "100"},
        args=[
            "--checkpoint-dir",
            f"{s3_bucket}/chk",
            "--checkpoint-interval",
            "0.15",
            "--parallelism",
            "2",
            "--restart-delay",
            "0.1",
        ],
        logs=tmp_path / "logs",
        seed=chaos_seed,
        run_timeout=90.0,
    )
    where = f"seed={chaos_seed} logs={runs.logs}"
    previous: Counter = Counter()
    labels = ["after_pending_rename_before_commit_rename", "after_metadata_before_notify", "mid_commit"]
    for kind, arg in runs.fault_plan(5, labels, max_n=2):
        if kind == "random":
            outcome = runs.run(kill_after=runs.rng.uniform(0.6, 2.0))
        else:
            outcome = runs.run(crash_at=str(arg))
        assert outcome.killed, (
            f"run {outcome.index} ({kind} {arg}) exited {outcome.returncode}; {where}\n"
            f"{outcome.stderr[-2000:]}"
        )
        seen = check_prefixes(committed_lines(out), counts, f"after run {outcome.index}; {where}")
        vanished = set(previous) - set(seen)
        assert not vanished, f"committed lines disappeared: {sorted(vanished)[:5]}; {where}"
        previous = seen

    final = runs.run()
    assert final.returncode == 0, f"final run failed; {where}\n{final.stderr[-3000:]}"
    lines = read_committed_lines(out)
    check_prefixes(lines, counts, f"final; {where}")
    expected = expected_lines(counts)
    lost = sum((expected - Counter(lines)).values())
    duplicated = sum((Counter(lines) - expected).values())
    assert Counter(lines) == expected, f"lost={lost} duplicated={duplicated}; {where}"
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(out, detail=False)]
    hidden = [name for name in names if name.endswith((".pending", ".inprogress"))]
    assert hidden == [], f"leftover hidden objects {hidden}; {where}"
    before = {p: fs.info(p)["ETag"] for p in fs.find(out)}

    again = runs.run()
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
    fs.invalidate_cache()
    assert {p: fs.info(p)["ETag"] for p in fs.find(out)} == before

    runs.summary(
        "s3_counts", lines=len(lines), expected=sum(expected.values()), lost=lost, duplicated=duplicated
    )
