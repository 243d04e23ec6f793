"""FileSink formats and Hive partitions: the two-phase commit holds in every partition folder.

Local files and ``memory://``: a checkpoint's files in several partitions
become visible together on completion, a restore aborts the in-progress and
pending files the crashed attempt left in those folders, a commit is
idempotent per file, and a fresh start refuses (or with ``--fresh`` deletes)
an earlier run's partitioned output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onceflow.operators.base import RestoredState
from onceflow.operators.errors import SinkError, SinkOutputExistsError
from onceflow.operators.files import FileSink


@pytest.fixture(params=["local", "memory"])
def out_dir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("memory_dir")


def tree(directory: str) -> list[str]:
    """Every file below ``directory``, relative, hidden ones too, the marker left out."""
    fs, root = fsspec.core.url_to_fs(directory)
    fs.invalidate_cache(root)
    prefix = root.rstrip("/") + "/"
    return sorted(p[len(prefix) :] for p in fs.find(root) if not p.endswith("_onceflow_sink.json"))


def visible(directory: str) -> list[str]:
    return [p for p in tree(directory) if not any(part.startswith((".", "_")) for part in p.split("/"))]


def rows(directory: str, path: str) -> list[Any]:
    fs, root = fsspec.core.url_to_fs(directory)
    return [json.loads(line) for line in fs.cat_file(f"{root.rstrip('/')}/{path}").decode().splitlines()]


def open_writer(directory: str, ctx: Any, restored: list | None = None, **options: Any):
    writer = FileSink(directory, **options).create_writer(ctx.subtask_index, ctx.parallelism)
    writer.open(ctx)
    if restored is not None:
        writer.restore_state(RestoredState(ctx.restored_checkpoint_id, 1, list(enumerate(restored)), {}))
    return writer


RECORDS = [{"day": "2026-03-0" + str(i % 3 + 1), "n": i} for i in range(9)]


def test_partitions_commit_together_and_a_restore_aborts_what_a_crash_left(out_dir, context_factory) -> None:
    writer = open_writer(out_dir, context_factory(), format="jsonl", partition_by=["day"])
    writer.process_batch(RECORDS)
    state = writer.snapshot_state(1).operator_state
    assert visible(out_dir) == [], "nothing is visible before the checkpoint completes"
    assert len([p for p in tree(out_dir) if p.endswith(".pending")]) == 3
    writer.process_batch([{"day": "2026-03-09", "n": 99}])  # after the barrier: lost in the crash
    writer.close()

    restored = open_writer(
        out_dir,
        context_factory(attempt_id="run-2", restored_checkpoint_id=1),
        [state],
        format="jsonl",
        partition_by=["day"],
    )
    assert visible(out_dir) == [f"day=2026-03-0{d}/part-00000-0000000001.jsonl" for d in (1, 2, 3)]
    assert [p for p in tree(out_dir) if p.split("/")[-1].startswith(".")] == []
    assert rows(out_dir, "day=2026-03-02/part-00000-0000000001.jsonl") == [{"n": 1}, {"n": 4}, {"n": 7}]
    assert restored.commit(state[0][1]) is False, "a second commit of the same files changes nothing"


def test_fresh_start_refuses_then_replaces_partitioned_output(out_dir, context_factory) -> None:
    writer = open_writer(out_dir, context_factory(), format="csv", partition_by=["day"])
    writer.process_batch(RECORDS)
    writer.snapshot_state(1)
    writer.notify_checkpoint_complete(1)
    writer.close()
    with pytest.raises(SinkOutputExistsError, match="3 part-\\* files"):
        open_writer(out_dir, context_factory(attempt_id="run-2"), format="csv", partition_by=["day"])
    fresh = open_writer(
        out_dir,
        context_factory(attempt_id="run-3", overwrite_output=True),
        format="csv",
        partition_by=["day"],
    )
    fresh.close()
    assert visible(out_dir) == []


def test_parquet_files_take_arrow_batches_and_row_groups(tmp_path, context_factory) -> None:
    out = str(tmp_path / "out")
    writer = open_writer(
        out, context_factory(), format="parquet", row_group_size=4, partition_by=lambda r: {"odd": r["n"] % 2}
    )
    writer.process_batch(pa.RecordBatch.from_pylist(RECORDS))
    writer.snapshot_state(1)
    writer.notify_checkpoint_complete(1)
    path = tmp_path / "out" / "odd=1" / "part-00000-0000000001.parquet"
    table = pq.read_table(path)
    assert table.column("n").to_pylist() == [1, 3, 5, 7]
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    writer.process_batch([{"day": "x", "n": 1}])  # a new file, with the schema the first file inferred
    with pytest.raises(SinkError, match="do not convert to the Parquet schema"):
        writer.process_batch([{"day": ["not", "a", "str"], "n": 3}])


def test_parquet_schema_takes_every_field_of_the_first_batch_and_a_missing_one_is_null(
    tmp_path, context_factory
) -> None:
    """pyarrow infers columns from the first record alone; the sink must not drop a later record's field."""
    out = str(tmp_path / "out")
    writer = open_writer(out, context_factory(), format="parquet")
    writer.process_batch([{"n": 1}, {"n": 2, "note": "second"}, {"note": "third"}])
    writer.snapshot_state(1)
    writer.notify_checkpoint_complete(1)
    table = pq.read_table(tmp_path / "out" / "part-00000-0000000001.parquet")
    assert table.to_pylist() == [
        {"n": 1, "note": None},
        {"n": 2, "note": "second"},
        {"n": None, "note": "third"},
    ]


@pytest.mark.parametrize("given", ["inferred", "explicit", "arrow"])
def test_parquet_field_the_schema_lacks_is_an_error_naming_it_not_dropped(
    tmp_path, context_factory, given: str
) -> None:
    schema = pa.schema([("n", pa.int64())]) if given != "inferred" else None
    writer = open_writer(str(tmp_path / "out"), context_factory(), format="parquet", schema=schema)
    writer.process_batch([{"n": 1}])
    later: Any = [{"n": 2, "extra": "x"}]
    if given == "arrow":
        later = pa.RecordBatch.from_pylist(later)
    with pytest.raises(SinkError, match=r"field\(s\) \['extra'\].*lacks.*schema=pyarrow.schema"):
        writer.process_batch(later)


def test_parquet_files_after_the_first_keep_its_inferred_schema(tmp_path, context_factory) -> None:
    """A later file's first batch lacking a field does not make that field an error (or a loss) later."""
    writer = open_writer(str(tmp_path / "out"), context_factory(), format="parquet", partition_by=["day"])
    writer.process_batch([{"day": "a", "n": 1, "note": "x"}])
    writer.process_batch([{"day": "b", "n": 2}])  # a new file whose first batch lacks "note"
    writer.process_batch([{"day": "b", "n": 3, "note": "y"}])
    writer.snapshot_state(1)
    writer.notify_checkpoint_complete(1)
    table = pq.read_table(tmp_path / "out" / "day=b" / "part-00000-0000000001.parquet")
    assert table.to_pylist() == [{"n": 2, "note": None}, {"n": 3, "note": "y"}]
