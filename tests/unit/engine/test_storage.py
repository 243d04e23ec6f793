"""Checkpoint storage: paths, metadata round trips, deletion plans carried out, and the run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from onceflow.engine.checkpoint.metadata import CheckpointMetadata, StateHandle, Timings
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.retention import plan_deletions
from onceflow.engine.checkpoint.store import CheckpointStore, list_jobs
from onceflow.engine.errors import CheckpointStorageError, ConcurrentRunError, IncompatibleCheckpointError

JOB = "wordcount"


def meta(checkpoint_id: int, *files: str) -> CheckpointMetadata:
    """Metadata whose handles reference ``files`` (paths relative to the job directory)."""
    handles = [
        StateHandle(uid=f.rsplit("/", 1)[-1].split("-")[0], subtask=0, path=f, rows=1, bytes=10, sha256="0")
        for f in files
    ]
    return CheckpointMetadata(
        job=JOB,
        fingerprint="f",
        max_parallelism=128,
        operators={},
        params={},
        checkpoint_id=checkpoint_id,
        final=False,
        handles=tuple(handles),
        size_bytes=10 * len(handles),
        timings=Timings(triggered_at="2024-01-01T00:00:00+00:00", duration_s=0.5),
    )


def own(checkpoint_id: int) -> CheckpointMetadata:
    """Metadata of a checkpoint referencing only its own state file."""
    return meta(checkpoint_id, f"chk-{checkpoint_id}/count-0.arrow")


def put(store: CheckpointStore, path: str, data: bytes) -> None:
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    store.fs.pipe_file(path, data)


def write_checkpoint(store: CheckpointStore, m: CheckpointMetadata) -> None:
    """Put a checkpoint's state files, then its metadata, like the engine does."""
    for h in m.handles:
        path = store.paths.resolve(h.path)
        if not store.fs.exists(path):
            put(store, path, b"state of " + h.path.encode())
    store.write_metadata(m)


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path, memory_dir: str) -> CheckpointStore:
    """A store on a local directory or on memory://."""
    url = str(tmp_path / "chk") if request.param == "file" else memory_dir
    return CheckpointStore(url, JOB)


# --------------------------------------------------------------------------- paths


def test_paths_format_every_checkpoint_file() -> None:
    paths = CheckpointPaths("s3://bucket/prefix/", "wc")

    assert paths.job_dir == "s3://bucket/prefix/wc"
    assert paths.checkpoint_dir(7) == "s3://bucket/prefix/wc/chk-7"
    assert paths.metadata(7) == "s3://bucket/prefix/wc/chk-7/_metadata"
    assert CheckpointPaths.state_file_name("count", 3) == "count-3.arrow"
    assert paths.state_file(7, "count", 3) == "s3://bucket/prefix/wc/chk-7/count-3.arrow"
    assert CheckpointPaths.relative_state_file(7, "count", 3) == "chk-7/count-3.arrow"
    assert paths.resolve("chk-7/count-3.arrow") == paths.state_file(7, "count", 3)
    assert paths.lock == "s3://bucket/prefix/wc/_lock"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chk-1", 1),
        ("chk-42/", 42),
        ("/data/chk/wc/chk-0010", 10),
        ("memory://x/wc/chk-3", 3),
        ("chk-", None),
        ("chk-1a", None),
        ("_lock", None),
        ("chk-1.tmp", None),
        ("xchk-1", None),
    ],
)
def test_parse_checkpoint_id_accepts_only_chk_directories(name: str, expected: int | None) -> None:
    assert CheckpointPaths.parse_checkpoint_id(name) == expected


def test_parse_inverts_checkpoint_dir() -> None:
    paths = CheckpointPaths("/tmp/c", "j")

    assert [CheckpointPaths.parse_checkpoint_id(paths.checkpoint_dir(n)) for n in (1, 9, 123)] == [
        1,
        9,
        123,
    ]


def test_local_store_resolves_a_relative_directory_to_an_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = CheckpointStore("rel/chk", JOB)

    assert store.is_local
    assert store.paths.job_dir == f"{tmp_path}/rel/chk/{JOB}"


# --------------------------------------------------------------------------- metadata


def test_names_in_checkpoint_dir_keeps_only_that_directory() -> None:
    paths = {"chk-1/a-0.arrow", "chk-12/b-0.arrow", "chk-1x/c-0.arrow", "shared/d.arrow"}

    assert CheckpointPaths.names_in_checkpoint_dir(1, paths) == {"a-0.arrow"}


def test_write_then_read_metadata_round_trips(store: CheckpointStore) -> None:
    m = replace(own(3), final=True)

    write_checkpoint(store, m)

    assert store.read_metadata(3) == m
    assert store.checkpoint_ids() == [3]


def test_metadata_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "chk"), JOB)

    store.write_metadata(own(1))
    store.write_metadata(replace(own(1), final=True))

    assert sorted(p.name for p in (tmp_path / "chk" / JOB / "chk-1").iterdir()) == ["_metadata"]
    read = store.read_metadata(1)
    assert read is not None
    assert read.final is True


def test_missing_metadata_means_the_checkpoint_does_not_exist(store: CheckpointStore) -> None:
    put(store, store.paths.state_file(4, "count", 0), b"state")

    assert store.read_metadata(4) is None
    assert store.read_metadata(99) is None
    assert store.checkpoint_ids() == [4]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"checkpoint_id": 8}',
        b'{"job": "wordcount"}',
        b'{"checkpoint_id": 5}',
        b'{"checkpoint_id": true}',
    ],
)
def test_corrupt_metadata_raises_checkpoint_storage_error(store: CheckpointStore, content: bytes) -> None:
    put(store, store.paths.metadata(5), content)

    with pytest.raises(CheckpointStorageError, match="is corrupt") as info:
        store.read_metadata(5)
    assert "chk-5/_metadata" in str(info.value)


def test_metadata_with_a_mistyped_field_is_corrupt(store: CheckpointStore) -> None:
    good = own(5).to_json()
    good["handles"][0]["bytes"] = "ten"
    put(store, store.paths.metadata(5), json.dumps(good).encode())

    with pytest.raises(CheckpointStorageError, match="is corrupt: expected an integer"):
        store.read_metadata(5)


def test_metadata_of_a_newer_format_is_refused_not_treated_as_corrupt(store: CheckpointStore) -> None:
    newer = {**own(5).to_json(), "format": 99}
    put(store, store.paths.metadata(5), json.dumps(newer).encode())

    with pytest.raises(IncompatibleCheckpointError, match="format 99"):
        store.read_metadata(5)


def test_list_jobs_names_the_job_directories(store: CheckpointStore) -> None:
    write_checkpoint(store, own(1))
    write_checkpoint(CheckpointStore(store.url, "another"), own(1))

    assert list_jobs(store.url) == ["another", JOB]


def test_checkpoint_ids_are_numeric_ascending_and_skip_other_names(store: CheckpointStore) -> None:
    for n in (10, 2, 1):
        write_checkpoint(store, own(n))
    put(store, f"{store.paths.job_dir}/notes.txt", b"x")
    store.fs.makedirs(f"{store.paths.job_dir}/chk-x", exist_ok=True)

    assert store.checkpoint_ids() == [1, 2, 10]


def test_checkpoint_ids_of_a_job_without_directory_is_empty(store: CheckpointStore) -> None:
    assert store.checkpoint_ids() == []


def test_delete_checkpoint_removes_metadata_and_files(store: CheckpointStore) -> None:
    write_checkpoint(store, own(1))
    write_checkpoint(store, own(2))

    store.delete_checkpoint(1)

    assert store.checkpoint_ids() == [2]
    assert store.read_metadata(1) is None
    assert store.read_metadata(2) == own(2)
    store.delete_checkpoint(1)  # deleting again is harmless


# --------------------------------------------------------------------------- deletion plans carried out


def test_retention_keeps_the_newest_n(store: CheckpointStore) -> None:
    completed = {n: own(n) for n in range(1, 6)}
    for m in completed.values():
        write_checkpoint(store, m)

    deletions = plan_deletions(completed, retain=2)
    store.delete_checkpoints(deletions)

    assert [d.checkpoint_id for d in deletions] == [1, 2, 3]
    assert store.checkpoint_ids() == [4, 5]
    assert [store.read_metadata(n) for n in (4, 5)] == [own(4), own(5)]


def test_retention_never_deletes_a_file_a_retained_checkpoint_references(
    store: CheckpointStore,
) -> None:
    shared = "chk-1/count-0.arrow"
    completed = {
        1: meta(1, shared, "chk-1/read-0.arrow"),
        2: meta(2, shared, "chk-2/read-0.arrow"),
    }
    for m in completed.values():
        write_checkpoint(store, m)

    deletions = plan_deletions(completed, retain=1)
    store.delete_checkpoints(deletions)

    assert [d.checkpoint_id for d in deletions] == [1]

    job_dir = store.paths.job_dir
    assert store.read_metadata(1) is None
    assert store.fs.cat_file(f"{job_dir}/{shared}") == b"state of " + shared.encode()
    assert not store.fs.exists(f"{job_dir}/chk-1/read-0.arrow")
    assert store.read_metadata(2) == completed[2]


# --------------------------------------------------------------------------- setup errors


def test_ensure_writable_creates_the_job_directory(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "a" / "b"), JOB)

    store.ensure_writable()

    job_dir = tmp_path / "a" / "b" / JOB
    assert job_dir.is_dir()
    assert list(job_dir.iterdir()) == []


def test_checkpoint_dir_below_a_regular_file_is_a_storage_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    store = CheckpointStore(str(afile / "chk"), JOB)

    with pytest.raises(CheckpointStorageError, match="is not writable") as info:
        store.ensure_writable()

    assert "--checkpoint-dir" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert afile.read_text() == "keep me"


def test_unknown_filesystem_protocol_is_a_storage_error() -> None:
    with pytest.raises(CheckpointStorageError, match="cannot be used"):
        CheckpointStore("nosuchprotocol-xyz://bucket/chk", JOB)


# --------------------------------------------------------------------------- run lock


def test_second_lock_on_the_same_directory_is_refused_until_release(store: CheckpointStore) -> None:
    other = CheckpointStore(store.url, JOB)
    store.acquire_lock()
    try:
        with pytest.raises(ConcurrentRunError, match="checkpoint directory"):
            other.acquire_lock()
    finally:
        store.release_lock()

    other.acquire_lock()
    other.release_lock()
    other.release_lock()  # idempotent


def test_local_lock_names_the_holder_pid(tmp_path: Path) -> None:
    first = CheckpointStore(str(tmp_path / "chk"), JOB)
    second = CheckpointStore(str(tmp_path / "chk"), JOB)
    first.acquire_lock()
    try:
        with pytest.raises(ConcurrentRunError, match=f"pid {os.getpid()}"):
            second.acquire_lock()
    finally:
        first.release_lock()


def test_locks_of_different_jobs_do_not_conflict(store: CheckpointStore) -> None:
    other_job = CheckpointStore(store.url, "another-job")
    store.acquire_lock()
    try:
        other_job.acquire_lock()
        other_job.release_lock()
    finally:
        store.release_lock()


_HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "chk"), JOB)
    os.makedirs(store.paths.job_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, store.paths.lock],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"

        with pytest.raises(ConcurrentRunError, match=f"pid {holder.pid}"):
            store.acquire_lock()

        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        store.acquire_lock()
        assert Path(store.paths.lock).read_text() == str(os.getpid())
    finally:
        store.release_lock()
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_local_checkpoint_s_state_files_reach_the_disk_before_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 cannot show it: after a power loss `_metadata` must not name a state file never on disk.

    The state files are written by every worker without an fsync each; the filesystem is synced
    (one syncfs) before `_metadata` is written.
    """
    import onceflow.state_backends._durable as durable

    events: list[str] = []
    real_sync, real_fsync = durable.sync_filesystem, durable.os.fsync

    def recording_sync(directory: str) -> None:
        events.append(f"sync {directory}")
        real_sync(directory)

    def recording_fsync(fd: int) -> None:
        events.append(f"fsync {os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))}")
        real_fsync(fd)

    store = CheckpointStore(str(tmp_path / "chk"), JOB)
    monkeypatch.setattr("onceflow.engine.checkpoint.store.sync_filesystem", recording_sync)
    monkeypatch.setattr(durable.os, "fsync", recording_fsync)

    write_checkpoint(store, own(1))

    assert events == [f"sync {store.paths.job_dir}", "fsync ._metadata.tmp", "fsync chk-1"], events
