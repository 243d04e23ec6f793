"""Bad input for the connectors: each a clear one-line error naming the connector; nothing half-committed.

About wrong credentials: the local PostgreSQL trusts every connection from
127.0.0.1 (pg_hba ``trust``), so a wrong password is accepted there; the
tests use a role and a database that do not exist instead, which the server
rejects the same way at connection time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from onceflow import (
    ErrorDomain,
    FileSink,
    Job,
    OperatorError,
    PostgresSink,
    RedisStreamSink,
    RedisStreamSource,
)
from onceflow.engine.context import SubtaskContext
from onceflow.engine.testing import run_job_for_test
from onceflow.operators.postgres import PostgresSinkError
from onceflow.operators.testing import TestingSource
from onceflow.state_backends.key_groups import KeyGroupRange
from tests.support.chaos import REPO, free_port

pytestmark = pytest.mark.timeout(60)


def _pg_job(name: str, sink: PostgresSink, items: list) -> Job:
    job = Job(name)
    job.source(TestingSource(items, batch_size=100), name="read", uid="read").sink(sink, name="pg", uid="pg")
    return job


def _fails(job: Job, **kwargs) -> OperatorError:
    with pytest.raises(OperatorError) as info:
        run_job_for_test(job, restart_attempts=1, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return info.value


def test_unreachable_database_is_an_external_error_naming_the_sink(pg) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    err = _fails(_pg_job(pg.job(), PostgresSink(dsn, "t"), [(1,)]))

    assert "PostgresSink(table 't'" in str(err)
    assert "cannot connect to PostgreSQL" in str(err) and "is the server running" in str(err)
    assert err.domain is ErrorDomain.EXTERNAL  # worth a restart: the server may come back


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("no_such_role_{u}:secret-pw@127.0.0.1:5432/test", 'role "no_such_role_{u}" does not exist'),
        ("postgres:secret-pw@127.0.0.1:5432/no_such_db_{u}", 'database "no_such_db_{u}" does not exist'),
    ],
    ids=["unknown-role", "unknown-database"],
)
def test_wrong_credentials_are_a_user_error_without_the_password(pg, part, expected) -> None:
    u = uuid.uuid4().hex[:6]
    dsn = "postgresql://" + part.format(u=u)
    err = _fails(_pg_job(pg.job(), PostgresSink(dsn, "t"), [(1,)]))

    assert expected.format(u=u) in str(err)
    assert "PostgresSink(table 't'" in str(err) and "check the user, password and database" in str(err)
    assert "secret-pw" not in str(err)
    assert err.domain is ErrorDomain.USER  # not retried


def test_a_missing_table_is_a_user_error(pg) -> None:
    err = _fails(_pg_job(pg.job(), PostgresSink(pg.dsn, "no_such_table_x"), [(1,)]))

    assert "PostgresSink(table 'no_such_table_x'" in str(err)
    assert "does not exist in database 'test'" in str(err)
    assert err.domain is ErrorDomain.USER


def test_upsert_without_a_matching_unique_index_fails_at_start(pg) -> None:
    table = pg.table("id bigint, name text")
    sink = PostgresSink(pg.dsn, table, mode="upsert", key_columns=["id"])
    err = _fails(_pg_job(pg.job(), sink, [(1, "a")]))

    assert "upsert needs a unique index or primary key on exactly ['id']" in str(err)


@pytest.mark.parametrize(
    ("record", "expected", "shown"),
    [
        (("seven", "x"), "invalid input syntax for type bigint", "{'id': 'seven', 'name': 'x'}"),
        ({"id": 7, "bogus": 1}, "no column 'bogus'", "{'id': 7, 'bogus': 1}"),
        ((7, "x", "extra"), "has 3 fields, but the sink writes 2 columns", "(7, 'x', 'extra')"),
        (["a", "list", "record"], "has 3 fields", "['a', 'list', 'record']"),
        (42, "of type int cannot be written", "record 42 "),
    ],
    ids=["bad-type", "unknown-column", "too-many-fields", "list-arity", "not-a-row"],
)
def test_a_record_that_does_not_fit_names_the_sink_and_the_record_and_commits_nothing(
    pg, record, expected, shown
) -> None:
    table = pg.table("id bigint, name text")
    job_name = pg.job()
    job = _pg_job(job_name, PostgresSink(pg.dsn, table), [(i, "ok") for i in range(500)] + [record])

    err = _fails(job, checkpoint_interval=30.0)

    assert f"PostgresSink(table {table!r}" in str(err) and expected in str(err)
    assert shown in str(err)
    assert err.domain is ErrorDomain.USER
    assert pg.q(f"SELECT count(*) FROM {table}") == [(0,)]  # the good rows before it neither
    assert pg.prepared(job_name, "pg") == []


def test_a_bad_record_deep_in_a_large_copy_is_found_by_its_line(pg) -> None:
    table = pg.table("id bigint, name text")
    items = [(i, "ok") for i in range(30_000)] + [("thirty thousand", "bad")] + [(1, "ok")] * 10
    err = _fails(_pg_job(pg.job(), PostgresSink(pg.dsn, table), items), checkpoint_interval=30.0)

    assert "{'id': 'thirty thousand', 'name': 'bad'}" in str(err)
    assert pg.q(f"SELECT count(*) FROM {table}") == [(0,)]


def test_a_not_null_violation_in_upsert_mode_shows_the_record(pg) -> None:
    table = pg.table("id bigint PRIMARY KEY, name text NOT NULL")
    sink = PostgresSink(pg.dsn, table, mode="upsert", key_columns=["id"])
    err = _fails(_pg_job(pg.job(), sink, [(1, "a"), (2, None), (3, "c")]))

    assert 'null value in column "name"' in str(err) and "{'id': 2, 'name': None}" in str(err)
    assert pg.q(f"SELECT count(*) FROM {table}") == [(0,)]


def test_disabled_prepared_transactions_say_how_to_fix_it(pg) -> None:
    """The server here has them enabled, so the check runs against a stand-in that answers 0."""

    class Answer:
        def fetchone(self):
            return ("0",)

    class Server:
        def execute(self, *args):
            return Answer()

    writer = PostgresSink(pg.dsn, "t").create_writer(0, 1)
    writer._where = "PostgresSink(table 't', uid 'pg', subtask 0)"
    writer._control = Server()
    with pytest.raises(PostgresSinkError) as info:
        writer._check_prepared_transactions()

    assert "max_prepared_transactions = 0" in str(info.value)
    assert "ALTER SYSTEM SET max_prepared_transactions = 64; then restart PostgreSQL" in str(info.value)


# -- Redis ------------------------------------------------------------------------------


def _ctx(uid: str) -> SubtaskContext:
    return SubtaskContext(
        job_name="errors",
        operator_name=uid,
        uid=uid,
        subtask_index=0,
        parallelism=1,
        max_parallelism=128,
        key_group_range=KeyGroupRange(0, 128),
        attempt_id="a1",
        restored_checkpoint_id=None,
        overwrite_output=False,
    )


def test_unreachable_redis_names_the_source_and_the_sink(tmp_path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    job = Job("redis_down")
    (
        job.source(RedisStreamSource(url, "events"), name="read", uid="read").sink(
            FileSink(str(tmp_path / "out")), name="write", uid="write"
        )
    )
    err = _fails(job)
    assert f"RedisStreamSource('{url}'" in str(err) and "cannot connect to Redis" in str(err)
    assert err.domain is ErrorDomain.EXTERNAL

    writer = RedisStreamSink(url, "target").create_writer(0, 1)
    with pytest.raises(Exception, match=r"RedisStreamSink\('target'.*cannot connect to Redis"):
        writer.open(_ctx("write"))


def test_a_missing_stream_or_a_key_of_another_type_is_a_user_error(rds, redis_url) -> None:
    missing = rds.stream()
    reader = RedisStreamSource(redis_url, missing).create_reader(0, 1)
    with pytest.raises(Exception, match=f"stream '{missing}' does not exist"):
        reader.open(_ctx("read"))

    wrong = rds.stream()
    rds.client.set(wrong, "a string")
    reader = RedisStreamSource(redis_url, wrong).create_reader(0, 1)
    with pytest.raises(Exception, match="is a Redis string, not a stream"):
        reader.open(_ctx("read"))
    writer = RedisStreamSink(redis_url, wrong).create_writer(0, 1)
    with pytest.raises(Exception, match="is a Redis string, not a stream"):
        writer.open(_ctx("write"))


# -- the CLI: one line, exit code 2 -----------------------------------------------------


def test_the_cli_reports_a_missing_table_in_one_line_and_exits_2(pg, rds, redis_url, tmp_path) -> None:
    stream = rds.stream()
    rds.client.xadd(stream, {"user": "u1", "amount": "5"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onceflow",
            "run",
            str(REPO / "jobs" / "redis_to_postgres.py"),
            "-p",
            f"redis={redis_url}",
            "-p",
            f"streams={stream}",
            "-p",
            f"dsn={pg.dsn}",
            "-p",
            "table=no_such_table_cli",
            "--checkpoint-dir",
            str(tmp_path / "chk"),
            "--progress",
            "off",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("onceflow: error:")]
    assert len(errors) == 1
    assert "PostgresSink(table 'no_such_table_cli'" in errors[0] and "does not exist" in errors[0]
