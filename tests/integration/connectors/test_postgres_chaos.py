"""Chaos with real services: Redis stream -> keyed totals -> PostgresSink upsert, killed again and again.

``jobs/redis_to_postgres.py`` reads 100,000 events from two Redis streams
(each user's events in one stream, so a user's order is defined), keeps a
running (events, amount) per user and upserts it into PostgreSQL with
two-phase commit. The runner's process group is SIGKILLed at random moments
and at named crash points; one run has the sink's PostgreSQL backends
terminated while a checkpoint's transaction is prepared; then the job runs to
the end. After every kill the committed table must be the totals of a prefix
of each user's events (nothing double counted, nothing from an uncompleted
checkpoint, nothing committed earlier undone); at the end it must equal the
plain-Python reference, with no prepared transaction left behind.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tests.support.chaos import REPO, CliRuns

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

N_EVENTS = 100_000
N_USERS = 1_000
LABELS = [
    "after_prepare_before_ack",
    "after_metadata_before_notify",
    "mid_commit",
    "after_commit_prepared_before_bookkeeping",
]
RANDOM_KILLS = 5


def events(seed: int):
    """Event ``i``: user ``u<i % N_USERS>``, amount from the seed; user u lives in stream u % 2."""
    for i in range(N_EVENTS):
        user = i % N_USERS
        yield user % 2, f"u{user}", (i * 7919 + seed) % 1000


def reference(seed: int) -> tuple[dict[str, tuple[int, int]], dict[str, list[int]]]:
    """Final (events, amount) per user, and each user's prefix sums (prefix[u][c] = sum of first c)."""
    prefix: dict[str, list[int]] = defaultdict(lambda: [0])
    for _, user, amount in events(seed):
        sums = prefix[user]
        sums.append(sums[-1] + amount)
    final = {user: (len(sums) - 1, sums[-1]) for user, sums in prefix.items()}
    return final, dict(prefix)


def load_streams(rds, streams: list[str], seed: int) -> None:
    pipe = rds.client.pipeline(transaction=False)
    for k, user, amount in events(seed):
        pipe.xadd(streams[k], {"user": user, "amount": str(amount)})
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()


def test_redis_to_postgres_is_exactly_once_under_kills(pg, rds, redis_url, chaos_seed, tmp_path) -> None:
    streams = [rds.stream("of_chaos"), rds.stream("of_chaos")]
    load_streams(rds, streams, chaos_seed)
    final, prefix = reference(chaos_seed)
    table = pg.table("user_id text PRIMARY KEY, events bigint, amount bigint")
    pg.jobs.append("redis_to_postgres")
    runs = CliRuns(
        job_file=REPO / "jobs" / "redis_to_postgres.py",
        params={
            "redis": redis_url,
            "streams": ",".join(streams),
            "dsn": pg.dsn,
            "table": table,
            "delay_us": "60",
        },
        args=[
            "--checkpoint-dir",
            str(tmp_path / "chk"),
            "--checkpoint-interval",
            "0.1",
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
    previous: dict[str, int] = {}

    def committed() -> dict[str, tuple[int, int]]:
        return {u: (e, a) for u, e, a in pg.q(f"SELECT user_id, events, amount FROM {table}")}

    def check_prefix(when: str) -> dict[str, tuple[int, int]]:
        rows = committed()
        for user, (count, amount) in rows.items():
            assert user in final, f"{when}: unexpected user {user}; {where}"
            assert count <= final[user][0], f"{when}: {user} double counted ({count}); {where}"
            assert amount == prefix[user][count], (
                f"{when}: {user} has events={count} amount={amount}, not a prefix total "
                f"({prefix[user][count]}); {where}"
            )
            assert count >= previous.get(user, 0), f"{when}: {user} went back in time; {where}"
        lost_users = set(previous) - set(rows)
        assert not lost_users, f"{when}: committed users disappeared: {sorted(lost_users)[:5]}; {where}"
        previous.update({u: c for u, (c, _) in rows.items()})
        return rows

    # 1. random kills and named crash points, in a seeded order
    for kind, arg in runs.fault_plan(RANDOM_KILLS, LABELS, max_n=2):
        if kind == "random":
            outcome = runs.run(kill_after=runs.rng.uniform(0.5, 1.6))
        else:
            outcome = runs.run(crash_at=str(arg))
        assert outcome.killed, (
            f"run {outcome.index} ({kind} {arg}) ended with {outcome.returncode} before it was "
            f"killed; {where}\n{outcome.stderr[-2000:]}"
        )
        check_prefix(f"after run {outcome.index} ({outcome.label})")

    # 2. terminate the sink's PostgreSQL backends while a checkpoint is prepared
    terminated: list[int] = []
    prefixes = pg.prefixes("redis_to_postgres", "upsert")

    def terminate_when_prepared(proc) -> None:
        import psycopg

        def ours(conn) -> set[str]:
            return {
                g
                for (g,) in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()
                if g.startswith(prefixes)
            }

        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            leftovers = ours(conn)  # of killed runs: this run rolls back or commits them
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if ours(conn) - leftovers:  # this run prepared a checkpoint, not yet committed
                    rows = conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name LIKE %s",
                        (f"onceflow:redis_to_postgres:upsert:%:{table}",),
                    ).fetchall()
                    terminated.append(len(rows))
                    if len(terminated) >= 2:
                        return
                    time.sleep(0.5)
                time.sleep(0.005)

    outcome = runs.run(during=terminate_when_prepared)
    assert terminated and terminated[0] > 0, f"no backend was terminated; {where}"
    assert outcome.returncode == 0, f"run {outcome.index} failed; {where}\n{outcome.stderr[-3000:]}"
    assert "restarting from the latest checkpoint" in outcome.stderr, outcome.stderr[-2000:]
    restarts = outcome.stderr.count("restarting from the latest checkpoint")

    # 3. the end: equal to the reference, nothing prepared, and a rerun changes nothing
    rows = check_prefix("final")
    lost = sum(final[u][0] - rows.get(u, (0, 0))[0] for u in final)
    duplicated = sum(max(0, rows[u][0] - final[u][0]) for u in rows)
    assert rows == final, f"final table differs from the reference: lost={lost} dup={duplicated}; {where}"
    assert pg.prepared("redis_to_postgres", "upsert") == []
    again = runs.run()
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
    assert committed() == final

    runs.summary(
        "redis_to_postgres",
        events=N_EVENTS,
        users=len(final),
        rows=len(rows),
        lost=lost,
        duplicated=duplicated,
        leftover_prepared=len(pg.prepared("redis_to_postgres", "upsert")),
        terminated_backends=terminated,
        restarts_after_terminate=restarts,
    )
