"""Per-user totals of a Redis stream of events, upserted into PostgreSQL exactly once.

Each stream entry has the fields ``user`` and ``amount`` (an integer). The job
keeps a running ``(events, amount)`` per user and upserts it into
``user_totals``; rows become visible only when their checkpoint completes, so
the table always holds the totals of a prefix of every stream, never a
double-counted one, whatever kills the run. Run it (README, "Connectors")::

    psql -h 127.0.0.1 -U postgres -d test -c \
      "CREATE TABLE IF NOT EXISTS user_totals (user_id text PRIMARY KEY, events bigint, amount bigint)"
    onceflow run jobs/redis_to_postgres.py --parallelism 2

Parameters (``-p NAME=VALUE``): ``redis`` (URL), ``streams`` (comma-separated),
``dsn``, ``table``, ``bounded`` (``true``: stop at the streams' last entries
as of the first start; ``false``: follow new entries) and ``delay_us`` (a busy
pause per event, only for demos and chaos tests).
"""

from __future__ import annotations

import time

from onceflow import Job, PostgresSink, RedisStreamSource


def build(
    redis: str = "redis://127.0.0.1:6379/0",
    streams: str = "events",
    dsn: str = "postgresql://postgres@127.0.0.1:5432/test",
    table: str = "user_totals",
    bounded: str = "true",
    delay_us: str = "0",
) -> Job:
    delay = int(delay_us) / 1e6

    def parse(entry: tuple[str, str, dict[str, str]]) -> tuple[str, int, int]:
        fields = entry[2]
        if delay:
            end = time.perf_counter() + delay
            while time.perf_counter() < end:
                pass
        return (fields["user"], 1, int(fields["amount"]))

    job = Job("redis_to_postgres")
    (
        job.source(
            RedisStreamSource(redis, streams.split(","), bounded=bounded.lower() in ("1", "true", "yes")),
            name="read",
            uid="read",
        )
        .map(parse, name="parse")
        .key_by(lambda event: event[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1], a[2] + b[2]), name="totals", uid="totals")
        .map(lambda t: {"user_id": t[0], "events": t[1], "amount": t[2]}, name="row")
        .sink(
            PostgresSink(dsn, table, mode="upsert", key_columns=["user_id"]),
            name="upsert",
            uid="upsert",
        )
    )
    return job
