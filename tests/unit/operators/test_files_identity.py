"""FileSource input identity: started files that changed are refused by name; reads stop at the found size."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from onceflow.operators.base import RestoredState
from onceflow.operators.errors import SourceChangedError, SourceError
from onceflow.operators.files import FileSource, FileSourceReader
from onceflow.state_backends.errors import ErrorDomain

ContextFactory = Callable[..., Any]


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def lines(prefix: str, n: int) -> bytes:
    return "".join(f"{prefix}-{i:04d}\n" for i in range(n)).encode()


def open_reader(source: FileSource, context_factory: ContextFactory, index: int = 0, parallelism: int = 1):
    reader = source.create_reader(index, parallelism)
    reader.open(context_factory(subtask_index=index, parallelism=parallelism))
    return reader


def restore(reader: FileSourceReader, *states: Any) -> FileSourceReader:
    reader.restore_state(
        RestoredState(
            checkpoint_id=3,
            old_parallelism=len(states),
            operator_states=list(enumerate(states)),
            keyed_state={},
        )
    )
    return reader


def drain(reader: FileSourceReader) -> list[str]:
    out: list[str] = []
    while (batch := reader.poll_batch(7)) is not None:
        out.extend(batch)
    return out


def half_read(root: Path, context_factory: ContextFactory) -> tuple[FileSource, Any]:
    """Two files, a.txt half read and b.txt not started; return the source and the snapshot."""
    put(root / "a.txt", lines("a", 100))
    put(root / "b.txt", lines("b", 100))
    source = FileSource(str(root), read_size=200)
    reader = open_reader(source, context_factory)
    reader.poll_batch(10)
    state = reader.snapshot_state(3)
    reader.close()
    return source, state


def test_snapshot_records_each_files_offset_size_and_mtime(tmp_path: Path, context_factory) -> None:
    _, state = half_read(tmp_path, context_factory)

    a = state[str(tmp_path / "a.txt")]
    assert a["offset"] == len(lines("a", 10))
    assert a["size"] == len(lines("a", 100))
    assert a["mtime"] == os.stat(tmp_path / "a.txt").st_mtime
    assert state[str(tmp_path / "b.txt")]["offset"] == 0


def test_a_started_file_that_was_renamed_is_refused_by_name(tmp_path: Path, context_factory) -> None:
    source, state = half_read(tmp_path, context_factory)
    os.rename(tmp_path / "a.txt", tmp_path / "a-renamed.txt")

    with pytest.raises(SourceChangedError) as info:
        restore(open_reader(source, context_factory), state)

    message = str(info.value)
    assert str(tmp_path / "a.txt") in message and "--fresh" in message
    assert isinstance(info.value, SourceError) and info.value.domain is ErrorDomain.USER


@pytest.mark.parametrize("change", ["rewritten", "same size", "appended", "truncated"])
def test_a_started_file_whose_content_changed_is_refused_by_name(
    tmp_path: Path, context_factory, change: str
) -> None:
    source, state = half_read(tmp_path, context_factory)
    a = tmp_path / "a.txt"
    before = a.stat()
    if change == "rewritten":
        put(a, lines("new", 150))
    elif change == "same size":
        put(a, lines("A", 100))
        os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    elif change == "appended":
        with open(a, "ab") as f:
            f.write(b"more\n")
    else:
        put(a, lines("a", 50))

    with pytest.raises(SourceChangedError, match=str(a)):
        restore(open_reader(source, context_factory), state)


def test_a_file_not_started_at_the_checkpoint_may_change_freely(tmp_path: Path, context_factory) -> None:
    source, state = half_read(tmp_path, context_factory)
    put(tmp_path / "b.txt", lines("b2", 30))

    emitted = drain(restore(open_reader(source, context_factory), state))

    expected = lines("a", 100).decode().splitlines()[10:] + lines("b2", 30).decode().splitlines()
    assert emitted == expected


def test_a_finished_file_that_disappeared_is_refused_too(tmp_path: Path, context_factory) -> None:
    put(tmp_path / "a.txt", lines("a", 5))
    put(tmp_path / "b.txt", lines("b", 5))
    source = FileSource(str(tmp_path))
    reader = open_reader(source, context_factory)
    assert reader.poll_batch(100) == lines("a", 5).decode().splitlines()
    assert reader.poll_batch(100) == lines("b", 5).decode().splitlines()  # a.txt is done now
    state = reader.snapshot_state(3)
    (tmp_path / "a.txt").unlink()

    with pytest.raises(SourceChangedError, match="a.txt"):
        restore(open_reader(source, context_factory), state)


def test_every_subtask_refuses_a_missing_file_whatever_the_new_parallelism(
    tmp_path: Path, context_factory
) -> None:
    source, state = half_read(tmp_path, context_factory)
    (tmp_path / "a.txt").unlink()

    for index in range(2):
        with pytest.raises(SourceChangedError, match="a.txt"):
            restore(open_reader(source, context_factory, index, 2), state)


def test_a_snapshot_of_the_older_offsets_only_format_still_restores(tmp_path: Path, context_factory) -> None:
    put(tmp_path / "a.txt", lines("a", 20))
    source = FileSource(str(tmp_path))

    emitted = drain(
        restore(open_reader(source, context_factory), {str(tmp_path / "a.txt"): len(lines("a", 5))})
    )

    assert emitted == lines("a", 20).decode().splitlines()[5:]


def test_a_bounded_read_stops_at_the_size_the_file_had_when_found(tmp_path: Path, context_factory) -> None:
    a = put(tmp_path / "a.txt", b"one\ntwo\nthr")  # a writer is in the middle of "three"
    reader = open_reader(FileSource(str(tmp_path), read_size=4), context_factory)
    with open(a, "ab") as f:
        f.write(b"ee\nfour\n")

    assert drain(reader) == ["one", "two"]


def test_a_torn_last_line_is_left_out_with_a_warning(
    tmp_path: Path, context_factory, caplog: pytest.LogCaptureFixture
) -> None:
    a = put(tmp_path / "a.txt", b"one\ntwo\nthr")
    reader = open_reader(FileSource(str(tmp_path)), context_factory)
    with open(a, "ab") as f:
        f.write(b"ee\n")

    with caplog.at_level(logging.WARNING, logger="onceflow"):
        assert drain(reader) == ["one", "two"]

    assert str(a) in caplog.text and "still being written" in caplog.text


def test_a_last_line_without_newline_is_read_when_the_file_ends_there(
    tmp_path: Path, context_factory
) -> None:
    put(tmp_path / "a.txt", b"one\ntwo\nthree")

    assert drain(open_reader(FileSource(str(tmp_path), read_size=3), context_factory)) == [
        "one",
        "two",
        "three",
    ]


def test_a_line_longer_than_read_size_is_read_whole(tmp_path: Path, context_factory) -> None:
    long = "x" * 1000
    put(tmp_path / "a.txt", f"a\n{long}\nb\n".encode())

    assert drain(open_reader(FileSource(str(tmp_path), read_size=16), context_factory)) == ["a", long, "b"]


def test_a_file_truncated_while_it_is_read_is_refused(tmp_path: Path, context_factory) -> None:
    a = put(tmp_path / "a.txt", lines("a", 5000))  # larger than the read buffer of the open file
    reader = open_reader(FileSource(str(tmp_path), read_size=100), context_factory)
    reader.poll_batch(5)
    put(a, lines("a", 10))

    with pytest.raises(SourceChangedError, match="a.txt"):
        drain(reader)


def test_memory_files_are_identified_by_size_and_creation_time(context_factory) -> None:
    root = f"memory://identity-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/a.txt", lines("a", 50))
    source = FileSource(root, read_size=100)
    reader = open_reader(source, context_factory)
    reader.poll_batch(5)
    state = reader.snapshot_state(3)
    try:
        fs.pipe(f"{root}/a.txt", lines("z", 50))  # same size, new content

        with pytest.raises(SourceChangedError, match="a.txt"):
            restore(open_reader(source, context_factory), state)
    finally:
        fs.rm(root, recursive=True)
