"""PostgresSink against the real server: the two-phase commit life cycle and the recovery decision table.

Most tests drive one writer per subtask by hand (open, write, snapshot,
notify, restore) so that each step of the commit decision table is visible; the last ones
run whole jobs, with injected failures, under both executors.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from onceflow import Job, PostgresSink, RestoredState, SinkCommitError
from onceflow.engine.context import SubtaskContext
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.testing import Crash, TestingSource
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
    fresh: bool = False,
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
        overwrite_output=fresh,
    )


def open_writer(sink: PostgresSink, context: SubtaskContext, restored: RestoredState | None = None):
    writer = sink.create_writer(context.subtask_index, context.parallelism)
    writer.open(context)
    if restored is not None:
        writer.restore_state(restored)
    return writer


def restored_from(checkpoint_id: int, *states: tuple[int, list]) -> RestoredState:
    """A restore of ``checkpoint_id`` whose old subtasks held ``(index, [(n, committable)])``."""
    return RestoredState(checkpoint_id, max(1, len(states)), list(states), {})


def rows(pg, table: str, order: str = "id") -> list[tuple]:
    return pg.q(f"SELECT * FROM {table} ORDER BY {order}")


def test_prepared_rows_are_invisible_until_commit_and_commit_is_idempotent(pg) -> None:
    table = pg.table("id bigint, name text")
    job = pg.job()
    writer = open_writer(PostgresSink(pg.dsn, table), ctx(job))
    try:
        writer.process_batch([(1, "a"), {"id": 2, "name": "b"}, {"name": "c", "id": 3}])
        writer.process_batch(pa.record_batch({"id": [4, 5], "name": ["d", None]}))
        snapshot = writer.snapshot_state(1)
        [(n, committable)] = snapshot.operator_state

        assert n == 1 and committable["rows"] == 5
        assert len(committable["gid"].encode()) < 200
        assert rows(pg, table) == []  # prepared: durable but invisible to a reader
        assert pg.prepared(job, "sink") == [committable["gid"]]

        writer.notify_checkpoint_complete(1)

        assert rows(pg, table) == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, None)]
        assert pg.q(
            "SELECT job, sink, subtask, checkpoint_id FROM onceflow_commits WHERE gid = %s",
            (committable["gid"],),
        ) == [(job, "sink", 0, 1)]
        writer.commit(committable)  # again: the marker row says "already committed"
        writer.notify_checkpoint_complete(1)  # a late, repeated notification is a no-op
        assert len(rows(pg, table)) == 5
        assert writer.snapshot_state(2).operator_state == []  # nothing written: no empty transaction
        assert pg.prepared(job, "sink") == []
    finally:
        writer.close()


def test_restore_commits_owed_transactions_and_rolls_back_orphans_only_of_its_own(pg) -> None:
    """The commit decision table (prepared, marker row, lost), row by row, after attempt A is killed."""
    table = pg.table("id bigint, name text")
    job = pg.job()
    sink = PostgresSink(pg.dsn, table)
    # Attempt A prepares checkpoints 1 (which completes) and 2 (which never does), then dies.
    a = open_writer(sink, ctx(job, attempt="attemptA"))
    a.process_batch([(1, "a"), (2, "a")])
    [(_, c1)] = a.snapshot_state(1).operator_state
    a.process_batch([(3, "a")])
    a.snapshot_state(2)
    a.close()  # like kill -9: both transactions stay prepared
    gid2 = f"{c1['gid'].rsplit(':', 3)[0]}:0:2:attemptA"
    assert pg.prepared(job, "sink") == sorted([c1["gid"], gid2])
    # Someone else's prepared transactions: another job, and a gid onceflow did not make.
    other_job = pg.job()
    other = open_writer(PostgresSink(pg.dsn, table), ctx(other_job))
    other.process_batch([(100, "other")])
    [(_, foreign)] = other.snapshot_state(7).operator_state
    other.close()
    stranger = f"not-onceflow-{uuid.uuid4().hex[:8]}"
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (200, 'stranger')")
        conn.execute(f"PREPARE TRANSACTION '{stranger}'")
    try:
        # Attempt B: subtask 1 starts first and prepares its checkpoint 3...
        b1 = open_writer(
            sink,
            ctx(job, subtask=1, parallelism=2, attempt="attemptB", restored=1),
            restored_from(1, (0, [(1, c1)])),
        )
        b1.process_batch([(10, "b")])
        [(_, b1c3)] = b1.snapshot_state(3).operator_state
        # ...then subtask 0 restores checkpoint 1: commit c1 (prepared, owed), roll back gid2
        # (prepared, not owed), keep attempt B's own gid, never touch the foreign ones.
        b0 = open_writer(
            sink,
            ctx(job, subtask=0, parallelism=2, attempt="attemptB", restored=1),
            restored_from(1, (0, [(1, c1)])),
        )

        assert rows(pg, table) == [(1, "a"), (2, "a")]
        assert pg.prepared(job, "sink") == [b1c3["gid"]]
        assert pg.prepared(other_job, "sink") == [foreign["gid"]]
        assert pg.q("SELECT gid FROM pg_prepared_xacts WHERE gid = %s", (stranger,)) == [(stranger,)]

        b1.notify_checkpoint_complete(3)
        b0.close()
        b1.close()
        assert rows(pg, table) == [(1, "a"), (2, "a"), (10, "b")]

        # Attempt C restores checkpoint 3, whose snapshot still listed c1 and b1c3: both are
        # no longer prepared but have marker rows, so they count as committed (no error).
        c0 = open_writer(
            sink, ctx(job, attempt="attemptC", restored=3), restored_from(3, (0, [(1, c1)]), (1, [(3, b1c3)]))
        )
        c0.close()
        assert rows(pg, table) == [(1, "a"), (2, "a"), (10, "b")]
        assert pg.prepared(job, "sink") == []
    finally:
        pg.q(f"ROLLBACK PREPARED '{stranger}'")
        pg.q(f"ROLLBACK PREPARED '{foreign['gid']}'")


def test_a_completed_checkpoint_rolled_back_by_hand_is_a_loud_commit_error(pg) -> None:
    table = pg.table("id bigint, name text")
    job = pg.job()
    sink = PostgresSink(pg.dsn, table)
    a = open_writer(sink, ctx(job))
    a.process_batch([(1, "a")])
    [(_, c1)] = a.snapshot_state(1).operator_state
    a.close()
    pg.q(f"ROLLBACK PREPARED '{c1['gid']}'")  # F19: an operator "cleans up" prepared transactions

    with pytest.raises(SinkCommitError) as info:
        open_writer(sink, ctx(job, restored=1), restored_from(1, (0, [(1, c1)])))

    message = str(info.value)
    assert c1["gid"] in message and "lost" in message and f"table {table!r}" in message
    assert "\n" not in message
    assert rows(pg, table) == []


def test_a_fresh_start_rolls_back_every_prepared_transaction_of_its_job_and_sink(pg) -> None:
    table = pg.table("id bigint, name text")
    job = pg.job()
    sink = PostgresSink(pg.dsn, table)
    a = open_writer(sink, ctx(job))
    a.process_batch([(1, "a")])
    a.snapshot_state(1)
    a.close()
    assert len(pg.prepared(job, "sink")) == 1

    b = open_writer(sink, ctx(job))  # no checkpoint completed: nothing is owed
    b.close()

    assert pg.prepared(job, "sink") == []
    assert rows(pg, table) == []


def test_upsert_merges_per_key_and_an_aborted_checkpoint_is_rolled_back_and_rewritten(pg) -> None:
    table = pg.table("k text PRIMARY KEY, v bigint, w text")
    job = pg.job()
    sink = PostgresSink(pg.dsn, table, mode="upsert", key_columns=["k"])
    writer = open_writer(sink, ctx(job))
    try:
        writer.process_batch([{"k": "a", "v": 1, "w": "x"}, {"k": "a", "v": 2}, ("b", 5, "y")])
        [(_, c1)] = writer.snapshot_state(1).operator_state
        assert c1["rows"] == 2  # merged per key before writing
        # Written now, key "a" would wait for the lock that c1 holds: it is buffered instead.
        writer.process_batch([{"k": "a", "v": 3}, {"k": "c", "v": 7, "w": "z"}])
        writer.notify_checkpoint_aborted(1)  # checkpoint 1 never completes
        assert pg.prepared(job, "sink") == []
        [(_, c2)] = writer.snapshot_state(2).operator_state
        writer.notify_checkpoint_complete(2)

        assert rows(pg, table, "k") == [("a", 3, "x"), ("b", 5, "y"), ("c", 7, "z")]
        assert c2["rows"] == 3
        assert pg.prepared(job, "sink") == []
    finally:
        writer.close()


def _numbers_job(job_name: str, dsn: str, table: str, items: list, mode: str = "insert") -> Job:
    job = Job(job_name)
    sink = (
        PostgresSink(dsn, table)
        if mode == "insert"
        else PostgresSink(dsn, table, mode="upsert", key_columns=["id"])
    )
    (
        job.source(TestingSource(items, batch_size=50, partitions=2), name="read", uid="read")
        .map(lambda i: (i, f"n{i}"), name="row")
        .sink(sink, name="pg", uid="pg")
    )
    return job


def test_a_job_with_failures_writes_every_row_exactly_once(pg, executor) -> None:
    table = pg.table("id bigint, name text")
    job_name = pg.job()
    items = list(range(3000))
    items = items[:1100] + [Crash()] + items[1100:2400] + [Crash()] + items[2400:]

    result = run_job_for_test(
        _numbers_job(job_name, pg.dsn, table, items),
        parallelism=2,
        executor=executor,
        checkpoint_interval=0.02,
    )

    assert result.restarts >= 1  # two crashes; under the process executor both may hit one attempt
    ids = [r[0] for r in pg.q(f"SELECT id FROM {table} ORDER BY id")]
    assert ids == list(range(3000))
    assert pg.prepared(job_name, "pg") == []
    commits = pg.q("SELECT count(*) FROM onceflow_commits WHERE job = %s", (job_name,))[0][0]
    assert commits >= 2


def test_a_fresh_run_refuses_to_mix_with_an_earlier_run_unless_fresh(pg, tmp_path) -> None:
    table = pg.table("id bigint PRIMARY KEY, name text")
    job_name = pg.job()
    items = list(range(200))
    run_job_for_test(
        _numbers_job(job_name, pg.dsn, table, items, "upsert"), checkpoint_dir=str(tmp_path / "a")
    )

    with pytest.raises(Exception, match="earlier run .* rerun with --fresh"):
        run_job_for_test(
            _numbers_job(job_name, pg.dsn, table, items, "upsert"), checkpoint_dir=str(tmp_path / "b")
        )
    run_job_for_test(
        _numbers_job(job_name, pg.dsn, table, items, "upsert"), checkpoint_dir=str(tmp_path / "b"), fresh=True
    )

    assert pg.q(f"SELECT count(*) FROM {table}")[0][0] == 200
    assert pg.prepared(job_name, "pg") == []
