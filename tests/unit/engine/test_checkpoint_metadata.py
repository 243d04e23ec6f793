"""``_metadata`` as types: the on-disk JSON keys stay as they were, and damage is caught on read."""

from __future__ import annotations

import json

import pytest

from onceflow.engine.checkpoint.metadata import (
    CheckpointMetadata,
    JobDescription,
    OperatorInfo,
    StateHandle,
    Timings,
    decode_metadata,
    encode_metadata,
)
from onceflow.engine.errors import CheckpointStorageError
from onceflow.state_backends.arrow_snapshot import StateFileHandle

# What a format-1 ``_metadata`` holds, as the engine wrote it before the types existed.
ON_DISK = {
    "job": "wc",
    "fingerprint": "abc",
    "max_parallelism": 128,
    "operators": {"count": {"name": "count", "kind": "keyed", "parallelism": 2}},
    "params": {"n": "3"},
    "format": 1,
    "checkpoint_id": 4,
    "final": True,
    "hash_function": "crc32-canonical-v1",
    "python": "3.11",
    "handles": [
        {
            "uid": "count",
            "subtask": 0,
            "path": "chk-4/count-0.arrow",
            "rows": 3,
            "bytes": 100,
            "sha256": "ab" * 32,
            "key_group_start": 0,
            "key_group_end": 64,
        },
        {
            "uid": "count",
            "subtask": 1,
            "path": "chk-4/count-1.arrow",
            "rows": 0,
            "bytes": 20,
            "sha256": "cd" * 32,
            "key_group_start": None,
            "key_group_end": None,
        },
    ],
    "size_bytes": 120,
    "timings": {"triggered_at": "2024-05-01T10:00:00+00:00", "duration_s": 0.0123},
}


def test_format_1_json_round_trips_unchanged() -> None:
    meta = decode_metadata(json.dumps(ON_DISK).encode(), checkpoint_id=4, where="chk-4/_metadata")

    assert meta.final is True
    assert meta.operators["count"] == OperatorInfo("count", "keyed", 2)
    assert meta.handles[1].key_group_start is None
    assert meta.referenced_paths == {"chk-4/count-0.arrow", "chk-4/count-1.arrow"}
    assert json.loads(encode_metadata(meta)) == ON_DISK


@pytest.mark.parametrize("key", sorted(ON_DISK))
def test_a_missing_field_is_corrupt_and_named(key: str) -> None:
    damaged = {k: v for k, v in ON_DISK.items() if k != key}

    with pytest.raises(CheckpointStorageError, match="is corrupt"):
        decode_metadata(json.dumps(damaged).encode(), checkpoint_id=4, where="chk-4/_metadata")


def test_complete_sorts_handles_and_sums_their_sizes() -> None:
    job = JobDescription("wc", "abc", 128, {"a": OperatorInfo("a", "map", 1)}, {"n": "3"})
    b = StateHandle("b", 0, "chk-1/b-0.arrow", rows=1, bytes=5, sha256="0")
    a1 = StateHandle("a", 1, "chk-1/a-1.arrow", rows=1, bytes=3, sha256="0")
    a0 = StateHandle("a", 0, "chk-1/a-0.arrow", rows=1, bytes=2, sha256="0")

    meta = CheckpointMetadata.complete(
        job, checkpoint_id=1, final=False, handles=[b, a1, a0], timings=Timings("t", 0.1)
    )

    assert meta.handles == (a0, a1, b)
    assert meta.size_bytes == 10
    assert meta.stateful_uids == ["a", "b"]
    assert (meta.job, meta.params) == ("wc", {"n": "3"})


def test_state_handle_converts_to_and_from_the_backend_handle() -> None:
    written = StateFileHandle(
        "/abs/chk-2/op-1.arrow", rows=4, bytes=9, sha256="f", key_group_start=3, key_group_end=7
    )

    handle = StateHandle.of_file("op", 1, "chk-2/op-1.arrow", written)

    assert handle.path == "chk-2/op-1.arrow"
    assert handle.file_handle("/abs/chk-2/op-1.arrow") == written
    assert StateHandle.from_json(handle.to_json()) == handle
