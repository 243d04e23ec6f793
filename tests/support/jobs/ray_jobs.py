"""Jobs the Ray executor tests run from their file (the actors rebuild them from it).

``kind="union"``: two file sources (``input/a`` and ``input/b``, lines
``id,key,value``) in a union, a running count per key, lines ``key,count``.
``kind="postgres"``: every line of ``input`` as a row ``(id, key)`` into the
PostgreSQL table ``table`` through the transactional ``PostgresSink``.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job, PostgresSink


def _key_one(line: str) -> tuple[str, int]:
    return (line.split(",")[1], 1)


def _row(line: str) -> tuple[int, str]:
    rid, key, _ = line.split(",")
    return (int(rid), key)


def build(
    kind: str = "union", input: str = "", output: str = "", dsn: str = "", table: str = "", name: str = ""
) -> Job:
    job = Job(name or f"ray-{kind}")
    if kind == "union":
        a = job.source(FileSource(f"{input}/a"), name="read-a", uid="read-a")
        b = job.source(FileSource(f"{input}/b"), name="read-b", uid="read-b")
        (
            a.union(b)
            .map(_key_one, name="parse")
            .key_by(lambda kv: kv[0])
            .reduce(lambda x, y: (x[0], x[1] + y[1]), name="count", uid="count")
            .map(lambda kv: f"{kv[0]},{kv[1]}", name="format")
            .sink(FileSink(output), name="write", uid="write")
        )
    elif kind == "postgres":
        (
            job.source(FileSource(input), name="read", uid="read")
            .map(_row, name="parse")
            .rebalance()
            .sink(PostgresSink(dsn, table, columns=("id", "name")), name="pg", uid="pg")
        )
    else:
        msg = f"kind must be 'union' or 'postgres', got {kind!r}"
        raise ValueError(msg)
    return job
