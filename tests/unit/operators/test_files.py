"""FileSource and FileSink driven by hand through their life cycle, on local files and memory://."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from onceflow.operators.base import RestoredState
from onceflow.operators.errors import (
    SinkCommitError,
    SinkError,
    SinkOutputExistsError,
    SinkOwnershipError,
    SourceDecodeError,
    SourceError,
    SourceNotFoundError,
)
from onceflow.operators.files import (
    FILE_DONE,
    MARKER_NAME,
    FileSink,
    FileSinkWriter,
    FileSource,
    FileSourceReader,
    read_committed_lines,
)
from onceflow.state_backends.errors import ErrorDomain, OnceflowError

ContextFactory = Callable[..., Any]
FakeContext = Any  # tests/unit/operators/conftest.py; not importable by name


# --------------------------------------------------------------------------- helpers


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def open_reader(
    source: FileSource,
    context_factory: ContextFactory,
    subtask_index: int = 0,
    parallelism: int = 1,
    restored: RestoredState | None = None,
) -> FileSourceReader:
    reader = source.create_reader(subtask_index, parallelism)
    reader.open(context_factory(subtask_index=subtask_index, parallelism=parallelism))
    if restored is not None:
        reader.restore_state(restored)
    return reader


def drain(reader: FileSourceReader, max_records: int = 1000) -> list[str]:
    out: list[str] = []
    while (batch := reader.poll_batch(max_records)) is not None:
        out.extend(batch)
    return out


def restored_from(states: list[Any], checkpoint_id: int = 1) -> RestoredState:
    return RestoredState(
        checkpoint_id=checkpoint_id,
        old_parallelism=len(states),
        operator_states=list(enumerate(states)),
        keyed_state={},
    )


def numbered_files(root: Path, files: int, lines: int) -> list[str]:
    """Write files of unique lines; return every line in the order a single reader emits."""
    expected = []
    for f in range(files):
        content = [f"file{f}-line{i}-{'x' * (i % 7)}" for i in range(lines)]
        put(root / f"f{f:02d}.txt", ("\n".join(content) + "\n").encode())
        expected.extend(content)
    return expected


# --------------------------------------------------------------------------- FileSource


def test_lines_lose_only_their_line_endings(tmp_path: Path, context_factory: ContextFactory):
    data = "a\r\nb\n\ncé中\rd\nvt\x0bsep\u2028x\r\r\nlast".encode()
    put(tmp_path / "in.txt", data)

    lines = drain(open_reader(FileSource(str(tmp_path / "in.txt")), context_factory))

    assert lines == ["a", "b", "", "cé中\rd", "vt\x0bsep\u2028x\r", "last"]


def test_empty_file_yields_nothing_and_reader_ends(tmp_path: Path, context_factory):
    put(tmp_path / "a.txt", b"")
    put(tmp_path / "b.txt", b"only\n")
    reader = open_reader(FileSource(str(tmp_path)), context_factory)

    assert drain(reader) == ["only"]
    assert reader.poll_batch(10) is None


def test_only_empty_file_is_fine(tmp_path: Path, context_factory):
    put(tmp_path / "empty.txt", b"")
    assert drain(open_reader(FileSource(str(tmp_path / "empty.txt")), context_factory)) == []


def test_directory_is_read_recursively_in_sorted_order_skipping_hidden(tmp_path: Path, context_factory):
    put(tmp_path / "b.txt", b"b\n")
    put(tmp_path / "a" / "z.txt", b"az\n")
    put(tmp_path / "c" / "d" / "e.txt", b"cde\n")
    put(tmp_path / ".hidden.txt", b"no\n")
    put(tmp_path / "_SUCCESS", b"no\n")
    put(tmp_path / ".git" / "x.txt", b"no\n")
    put(tmp_path / "_tmp" / "x.txt", b"no\n")
    put(tmp_path / "c" / ".x.inprogress", b"no\n")

    source = FileSource(str(tmp_path))

    assert [Path(p).relative_to(tmp_path).as_posix() for p in source.list_files()] == [
        "a/z.txt",
        "b.txt",
        "c/d/e.txt",
    ]
    assert drain(open_reader(source, context_factory)) == ["az", "b", "cde"]


def test_glob_matches_files_and_skips_hidden_names(tmp_path: Path, context_factory):
    put(tmp_path / "2.txt", b"two\n")
    put(tmp_path / "1.txt", b"one\n")
    put(tmp_path / "1.csv", b"no\n")
    put(tmp_path / ".3.txt", b"no\n")

    assert drain(open_reader(FileSource(str(tmp_path / "*.txt")), context_factory)) == [
        "one",
        "two",
    ]


def test_memory_url_is_read(memory_dir: str, context_factory):
    fs, root = fsspec.core.url_to_fs(memory_dir)
    fs.pipe_file(f"{root}/in/b.txt", b"b1\r\nb2")
    fs.pipe_file(f"{root}/in/a.txt", b"a1\n")
    fs.pipe_file(f"{root}/in/_skip", b"no\n")

    assert drain(open_reader(FileSource(f"{memory_dir}/in"), context_factory)) == [
        "a1",
        "b1",
        "b2",
    ]


@pytest.mark.parametrize("pattern", ["missing.txt", "missing_dir/", "*.nothing"])
def test_missing_input_is_a_user_error_naming_the_path(tmp_path: Path, context_factory, pattern: str):
    put(tmp_path / "present.txt", b"x\n")
    path = str(tmp_path / pattern)
    reader = FileSource(path).create_reader(0, 1)

    with pytest.raises(SourceNotFoundError) as info:
        reader.open(context_factory())

    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, OnceflowError)
    assert info.value.domain is ErrorDomain.USER
    assert repr(path) in str(info.value)


def test_directory_with_only_hidden_files_is_an_error(tmp_path: Path, context_factory):
    put(tmp_path / "d" / "_SUCCESS", b"")
    with pytest.raises(SourceNotFoundError, match="matches no readable file"):
        FileSource(str(tmp_path / "d")).create_reader(0, 1).open(context_factory())


def test_undecodable_bytes_name_file_and_offset(tmp_path: Path, context_factory):
    path = put(tmp_path / "bad.txt", b"ok\nfine\n\xff\xfe\n")
    reader = open_reader(FileSource(str(path)), context_factory)

    with pytest.raises(SourceDecodeError) as info:
        drain(reader)

    assert str(path) in str(info.value)
    assert "byte offset 8" in str(info.value)
    assert info.value.domain is ErrorDomain.USER


def test_encoding_that_cannot_split_on_newline_bytes_is_refused():
    with pytest.raises(SourceError, match="utf-16"):
        FileSource("x", encoding="utf-16")
    with pytest.raises(SourceError, match="unknown encoding"):
        FileSource("x", encoding="no-such-codec")


def test_latin1_encoding(tmp_path: Path, context_factory):
    path = put(tmp_path / "l.txt", "café\n".encode("latin-1"))
    assert drain(open_reader(FileSource(str(path), encoding="latin-1"), context_factory)) == ["café"]


def test_batches_respect_max_records_and_read_size(tmp_path: Path, context_factory):
    expected = numbered_files(tmp_path, files=1, lines=100)
    reader = open_reader(FileSource(str(tmp_path), read_size=64), context_factory)

    batches = []
    while (batch := reader.poll_batch(3)) is not None:
        batches.append(batch)

    assert [line for batch in batches for line in batch] == expected
    assert all(1 <= len(batch) <= 3 for batch in batches)


def test_files_are_dealt_round_robin_to_subtasks(tmp_path: Path, context_factory):
    numbered_files(tmp_path, files=5, lines=3)
    source = FileSource(str(tmp_path))
    r0 = open_reader(source, context_factory, 0, 2)
    r1 = open_reader(source, context_factory, 1, 2)

    assert [Path(p).name for p in r0.files] == ["f00.txt", "f02.txt", "f04.txt"]
    assert [Path(p).name for p in r1.files] == ["f01.txt", "f03.txt"]
    out0, out1 = drain(r0), drain(r1)
    assert {line.split("-")[0] for line in out0} == {"file0", "file2", "file4"}
    assert {line.split("-")[0] for line in out1} == {"file1", "file3"}
    assert len(out0) + len(out1) == 15


def test_more_subtasks_than_files_leaves_some_idle(tmp_path: Path, context_factory):
    numbered_files(tmp_path, files=1, lines=2)
    assert open_reader(FileSource(str(tmp_path)), context_factory, 1, 2).poll_batch(10) is None


@pytest.mark.parametrize("batches_before_snapshot", [0, 1, 2, 5, 9, 17, 40])
def test_restore_resumes_exactly_where_the_snapshot_was(
    tmp_path: Path, context_factory, batches_before_snapshot: int
):
    expected = numbered_files(tmp_path, files=3, lines=20)
    source = FileSource(str(tmp_path), read_size=50)
    first = open_reader(source, context_factory)
    before: list[str] = []
    for _ in range(batches_before_snapshot):
        batch = first.poll_batch(4)
        if batch is None:
            break
        before.extend(batch)
    state = first.snapshot_state(1)
    first.poll_batch(4)  # read past the snapshot; these records must come again
    first.close()

    second = open_reader(source, context_factory, restored=restored_from([state]))

    assert before + drain(second, max_records=4) == expected


def test_snapshot_lists_every_owned_file_and_marks_finished_ones(tmp_path: Path, context_factory):
    numbered_files(tmp_path, files=3, lines=2)
    reader = open_reader(FileSource(str(tmp_path)), context_factory)
    reader.poll_batch(100)  # all of f00
    reader.poll_batch(100)  # finds f00 done, reads all of f01

    state = reader.snapshot_state(1)

    names = {Path(p).name: entry["offset"] for p, entry in state.items()}
    assert names["f00.txt"] == FILE_DONE
    assert names["f01.txt"] == (tmp_path / "f01.txt").stat().st_size
    assert names["f02.txt"] == 0
    json.dumps(state)  # plain data


def _read_some(readers: list[FileSourceReader], rng: random.Random) -> list[str]:
    out = []
    for reader in readers:
        for _ in range(rng.randrange(0, 12)):
            batch = reader.poll_batch(rng.randrange(1, 6))
            if batch is None:
                break
            out.extend(batch)
    return out


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 3), (3, 2), (2, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restore_at_another_parallelism_loses_and_repeats_nothing(
    tmp_path: Path, context_factory, old: int, new: int, seed: int
):
    expected = numbered_files(tmp_path, files=5, lines=15)
    source = FileSource(str(tmp_path), read_size=40)
    rng = random.Random(seed)
    readers = [open_reader(source, context_factory, i, old) for i in range(old)]
    before = _read_some(readers, rng)
    states = [r.snapshot_state(1) for r in readers]

    restored = restored_from(states)
    after = []
    for i in range(new):
        after.extend(drain(open_reader(source, context_factory, i, new, restored), 3))

    emitted = before + after
    assert sorted(emitted) == sorted(expected), f"seed={seed}"
    assert len(set(emitted)) == len(emitted)


def test_new_file_after_checkpoint_is_read_from_start(tmp_path: Path, context_factory):
    put(tmp_path / "a.txt", b"a1\na2\n")
    source = FileSource(str(tmp_path))
    first = open_reader(source, context_factory)
    assert first.poll_batch(1) == ["a1"]
    state = first.snapshot_state(1)
    put(tmp_path / "b.txt", b"b1\n")

    assert drain(open_reader(source, context_factory, restored=restored_from([state]))) == [
        "a2",
        "b1",
    ]


def test_close_releases_the_open_file(tmp_path: Path, context_factory):
    numbered_files(tmp_path, files=1, lines=50)
    reader = open_reader(FileSource(str(tmp_path), read_size=10), context_factory)
    reader.poll_batch(1)
    handle = reader._handle
    assert handle is not None

    reader.close()

    assert handle.closed
    reader.close()  # twice is fine


# --------------------------------------------------------------------------- FileSink


@pytest.fixture(params=["local", "memory"])
def out_dir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("memory_dir")


def names(directory: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(directory)
    fs.invalidate_cache(root)
    return sorted(os.path.basename(p) for p in fs.ls(root, detail=False))


def visible(directory: str) -> list[str]:
    return [n for n in names(directory) if not n.startswith((".", "_"))]


def hidden_leftovers(directory: str) -> list[str]:
    return [n for n in names(directory) if n.startswith(".")]


def open_writer(
    directory: str,
    ctx: FakeContext,
    restored_states: list[Any] | None = None,
    **sink_options: Any,
) -> FileSinkWriter:
    writer = FileSink(directory, **sink_options).create_writer(ctx.subtask_index, ctx.parallelism)
    writer.open(ctx)
    if restored_states is not None:
        assert ctx.restored_checkpoint_id is not None
        writer.restore_state(restored_from(restored_states, ctx.restored_checkpoint_id))
    return writer


def test_output_is_invisible_until_its_checkpoint_completes(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    writer.process_batch(["a", "b"])
    writer.process_batch(["c"])

    assert visible(out_dir) == []
    snapshot = writer.snapshot_state(1)
    assert visible(out_dir) == []
    assert read_committed_lines(out_dir) == []
    assert [n for n in names(out_dir) if n.endswith(".pending")] == [
        ".part-00000-0000000001.attempt-1.pending"
    ]
    [(checkpoint_id, committable)] = snapshot.operator_state
    assert checkpoint_id == 1
    json.dumps(committable)

    writer.notify_checkpoint_complete(1)

    assert visible(out_dir) == ["part-00000-0000000001"]
    assert read_committed_lines(out_dir) == ["a", "b", "c"]
    assert hidden_leftovers(out_dir) == []


def test_crash_points_are_passed_in_pre_commit_and_commit(out_dir: str, context_factory):
    ctx = context_factory()
    writer = open_writer(out_dir, ctx)
    writer.process_batch(["a"])
    writer.snapshot_state(1)
    assert ctx.crash_points == ["after_pending_rename_before_commit_rename"]

    writer.notify_checkpoint_complete(1)

    assert ctx.crash_points[-1] == "mid_commit"


def test_commit_twice_is_a_no_op(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    writer.process_batch(["a"])
    [(_, committable)] = writer.snapshot_state(1).operator_state

    writer.commit(committable)
    writer.commit(committable)

    assert read_committed_lines(out_dir) == ["a"]


def test_later_notification_commits_earlier_checkpoints_in_order(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    writer.process_batch(["one"])
    writer.snapshot_state(1)
    writer.process_batch(["two"])
    snapshot = writer.snapshot_state(2)
    assert [n for n, _ in snapshot.operator_state] == [1, 2]

    writer.notify_checkpoint_complete(2)  # the notification for 1 was lost

    assert visible(out_dir) == ["part-00000-0000000001", "part-00000-0000000002"]
    assert read_committed_lines(out_dir) == ["one", "two"]

    writer.notify_checkpoint_complete(1)  # late: a no-op, not an error

    assert read_committed_lines(out_dir) == ["one", "two"]


def test_checkpoint_without_records_creates_no_file(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    assert writer.snapshot_state(1).operator_state == []
    writer.notify_checkpoint_complete(1)
    writer.process_batch([])
    writer.process_batch(["x"])
    writer.snapshot_state(2)
    writer.notify_checkpoint_complete(2)
    assert writer.snapshot_state(3).operator_state == []
    writer.notify_checkpoint_complete(3)

    assert visible(out_dir) == ["part-00000-0000000002"]


def test_encoder_and_suffix(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory(), encoder=lambda kv: f"{kv[0]},{kv[1]}", suffix=".csv")
    writer.process_batch([("a", 1), ("b", 2)])
    writer.snapshot_state(7)
    writer.notify_checkpoint_complete(7)

    assert visible(out_dir) == ["part-00000-0000000007.csv"]
    assert read_committed_lines(out_dir) == ["a,1", "b,2"]


def test_encoder_returning_non_str_is_a_clear_type_error(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory(), encoder=lambda r: r)
    with pytest.raises(TypeError, match="encoder"):
        writer.process_batch([1])


def test_restore_commits_pending_output_of_the_restored_checkpoint(out_dir: str, context_factory):
    # Crash after checkpoint 1 completed, before the notification reached the sink.
    first = open_writer(out_dir, context_factory())
    first.process_batch(["a", "b"])
    state = first.snapshot_state(1).operator_state
    first.process_batch(["after-barrier"])  # in progress, never covered by a checkpoint
    assert read_committed_lines(out_dir) == []

    ctx = context_factory(attempt_id="attempt-2", restored_checkpoint_id=1)
    open_writer(out_dir, ctx, restored_states=[state])

    assert read_committed_lines(out_dir) == ["a", "b"]
    assert hidden_leftovers(out_dir) == []

    # Crash during that recovery and recover from the same checkpoint again.
    ctx = context_factory(attempt_id="attempt-3", restored_checkpoint_id=1)
    open_writer(out_dir, ctx, restored_states=[state])

    assert read_committed_lines(out_dir) == ["a", "b"]


def test_crash_between_two_commits_finishes_on_restore(out_dir: str, context_factory, simulated_crash):
    ctx = context_factory(crash_at=("mid_commit", 2))
    first = open_writer(out_dir, ctx)
    first.process_batch(["one"])
    first.snapshot_state(1)
    first.process_batch(["two"])
    state = first.snapshot_state(2).operator_state
    with pytest.raises(simulated_crash):
        first.notify_checkpoint_complete(2)
    assert read_committed_lines(out_dir) == ["one"]

    restart = context_factory(attempt_id="attempt-2", restored_checkpoint_id=2)
    open_writer(out_dir, restart, restored_states=[state])

    assert read_committed_lines(out_dir) == ["one", "two"]
    assert hidden_leftovers(out_dir) == []


def test_leftovers_of_a_crashed_attempt_are_removed(out_dir: str, context_factory):
    first = open_writer(out_dir, context_factory())
    first.process_batch(["committed"])
    state = first.snapshot_state(1).operator_state
    first.notify_checkpoint_complete(1)
    first.process_batch(["pre-committed, never completed"])
    first.snapshot_state(2)  # checkpoint 2 never completes
    first.process_batch(["in progress"])
    first.close()
    assert sorted(n.rsplit(".", 1)[-1] for n in hidden_leftovers(out_dir)) == [
        "inprogress",
        "pending",
    ]

    ctx = context_factory(attempt_id="attempt-2", restored_checkpoint_id=1)
    second = open_writer(out_dir, ctx, restored_states=[state])

    assert hidden_leftovers(out_dir) == []
    assert read_committed_lines(out_dir) == ["committed"]
    second.process_batch(["replayed"])
    second.snapshot_state(2)
    second.notify_checkpoint_complete(2)
    assert read_committed_lines(out_dir) == ["committed", "replayed"]


def test_crash_after_pending_rename_leaves_nothing_visible(out_dir: str, context_factory, simulated_crash):
    ctx = context_factory(crash_at=("after_pending_rename_before_commit_rename", 1))
    first = open_writer(out_dir, ctx)
    first.process_batch(["a"])
    with pytest.raises(simulated_crash):
        first.snapshot_state(1)
    assert visible(out_dir) == []

    # No checkpoint completed, so the next attempt starts fresh.
    open_writer(out_dir, context_factory(attempt_id="attempt-2"))

    assert hidden_leftovers(out_dir) == []
    assert read_committed_lines(out_dir) == []


def test_output_of_a_checkpoint_newer_than_the_restored_one_is_removed(
    out_dir: str, context_factory, caplog: pytest.LogCaptureFixture
):
    first = open_writer(out_dir, context_factory())
    first.process_batch(["one"])
    state_1 = first.snapshot_state(1).operator_state
    first.notify_checkpoint_complete(1)
    first.process_batch(["two"])
    first.snapshot_state(2)
    first.notify_checkpoint_complete(2)  # committed, but checkpoint 2 is then lost
    assert read_committed_lines(out_dir) == ["one", "two"]

    ctx = context_factory(attempt_id="attempt-2", restored_checkpoint_id=1)
    with caplog.at_level(logging.WARNING, logger="onceflow"):
        open_writer(out_dir, ctx, restored_states=[state_1])

    assert visible(out_dir) == ["part-00000-0000000001"]
    assert "part-00000-0000000002" in caplog.text


def test_restore_by_subtask_0_keeps_other_subtasks_pending_files(out_dir: str, context_factory):
    states = []
    for i in range(2):
        writer = open_writer(out_dir, context_factory(subtask_index=i, parallelism=2))
        writer.process_batch([f"from-{i}"])
        states.append(writer.snapshot_state(1).operator_state)

    # Subtask 0 restores (and aborts leftovers) before subtask 1 re-commits.
    for i in range(2):
        ctx = context_factory(
            subtask_index=i, parallelism=2, attempt_id="attempt-2", restored_checkpoint_id=1
        )
        open_writer(out_dir, ctx, restored_states=states)

    assert read_committed_lines(out_dir) == ["from-0", "from-1"]
    assert hidden_leftovers(out_dir) == []


def test_restore_at_lower_parallelism_commits_every_old_subtask(out_dir: str, context_factory):
    states = []
    for i in range(3):
        writer = open_writer(out_dir, context_factory(subtask_index=i, parallelism=3))
        writer.process_batch([f"from-{i}"])
        states.append(writer.snapshot_state(4).operator_state)

    ctx = context_factory(attempt_id="attempt-2", restored_checkpoint_id=4)
    open_writer(out_dir, ctx, restored_states=states)

    assert read_committed_lines(out_dir) == ["from-0", "from-1", "from-2"]


def test_a_commit_interrupted_mid_copy_is_copied_again_on_an_object_store(memory_dir: str, context_factory):
    """Off the local disk a commit is copy-then-delete; a copy cut short must not be taken as done."""
    writer = open_writer(memory_dir, context_factory())
    writer.process_batch([f"line {i}" for i in range(100)])
    [(_, committable)] = writer.snapshot_state(1).operator_state
    fs, _ = fsspec.core.url_to_fs(memory_dir)
    fs.pipe_file(committable["final"], fs.cat_file(committable["pending"])[:50])  # the copy, cut short

    writer.notify_checkpoint_complete(1)

    assert read_committed_lines(memory_dir) == [f"line {i}" for i in range(100)]
    assert not fs.exists(committable["pending"])


def test_commit_with_both_files_missing_is_data_loss(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    writer.process_batch(["a"])
    [(_, committable)] = writer.snapshot_state(1).operator_state
    fs, _ = fsspec.core.url_to_fs(out_dir)
    fs.rm(committable["pending"])

    with pytest.raises(SinkCommitError) as info:
        writer.notify_checkpoint_complete(1)

    assert committable["pending"] in str(info.value)
    assert committable["final"] in str(info.value)
    assert isinstance(info.value, SinkError)
    assert info.value.domain is ErrorDomain.EXTERNAL


def test_marker_names_job_and_sink(out_dir: str, context_factory):
    open_writer(out_dir, context_factory(job_name="wordcount", uid="write"))
    fs, root = fsspec.core.url_to_fs(out_dir)
    assert json.loads(fs.cat_file(f"{root}/{MARKER_NAME}")) == {
        "job": "wordcount",
        "sink": "write",
    }


@pytest.mark.parametrize(("job", "uid"), [("other-job", "sink-uid"), ("job", "other-sink")])
def test_directory_of_another_job_or_sink_is_refused(out_dir: str, context_factory, job: str, uid: str):
    owner = open_writer(out_dir, context_factory(job_name=job, uid=uid))
    owner.process_batch(["theirs"])
    owner.snapshot_state(1)
    owner.notify_checkpoint_complete(1)
    before = names(out_dir)

    with pytest.raises(SinkOwnershipError) as info:
        open_writer(out_dir, context_factory(overwrite_output=True))

    message = str(info.value)
    assert repr(out_dir) in message and repr(job) in message and repr(uid) in message
    assert "another directory" in message
    assert info.value.domain is ErrorDomain.USER
    assert names(out_dir) == before


def test_part_files_without_marker_are_refused(out_dir: str, context_factory):
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/part-00000-0000000001", b"foreign\n")

    with pytest.raises(SinkOwnershipError, match="part-00000-0000000001"):
        open_writer(out_dir, context_factory(overwrite_output=True))

    assert names(out_dir) == ["part-00000-0000000001"]


def test_unrelated_files_without_marker_are_left_alone(out_dir: str, context_factory):
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/README", b"hello\n")

    open_writer(out_dir, context_factory())

    assert "README" in names(out_dir)


def _complete_run(out_dir: str, ctx: FakeContext, lines: list[str]) -> None:
    writer = open_writer(out_dir, ctx)
    writer.process_batch(lines)
    writer.snapshot_state(1)
    writer.notify_checkpoint_complete(1)
    writer.close()


def test_fresh_start_over_earlier_output_needs_fresh(out_dir: str, context_factory):
    _complete_run(out_dir, context_factory(), ["old"])

    with pytest.raises(SinkOutputExistsError) as info:
        open_writer(out_dir, context_factory(attempt_id="run-2"))

    assert "--fresh" in str(info.value)
    assert info.value.domain is ErrorDomain.USER
    assert read_committed_lines(out_dir) == ["old"]


def test_fresh_start_with_fresh_replaces_earlier_output(out_dir: str, context_factory):
    _complete_run(out_dir, context_factory(), ["old-1", "old-2"])
    leftover = open_writer(out_dir, context_factory(attempt_id="run-1b", restored_checkpoint_id=1))
    leftover.process_batch(["never committed"])
    leftover.close()

    _complete_run(out_dir, context_factory(attempt_id="run-2", overwrite_output=True), ["new"])

    assert read_committed_lines(out_dir) == ["new"]
    assert hidden_leftovers(out_dir) == []


def test_close_leaves_in_progress_file_uncommitted(out_dir: str, context_factory):
    writer = open_writer(out_dir, context_factory())
    writer.process_batch(["a"])
    writer.close()
    writer.close()

    assert visible(out_dir) == []
    assert [n for n in hidden_leftovers(out_dir) if n.endswith(".inprogress")]


def test_source_skips_sink_hidden_files(tmp_path: Path, context_factory):
    out_dir = str(tmp_path / "out")
    _complete_run(out_dir, context_factory(), ["committed"])
    writer = open_writer(out_dir, context_factory(attempt_id="a2", restored_checkpoint_id=1))
    writer.process_batch(["pending"])
    writer.snapshot_state(2)

    assert drain(open_reader(FileSource(out_dir), context_factory)) == ["committed"]


# --------------------------------------------------------------------------- source to sink


def _run_pipeline(
    source: FileSource,
    out_dir: str,
    context_factory: ContextFactory,
    *,
    attempt: int,
    checkpoint_id: int,
    restored: tuple[int, Any, Any] | None,
    crash_after_batches: int | None,
    checkpoint_every: int,
) -> tuple[int, tuple[int, Any, Any] | None]:
    """Run source -> sink until done or a crash; return last checkpoint id and completed state."""
    restored_id = restored[0] if restored else None
    reader = open_reader(
        source,
        context_factory,
        restored=restored_from([restored[1]], restored_id) if restored else None,
    )
    ctx = context_factory(attempt_id=f"attempt-{attempt}", restored_checkpoint_id=restored_id)
    writer = open_writer(out_dir, ctx, restored_states=[restored[2]] if restored else None)
    completed = restored
    batches = 0
    while True:
        batch = reader.poll_batch(3)
        if batch is not None:
            writer.process_batch(batch)
            batches += 1
        if batch is None or batches % checkpoint_every == 0:
            checkpoint_id += 1
            source_state = reader.snapshot_state(checkpoint_id)
            sink_state = writer.snapshot_state(checkpoint_id).operator_state
            completed = (checkpoint_id, source_state, sink_state)
            writer.notify_checkpoint_complete(checkpoint_id)
        if batch is None:
            return checkpoint_id, completed
        if crash_after_batches is not None and batches >= crash_after_batches:
            return checkpoint_id, completed  # kill -9: nothing closed, nothing flushed


@pytest.mark.parametrize("seed", range(6))
def test_pipeline_with_crashes_commits_every_line_exactly_once(
    tmp_path: Path, out_dir: str, context_factory, seed: int
):
    rng = random.Random(seed)
    expected = numbered_files(tmp_path / "in", files=4, lines=25)
    source = FileSource(str(tmp_path / "in"), read_size=rng.choice([20, 64, 4096]))
    checkpoint_id, completed = 0, None
    for attempt in range(1, 5):
        crash = rng.randrange(1, 20) if attempt < 4 else None
        checkpoint_id, completed = _run_pipeline(
            source,
            out_dir,
            context_factory,
            attempt=attempt,
            checkpoint_id=checkpoint_id,
            restored=completed,
            crash_after_batches=crash,
            checkpoint_every=rng.randrange(1, 5),
        )
        committed = read_committed_lines(out_dir)
        assert len(set(committed)) == len(committed), f"seed={seed}: duplicates"
        assert committed == expected[: len(committed)], f"seed={seed}: not a prefix"

    assert read_committed_lines(out_dir) == expected
    assert hidden_leftovers(out_dir) == []
