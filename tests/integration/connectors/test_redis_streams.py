"""RedisStreamSource and RedisStreamSink against the real Redis server."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from onceflow import (
    FileSink,
    Job,
    RedisStreamSink,
    RedisStreamSource,
    SinkCommitError,
    read_committed_lines,
)
from onceflow.engine.context import SubtaskContext
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.base import Backlog
from onceflow.operators.testing import RunInterrupted
from onceflow.state_backends.key_groups import KeyGroupRange

pytestmark = pytest.mark.timeout(60)


def ctx(
    job: str,
    *,
    uid: str = "sink",
    subtask: int = 0,
    parallelism: int = 1,
    attempt: str | None = None,
    restored: int | None = None,
) -> SubtaskContext:
    return SubtaskContext(
        job_name=job,
        operator_name=uid,
        uid=uid,
        subtask_index=subtask,
        parallelism=parallelism,
        max_parallelism=128,
        key_group_range=KeyGroupRange(0, 128),
        attempt_id=attempt or uuid.uuid4().hex[:12],
        restored_checkpoint_id=restored,
        overwrite_output=False,
    )


def fail_once(marker: Path, at: int, exc: type[Exception] = RuntimeError):
    """A map function that raises once, at its ``at``-th record; the marker file makes it once per test."""
    seen = {"n": 0}

    def fn(record):
        seen["n"] += 1
        if seen["n"] == at and not marker.exists():
            marker.touch()
            raise exc(f"injected failure at record {at}")
        return record

    return fn


def committed_by_stream(out: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in read_committed_lines(str(out)):
        stream, _, i = line.split(",")
        found.setdefault(stream, []).append(int(i))
    return found


def test_bounded_source_reads_every_entry_once_in_order_through_a_failure(rds, tmp_path, executor) -> None:
    streams = [rds.stream(), rds.stream(), rds.stream()]
    for k, stream in enumerate(streams):
        rds.fill(stream, 1500 + 500 * k)
    late = {"done": False, "n": 0}
    url = rds.client.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}"

    def add_late_entries(record):
        # producers keep writing while the job runs (here after some checkpoints, before
        # the failure): a bounded source, restored or not, ignores that
        time.sleep(0.0001)
        late["n"] += 1
        if late["n"] == 1000 and not late["done"]:
            late["done"] = True
            import redis

            client = redis.Redis.from_url(redis_url)
            for stream in streams:
                client.xadd(stream, {"i": "-1"})
        return record

    job = Job(f"redis_src_{uuid.uuid4().hex[:6]}")
    (
        job.source(RedisStreamSource(redis_url, streams, batch_size=100), name="read", uid="read")
        .map(add_late_entries, name="late")
        .map(fail_once(tmp_path / "failed", 2000), name="fail")
        .map(lambda r: f"{r[0]},{r[1]},{r[2]['i']}", name="format")
        .sink(FileSink(str(tmp_path / "out")), name="write", uid="write")
    )
    result = run_job_for_test(job, parallelism=2, executor=executor, checkpoint_interval=0.02)

    assert result.restarts == 1
    lines = read_committed_lines(str(tmp_path / "out"))
    ids = [tuple(line.split(",")[:2]) for line in lines]
    assert len(ids) == len(set(ids))
    assert committed_by_stream(tmp_path / "out") == {
        stream: list(range(1500 + 500 * k)) for k, stream in enumerate(streams)
    }


def test_a_resumed_bounded_source_stops_where_the_first_start_ended(rds, tmp_path) -> None:
    stream = rds.stream()
    rds.fill(stream, 2000)
    url = rds.client.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    chk = str(tmp_path / "chk")

    def build() -> Job:
        job = Job("redis_resume")

        def slow(record):
            time.sleep(0.0002)
            return record

        (
            job.source(RedisStreamSource(redis_url, stream, batch_size=50), name="read", uid="read")
            .map(slow, name="slow")
            .map(fail_once(tmp_path / "stopped", 1500, RunInterrupted), name="stop")
            .map(lambda r: f"{r[0]},{r[1]},{r[2]['i']}", name="format")
            .sink(FileSink(str(tmp_path / "out")), name="write", uid="write")
        )
        return job

    with pytest.raises(RunInterrupted):
        run_job_for_test(build(), checkpoint_dir=chk, checkpoint_interval=0.02)
    partial = committed_by_stream(tmp_path / "out").get(stream, [])
    assert 0 < len(partial) < 1500
    rds.fill(stream, 300, start=2000)  # written between the runs: after the recorded end

    result = run_job_for_test(build(), checkpoint_dir=chk, checkpoint_interval=0.02)

    assert result.restored_from is not None
    assert committed_by_stream(tmp_path / "out") == {stream: list(range(2000))}


def test_an_unbounded_reader_follows_new_entries_and_snapshots_its_offsets(rds) -> None:
    stream = rds.stream()
    ids = rds.fill(stream, 3)
    url = rds.client.connection_pool.connection_kwargs
    source = RedisStreamSource(
        f"redis://{url['host']}:{url['port']}/0", [stream], bounded=False, idle_poll=0.01
    )
    reader = source.create_reader(0, 1)
    reader.open(ctx("unbounded", uid="read"))
    try:
        first = reader.poll_batch(10)
        assert [(s, i, f["i"]) for s, i, f in first] == [(stream, ids[k], str(k)) for k in range(3)]
        assert reader.poll_batch(10) == []  # nothing new: not the end
        [new_id] = rds.fill(stream, 1, start=3)
        deadline = time.monotonic() + 2
        got: list = []
        while not got and time.monotonic() < deadline:
            got = reader.poll_batch(10)
        assert [(i, f["i"]) for _, i, f in got] == [(new_id, "3")]
        assert reader.snapshot_state(1) == {stream: {"last": new_id, "end": None, "read": 4}}
        rds.fill(stream, 2, start=4)
        assert reader.backlog() == Backlog(2, "entries")  # XINFO entries-added minus entries read
    finally:
        reader.close()


def test_a_subtask_without_a_stream_ends_at_once(rds) -> None:
    stream = rds.stream()
    rds.fill(stream, 1)
    url = rds.client.connection_pool.connection_kwargs
    source = RedisStreamSource(f"redis://{url['host']}:{url['port']}/0", [stream])
    reader = source.create_reader(1, 2)
    reader.open(ctx("idle", uid="read", subtask=1, parallelism=2))
    assert reader.poll_batch(10) is None
    reader.close()


# -- sink -------------------------------------------------------------------------------


def _target_entries(rds, stream: str) -> list[dict]:
    return [fields for _, fields in rds.client.xrange(stream)]


def test_redis_sink_is_exactly_once_through_failures(rds, tmp_path, executor) -> None:
    sources = [rds.stream(), rds.stream()]
    for stream in sources:
        rds.fill(stream, 2500)
    target = rds.stream("of_target")
    url = rds.client.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    job = Job(f"redis_sink_{uuid.uuid4().hex[:6]}")
    (
        job.source(RedisStreamSource(redis_url, sources, batch_size=100), name="read", uid="read")
        .map(fail_once(tmp_path / "failed", 1700), name="fail")
        .map(lambda r: {"src": r[0], "i": r[2]["i"], "n": int(r[2]["i"]) * 2}, name="fields")
        .sink(RedisStreamSink(redis_url, target), name="write", uid="write")
    )

    result = run_job_for_test(job, parallelism=2, executor=executor, checkpoint_interval=0.02)

    assert result.restarts == 1
    entries = _target_entries(rds, target)
    assert len(entries) == 5000
    for stream in sources:
        mine = [int(e["i"]) for e in entries if e["src"] == stream]
        assert mine == list(range(2500))  # once each, and in order
    assert all(int(e["n"]) == 2 * int(e["i"]) for e in entries)
    digest_keys = list(rds.client.scan_iter(match="onceflow:sink:*:stage:*"))
    assert [k for k in digest_keys if job.name in k] == []
    rds.keys.extend(rds.client.scan_iter(match="onceflow:sink:*"))  # cleanup


def test_redis_sink_commit_is_idempotent_and_a_lost_stage_is_loud(rds, redis_url) -> None:
    target = rds.stream("of_target")
    job = f"rsink_{uuid.uuid4().hex[:6]}"
    sink = RedisStreamSink(redis_url, target)
    writer = sink.create_writer(0, 1)
    writer.open(ctx(job, attempt="attemptA"))
    try:
        writer.process_batch([{"a": "1"}, ("stream", "0-1", {"a": 2, "b": 1.5})])
        [(_, c1)] = writer.snapshot_state(1).operator_state
        assert _target_entries(rds, target) == []  # staged, not visible
        writer.notify_checkpoint_complete(1)
        assert _target_entries(rds, target) == [{"a": "1"}, {"a": "2", "b": "1.5"}]
        writer.commit(c1)  # a repeat finds checkpoint 1 recorded: no-op
        assert len(_target_entries(rds, target)) == 2

        writer.process_batch([{"a": "3"}])
        [(_, c2)] = writer.snapshot_state(2).operator_state
        rds.client.delete(c2["stage"])  # someone deletes the staged entries
        with pytest.raises(SinkCommitError, match="lost"):
            writer.commit(c2)

        # leftovers of a dead attempt are deleted on restore; the current attempt's stay
        rds.client.rpush(c2["stage"].replace("attemptA", "attemptZ"), json.dumps(["x", "1"]))
        writer.process_batch([{"a": "4"}])
        writer.abort_leftovers([])
        stages = list(rds.client.scan_iter(match=c2["stage"].rsplit(":", 3)[0] + ":*"))
        assert stages == [writer._stage_key()]
    finally:
        writer.close()
        rds.keys.extend(rds.client.scan_iter(match=c1["stage"].split(":stage:")[0] + ":*"))
