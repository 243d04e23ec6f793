"""FileSourceReader over formats: snapshots at every batch restore to the same records, compressed or not.

A reader snapshots after a random number of batches, a fresh reader restores
from it (at another parallelism, too) and reads on; the union must be the
records of one uninterrupted read, each once. Watch mode: files appearing
between polls are taken once they held still, and the snapshot keeps them.
"""

from __future__ import annotations

import bz2
import gzip
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from onceflow.operators.bad_records import BadInput
from onceflow.operators.base import RestoredState
from onceflow.operators.errors import SourceChangedError
from onceflow.operators.files import FILE_DONE, FileSource

ContextFactory = Callable[..., Any]

COMPRESS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def open_readers(source: FileSource, context_factory: ContextFactory, parallelism: int, states: list | None):
    readers = []
    for i in range(parallelism):
        reader = source.create_reader(i, parallelism)
        reader.open(context_factory(subtask_index=i, parallelism=parallelism))
        if states is not None:
            reader.restore_state(RestoredState(4, len(states), list(enumerate(states)), {}))
        readers.append(reader)
    return readers


def rows_of(batch: Any) -> list:
    return batch if type(batch) is list else batch.to_pylist()


def read_with_restores(source: FileSource, context_factory: ContextFactory, rng: random.Random) -> list:
    """Read everything, restoring from a snapshot 3 times at random points and parallelisms."""
    got: list = []
    states = None
    for round_ in range(4):
        parallelism = rng.choice([1, 2, 3])
        readers = open_readers(source, context_factory, parallelism, states)
        live = list(readers)
        stop_after = rng.randint(1, 6) if round_ < 3 else 10**9
        polls = 0
        while live and polls < stop_after:
            reader = rng.choice(live)
            batch = reader.poll_batch(rng.choice([1, 5, 40]))
            polls += 1
            if batch is None:
                live.remove(reader)
            else:
                got.extend(rows_of(batch))
        states = [r.snapshot_state(4) for r in readers]
        for reader in readers:
            reader.close()
    return got


@pytest.mark.parametrize("suffix", list(COMPRESS))
@pytest.mark.parametrize("fmt", ["text", "csv", "jsonl"])
def test_restores_at_random_batches_read_every_line_once(tmp_path, context_factory, suffix, fmt) -> None:
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    want = []
    for f in range(3):
        rows = [f"{f}-{i}" for i in range(rng.randint(0, 300))]
        if fmt == "csv":
            body = "name\n" + "".join(f"{r}\n" for r in rows)
            want += [{"name": r} for r in rows]
        elif fmt == "jsonl":
            body = "".join(f'"{r}"\n' for r in rows)
            want += rows
        else:
            body = "".join(f"{r}\n" for r in rows)
            want += rows
        (tmp_path / f"in-{f}.{fmt}{suffix}").write_bytes(COMPRESS[suffix](body.encode()))
    source = FileSource(str(tmp_path), format=fmt, read_size=64)
    got = read_with_restores(source, context_factory, rng)
    key = repr
    assert sorted(got, key=key) == sorted(want, key=key), f"seed={seed}"


def test_parquet_restores_by_row_offset(tmp_path, context_factory) -> None:
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    for f in range(3):
        ids = list(range(f * 1000, f * 1000 + rng.randint(1, 1000)))
        pq.write_table(pa.table({"id": ids}), tmp_path / f"p-{f}.parquet", row_group_size=rng.randint(1, 200))
    want = [
        {"id": i}
        for f in range(3)
        for i in pq.read_table(tmp_path / f"p-{f}.parquet").column("id").to_pylist()
    ]
    got = read_with_restores(FileSource(str(tmp_path), format="parquet"), context_factory, rng)
    assert sorted(got, key=lambda r: r["id"]) == want, f"seed={seed}"


def test_bad_rows_leave_the_offsets_past_the_batch(tmp_path, context_factory) -> None:
    (tmp_path / "a.csv").write_text("k,v\n1,2\nx\n3,4\n")
    (reader,) = open_readers(FileSource(str(tmp_path / "a.csv"), format="csv"), context_factory, 1, None)
    with pytest.raises(BadInput) as info:
        reader.poll_batch(100)
    assert info.value.records == [{"k": "1", "v": "2"}, {"k": "3", "v": "4"}]
    assert [(raw, pos["line"]) for raw, _, pos in info.value.bad] == [("x", 3)]
    assert reader.poll_batch(100) is None
    assert reader.snapshot_state(1)[str(tmp_path / "a.csv")]["offset"] == FILE_DONE


def test_watch_takes_files_once_they_held_still_and_the_snapshot_keeps_them(
    tmp_path, context_factory
) -> None:
    (tmp_path / "a.txt").write_text("a1\na2\n")
    source = FileSource(str(tmp_path), watch=True, poll_interval=0.01)
    assert not source.bounded

    def poll_until(reader: Any, n: int) -> list:
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            batch = reader.poll_batch(100)
            assert batch is not None, "a watching reader never ends"
            got += batch
            time.sleep(0.005)
        return got

    (reader,) = open_readers(source, context_factory, 1, None)
    assert poll_until(reader, 2) == ["a1", "a2"]
    (tmp_path / "b.txt").write_text("b1\n")
    (tmp_path / ".c.txt.tmp").write_text("hidden\n")
    assert poll_until(reader, 1) == ["b1"]
    state = reader.snapshot_state(2)
    assert sorted(Path(p).name for p in state) == ["a.txt", "b.txt"]
    os.remove(tmp_path / "a.txt")  # a done file may be cleaned away
    os.rename(tmp_path / ".c.txt.tmp", tmp_path / "c.txt")
    readers = open_readers(source, context_factory, 2, [state])
    got = []
    for r in readers:
        got += poll_until(r, 1) if r._owns(str(tmp_path / "c.txt")) else []
    assert got == ["hidden"]
    assert all(not r.poll_batch(100) for r in readers)


def test_watch_refuses_a_started_file_that_changed(tmp_path, context_factory) -> None:
    path = tmp_path / "a.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    state = {
        str(path): {"offset": 50, "size": path.stat().st_size, "mtime": path.stat().st_mtime, "etag": None}
    }
    path.write_text("rewritten\n")
    with pytest.raises(SourceChangedError, match="changed since checkpoint"):
        open_readers(FileSource(str(tmp_path), watch=True), context_factory, 1, [state])
