"""DeltaSink on a real local Delta table: staged files, one version per checkpoint, idempotent commits."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from onceflow.operators.base import RestoredState
from onceflow.operators.delta import STAGING, DeltaSink, DeltaSinkWriter
from onceflow.operators.errors import SinkAheadOfCheckpointError, SinkError, SinkOutputExistsError

deltalake = pytest.importorskip("deltalake")


def rows(uri: str) -> list[dict[str, Any]]:
    table = deltalake.DeltaTable(uri)
    return sorted(pa.table(table.to_pyarrow_table()).to_pylist(), key=lambda r: r["id"])


def versions(uri: str) -> int:
    return deltalake.DeltaTable(uri).version() + 1


def writers(
    uri: str, factory: Callable[..., Any], n: int = 2, restored: int | None = None, **kw: Any
) -> list[DeltaSinkWriter]:
    out = []
    for i in range(n):
        writer = DeltaSink(uri).create_writer(i, n)
        writer.open(factory(subtask_index=i, parallelism=n, restored_checkpoint_id=restored, **kw))
        out.append(writer)
    return out


def checkpoint(ws: list[DeltaSinkWriter], n: int) -> list[Any]:
    """Snapshot every subtask at barrier ``n``; return the restorable operator states."""
    return [(i, w.snapshot_state(n).operator_state) for i, w in enumerate(ws)]


def test_one_table_version_per_checkpoint_holds_every_subtask_s_rows(
    tmp_path: Path, context_factory: Callable[..., Any]
) -> None:
    uri = str(tmp_path / "t")
    a, b = writers(uri, context_factory)
    a.process_batch([{"id": 1, "v": "x"}, {"id": 2, "v": "y"}])
    b.process_batch(pa.RecordBatch.from_pylist([{"id": 3, "v": "z"}]))
    checkpoint([a, b], 1)
    assert not deltalake.DeltaTable.is_deltatable(uri), "nothing is visible before the checkpoint completes"
    b.notify_checkpoint_complete(1)  # only subtask 0 commits
    assert not deltalake.DeltaTable.is_deltatable(uri)
    a.notify_checkpoint_complete(1)
    assert [r["id"] for r in rows(uri)] == [1, 2, 3]
    assert versions(uri) == 1
    assert deltalake.DeltaTable(uri).transaction_version("onceflow:job:sink-uid") == 1
    b.process_batch([{"id": 4, "v": "w"}])
    checkpoint([a, b], 2)
    checkpoint([a, b], 3)  # nothing new: no file, no manifest
    a.notify_checkpoint_complete(3)
    assert [r["id"] for r in rows(uri)] == [1, 2, 3, 4]
    assert versions(uri) == 2
    assert os.listdir(tmp_path / "t" / STAGING / a._digest) == []


def test_a_commit_retried_after_a_crash_is_not_applied_twice(
    tmp_path: Path, context_factory: Callable[..., Any], simulated_crash: type[Exception]
) -> None:
    uri = str(tmp_path / "t")
    (a,) = writers(uri, context_factory, n=1, crash_at=("after_commit_before_bookkeeping", 1))
    a.process_batch([{"id": 1, "v": "x"}, {"id": 2, "v": "y"}])
    state = checkpoint([a], 1)
    with pytest.raises(simulated_crash):
        a.notify_checkpoint_complete(1)  # the version is in the table, the manifest still staged
    assert versions(uri) == 1
    # The next attempt restores checkpoint 1 and commits what it owes again: a no-op.
    (again,) = writers(uri, context_factory, n=1, restored=1, attempt_id="attempt-2")
    again.restore_state(RestoredState(1, 1, state, {}))
    assert again.recommitted == 0
    # A repeated notification, and the commit called directly, change nothing either.
    again.notify_checkpoint_complete(1)
    assert again.commit({"checkpoint_id": 1}) is False
    assert [r["id"] for r in rows(uri)] == [1, 2]
    assert versions(uri) == 1


def test_a_restore_commits_an_owed_checkpoint_once_and_deletes_a_lost_attempt_s_files(
    tmp_path: Path, context_factory: Callable[..., Any]
) -> None:
    uri = str(tmp_path / "t")
    a, b = writers(uri, context_factory)
    a.process_batch([{"id": 1, "v": "x"}])
    b.process_batch([{"id": 2, "v": "y"}])
    state = checkpoint([a, b], 1)  # completes, but the notification is lost (kill -9)
    a.process_batch([{"id": 3, "v": "z"}])
    b.process_batch([{"id": 4, "v": "w"}])
    checkpoint([a, b], 2)  # never completes
    b.process_batch([{"id": 5, "v": "v"}])  # an in-progress file
    c, d = writers(uri, context_factory, restored=1, attempt_id="attempt-2")
    d.restore_state(RestoredState(1, 2, state, {}))
    c.restore_state(RestoredState(1, 2, state, {}))
    assert c.recommitted == 1
    assert [r["id"] for r in rows(uri)] == [1, 2]
    table_dir = tmp_path / "t"
    parts = sorted(p.name for p in table_dir.iterdir() if p.name.startswith("part-"))
    assert len(parts) == 2 and all("-0000000001-" in p for p in parts), parts
    assert os.listdir(table_dir / STAGING / c._digest) == []


def test_a_restore_behind_the_table_s_transaction_version_is_refused(
    tmp_path: Path, context_factory: Callable[..., Any]
) -> None:
    uri = str(tmp_path / "t")
    (a,) = writers(uri, context_factory, n=1)
    for n in (1, 2, 3):
        a.process_batch([{"id": n, "v": "x"}])
        checkpoint([a], n)
        a.notify_checkpoint_complete(n)
    (again,) = writers(uri, context_factory, n=1, restored=2, attempt_id="attempt-2")
    with pytest.raises(SinkAheadOfCheckpointError, match="committed checkpoint 3"):
        again.restore_state(RestoredState(2, 1, [], {}))


def test_a_fresh_start_is_refused_and_fresh_removes_only_this_sink_s_rows(
    tmp_path: Path, context_factory: Callable[..., Any]
) -> None:
    uri = str(tmp_path / "t")
    (other,) = writers(uri, context_factory, n=1, uid="other")
    other.process_batch([{"id": 100, "v": "o"}])
    checkpoint([other], 1)
    other.notify_checkpoint_complete(1)
    (a,) = writers(uri, context_factory, n=1)
    a.process_batch([{"id": 1, "v": "x"}])
    checkpoint([a], 1)
    a.notify_checkpoint_complete(1)
    with pytest.raises(SinkOutputExistsError, match="--fresh"):
        writers(uri, context_factory, n=1, attempt_id="attempt-2")
    (fresh,) = writers(uri, context_factory, n=1, attempt_id="attempt-3", overwrite_output=True)
    assert [r["id"] for r in rows(uri)] == [100]
    fresh.process_batch([{"id": 7, "v": "n"}])
    checkpoint([fresh], 1)  # ids start again at 1 after --fresh: still committed
    fresh.notify_checkpoint_complete(1)
    assert [r["id"] for r in rows(uri)] == [7, 100]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ([{"id": 1, "v": "x"}, ["not", "a", "dict"]], r"\['not', 'a', 'dict'\] is a list"),
        ([{"id": 1, "v": "x"}, {"id": 2, "w": "y"}], r"missing \['v'\], unknown \['w'\]"),
        ([{"id": 1, "v": "x"}, {"id": "two", "v": "y"}], r"'id' = 'two'.*column type int64"),
    ],
)
def test_a_record_that_does_not_fit_names_the_sink_and_the_value(
    tmp_path: Path, context_factory: Callable[..., Any], batch: list, expected: str
) -> None:
    (a,) = writers(str(tmp_path / "t"), context_factory, n=1)
    a.process_batch([{"id": 0, "v": "first"}])
    with pytest.raises(SinkError, match=expected) as info:
        a.process_batch(batch)
    assert "DeltaSink(" in str(info.value) and "uid 'sink-uid'" in str(info.value)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ([{"id": 1}, {"id": 2, "v": "dropped before"}], r"missing \[\], unknown \['v'\]"),
        ([{"id": 1, "v": "x"}, {"id": 2}], r"missing \['v'\], unknown \[\]"),
    ],
)
def test_the_first_batch_s_records_must_all_have_the_first_record_s_columns(
    tmp_path: Path, context_factory: Callable[..., Any], batch: list, expected: str
) -> None:
    """pyarrow takes the columns from the first record alone: a later field must not vanish silently."""
    (a,) = writers(str(tmp_path / "t"), context_factory, n=1)
    with pytest.raises(SinkError, match=expected):
        a.process_batch(batch)


def test_a_manifest_lists_the_staged_file_and_its_rows(
    tmp_path: Path, context_factory: Callable[..., Any]
) -> None:
    (a,) = writers(str(tmp_path / "t"), context_factory, n=1)
    a.process_batch([{"id": 1, "v": "x"}, {"id": 2, "v": "y"}])
    committable = a.pre_commit(5)
    assert committable is not None and committable["rows"] == 2
    manifest = json.loads((tmp_path / "t" / STAGING / a._digest / committable["manifest"]).read_text())
    (entry,) = manifest["files"]
    assert entry["rows"] == 2 and (tmp_path / "t" / entry["path"]).stat().st_size == entry["size"]


def test_a_job_writes_arrow_batches_once_across_a_crash_and_restart(tmp_path: Path) -> None:
    from onceflow import Job
    from onceflow.engine.testing import run_job_for_test
    from onceflow.operators.testing import Crash, TestingSource

    items: list[Any] = [{"id": i, "v": f"r{i}"} for i in range(3_000)]
    items.insert(1_700, Crash())  # raises once mid-run; the restarted attempt restores and goes on
    uri = str(tmp_path / "t")
    job = Job("delta-arrow")
    (
        job.source(TestingSource(items, batch_size=100), name="rows", uid="rows")
        .map_batches(lambda batch: batch, arrow=True, name="as-arrow")  # Arrow batches to the sink
        .sink(DeltaSink(uri), name="delta", uid="delta", parallelism=2)
    )
    result = run_job_for_test(job, checkpoint_dir=str(tmp_path / "chk"), checkpoint_interval=0.02)
    assert result.restarts == 1
    assert [r["id"] for r in rows(uri)] == list(range(3_000))
    assert 1 <= versions(uri) <= result.checkpoints_completed
