"""Fixtures of the connector tests: the real PostgreSQL and Redis, and a moto S3 server.

A test that needs a service skips, with the reason, only when the service is
truly unreachable (or its client library is not installed); with ``CI=true``
it fails instead, because ``.ci/run`` starts and configures every service.

Environment:
    ONCEFLOW_TEST_PG_DSN      default postgresql://postgres@127.0.0.1:5432/test
    ONCEFLOW_TEST_REDIS_URL   default redis://127.0.0.1:6379/0
    CHAOS_SEED                replay a chaos test with its printed seed
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import pytest

from tests.support.chaos import free_port

PG_DSN = os.environ.get("ONCEFLOW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ONCEFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
SINK_UIDS = ("sink", "upsert", "write", "pg")
"""Sink uids the tests use; cleanup rolls back their prepared transactions."""


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI where every service must be up."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must start this service)", pytrace=False)
    pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of a reachable PostgreSQL server with prepared transactions enabled."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3, autocommit=True) as conn:
            value = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at {PG_DSN} is unreachable: {' '.join(str(exc).split())}")
    if value == 0:
        unavailable(
            "PostgreSQL runs with max_prepared_transactions = 0; run .ci/run or "
            "ALTER SYSTEM SET max_prepared_transactions = 64 and restart it"
        )
    return PG_DSN


class PgHelper:
    """An autocommit connection plus bookkeeping of what a test created, for cleanup."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.tables: list[str] = []
        self.jobs: list[str] = []

    def q(self, query: str, params: tuple = ()) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def table(self, columns: str = "id bigint, name text") -> str:
        name = unique("of_test")
        self.q(f"CREATE TABLE {name} ({columns})")
        self.tables.append(name)
        return name

    def job(self, prefix: str = "pgjob") -> str:
        name = unique(prefix)
        self.jobs.append(name)
        return name

    def prefixes(self, job: str, uid: str) -> tuple[str, ...]:
        """The gid prefixes of sink ``uid`` of ``job`` into any table this test created."""
        from onceflow.operators.postgres import gid_prefix

        return tuple(gid_prefix(job, uid, f"public.{table}") for table in self.tables)

    def prepared(self, job: str, uid: str) -> list[str]:
        """This sink's prepared transactions, sorted."""
        prefixes = self.prefixes(job, uid)
        return sorted(
            gid for (gid,) in self.q("SELECT gid FROM pg_prepared_xacts") if gid.startswith(prefixes)
        )

    def close(self) -> None:
        # Prepared transactions hold locks: roll back every one of this test's jobs
        # before dropping tables (sinks in these tests use the uids below).
        prefixes = tuple(p for job in self.jobs for uid in SINK_UIDS for p in self.prefixes(job, uid))
        for (gid,) in self.q("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"):
            if gid.startswith(prefixes):
                self.q(f"ROLLBACK PREPARED '{gid}'")
        for name in self.tables:
            self.q(f"DROP TABLE IF EXISTS {name}")
        if self.jobs and self.q("SELECT to_regclass('onceflow_commits')")[0][0]:
            self.q("DELETE FROM onceflow_commits WHERE job = ANY(%s)", (self.jobs,))
        self.conn.close()


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[PgHelper]:
    helper = PgHelper(pg_dsn)
    try:
        yield helper
    finally:
        helper.close()


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis server."""
    try:
        import redis
    except ImportError:
        unavailable("redis-py is not installed (pip install -e '.[test]')")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL


class RedisHelper:
    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.keys: list[str] = []

    def stream(self, prefix: str = "of_test") -> str:
        name = unique(prefix)
        self.keys.append(name)
        return name

    def fill(self, stream: str, n: int, start: int = 0) -> list[str]:
        """XADD entries ``{"i": i}``; return their ids."""
        ids: list[str] = []
        pipe = self.client.pipeline(transaction=False)
        for i in range(start, start + n):
            pipe.xadd(stream, {"i": str(i), "user": f"u{i % 37}"})
            if len(pipe) >= 5000:
                ids.extend(pipe.execute())
        ids.extend(pipe.execute())
        return ids

    def close(self) -> None:
        if self.keys:
            self.client.delete(*self.keys)
        self.client.close()


@pytest.fixture
def rds(redis_url: str) -> Iterator[RedisHelper]:
    helper = RedisHelper(redis_url)
    try:
        yield helper
    finally:
        helper.close()


# -- S3 (moto) --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, configured for fsspec in this process and in subprocesses."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"S3 tests need s3fs and moto[server] (pip install -e '.[test]'): {exc}")
    import logging

    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
    }
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(env)
    fsspec.config.conf["s3"] = {**(saved_conf or {}), "endpoint_url": endpoint}
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket; returns ``s3://<bucket>``."""
    import fsspec

    name = unique("of-test").replace("_", "-")
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}"


# -- chaos ------------------------------------------------------------------------------


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    env = os.environ.get("CHAOS_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**31)
    print(f"\nchaos seed={seed} test={request.node.name} (replay with CHAOS_SEED={seed})")
    return seed
