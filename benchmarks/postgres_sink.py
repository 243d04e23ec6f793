"""Throughput of PostgresSink against plain psycopg, on the same rows, in the same run.

Four measurements, each into a fresh table of the same server:

* ``copy``: plain psycopg ``COPY ... FROM STDIN`` with ``write_row``, one
  transaction, committed at the end (the fastest way psycopg loads rows);
* ``sink insert``: a PostgresSink writer in insert mode, driven as the engine
  drives it: batches of ``--batch`` rows, a checkpoint (marker row, PREPARE
  TRANSACTION, then COMMIT PREPARED) every ``--checkpoint-rows`` rows;
* ``upsert``: plain psycopg ``executemany`` of ``INSERT ... ON CONFLICT DO
  UPDATE``, one transaction;
* ``sink upsert``: a PostgresSink writer in upsert mode, checkpointed likewise.

Run: ``python benchmarks/postgres_sink.py [--rows 200000] [--dsn ...]``. Needs
a server with ``max_prepared_transactions`` > 0 (``.ci/run`` sets it up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from onceflow import PostgresSink
from onceflow.engine.context import SubtaskContext
from onceflow.state_backends.key_groups import KeyGroupRange

COLUMNS = "id bigint PRIMARY KEY, name text, value double precision"


def make_rows(n: int) -> list[tuple[int, str, float]]:
    return [(i, f"name-{i % 997}", i * 0.5) for i in range(n)]


def fresh_table(conn: psycopg.Connection) -> str:
    name = f"of_bench_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {name} ({COLUMNS})")
    return name


def plain_copy(dsn: str, table: str, rows: list) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, name, value) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    return time.perf_counter() - started


def plain_upsert(dsn: str, table: str, rows: list, batch: int) -> float:
    statement = (
        f"INSERT INTO {table} (id, name, value) VALUES (%s, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, value = EXCLUDED.value"
    )
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            for i in range(0, len(rows), batch):
                cur.executemany(statement, rows[i : i + batch])
        conn.commit()
    return time.perf_counter() - started


def through_sink(sink: PostgresSink, rows: list, batch: int, checkpoint_rows: int) -> tuple[float, int]:
    ctx = SubtaskContext(
        job_name=f"bench-{uuid.uuid4().hex[:6]}",
        operator_name="sink",
        uid="sink",
        subtask_index=0,
        parallelism=1,
        max_parallelism=128,
        key_group_range=KeyGroupRange(0, 128),
        attempt_id=uuid.uuid4().hex[:12],
        restored_checkpoint_id=None,
        overwrite_output=False,
    )
    writer = sink.create_writer(0, 1)
    writer.open(ctx)
    checkpoints = 0
    try:
        started = time.perf_counter()
        since = 0
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            writer.process_batch(chunk)
            since += len(chunk)
            if since >= checkpoint_rows or i + batch >= len(rows):
                checkpoints += 1
                writer.snapshot_state(checkpoints)
                writer.notify_checkpoint_complete(checkpoints)
                since = 0
        return time.perf_counter() - started, checkpoints
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1024, help="rows per batch (engine default 1024)")
    parser.add_argument("--checkpoint-rows", type=int, default=50_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    rows = make_rows(args.rows)
    results = []
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        tables = []
        try:

            def measure(name: str, run) -> None:
                table = fresh_table(admin)
                tables.append(table)
                seconds, checkpoints = run(table)
                count = admin.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                assert count == len(rows), f"{name}: {count} rows in the table, expected {len(rows)}"
                results.append(
                    {
                        "case": name,
                        "rows": len(rows),
                        "seconds": round(seconds, 3),
                        "rows_per_s": round(len(rows) / seconds),
                        "checkpoints": checkpoints,
                    }
                )

            measure("copy (plain psycopg)", lambda t: (plain_copy(args.dsn, t, rows), 0))
            measure(
                "PostgresSink insert",
                lambda t: through_sink(PostgresSink(args.dsn, t), rows, args.batch, args.checkpoint_rows),
            )
            measure(
                "upsert (plain psycopg executemany)",
                lambda t: (plain_upsert(args.dsn, t, rows, args.batch), 0),
            )
            measure(
                "PostgresSink upsert",
                lambda t: through_sink(
                    PostgresSink(args.dsn, t, mode="upsert", key_columns=["id"]),
                    rows,
                    args.batch,
                    args.checkpoint_rows,
                ),
            )
        finally:
            for table in tables:
                admin.execute(f"DROP TABLE IF EXISTS {table}")
            if admin.execute("SELECT to_regclass('onceflow_commits')").fetchone()[0]:
                admin.execute(
                    "DELETE FROM onceflow_commits WHERE target = ANY(%s)", ([f"public.{t}" for t in tables],)
                )
    base = {"insert": results[0]["rows_per_s"], "upsert": results[2]["rows_per_s"]}
    print(
        f"PostgresSink throughput, {args.rows:,} rows (id bigint, name text, value double), "
        f"batches of {args.batch}, a checkpoint every {args.checkpoint_rows:,} rows\n"
    )
    print("| case | seconds | rows/s | vs plain | checkpoints |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        ref = base["upsert" if "upsert" in r["case"] else "insert"]
        r["vs_plain"] = round(r["rows_per_s"] / ref, 2)
        print(
            f"| {r['case']} | {r['seconds']:.2f} | {r['rows_per_s']:,} | {r['vs_plain']:.2f} | "
            f"{r['checkpoints']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
