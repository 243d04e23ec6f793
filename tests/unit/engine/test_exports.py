"""The public names of each package, pinned: changing them is an API change (httpx style)."""

from __future__ import annotations
import __future__

import importlib
import types

import pytest

PINNED = {
    "onceflow": [
        "Capability",
        "CheckpointError",
        "CheckpointStorageError",
        "ConcurrentRunError",
        "CoordinatorSettings",
        "CorruptStateError",
        "DeltaSink",
        "ErrorDomain",
        "EventTimeSessionWindows",
        "ExecutionSettings",
        "FileSink",
        "FileSource",
        "IncompatibleCheckpointError",
        "Job",
        "JobDefinitionError",
        "JobLoadError",
        "JobRunner",
        "KeyedCoProcessFunction",
        "KeyedProcessFunction",
        "KeyedStream",
        "OnceflowError",
        "Operator",
        "OperatorError",
        "OperatorSnapshot",
        "Partitioning",
        "PostgresSink",
        "RedisStreamSink",
        "RedisStreamSource",
        "RestartStrategy",
        "RestoredState",
        "RunResult",
        "RunStatus",
        "RuntimeContext",
        "Sink",
        "SinkCommitError",
        "SinkError",
        "SlidingEventTimeWindows",
        "Source",
        "SourceError",
        "SourceReader",
        "StateBackendConfig",
        "Stream",
        "TimestampAssigner",
        "TumblingEventTimeWindows",
        "TumblingProcessingTimeWindows",
        "TwoPhaseCommitWriter",
        "Window",
        "read_committed_lines",
    ],
    "onceflow.engine": [
        "CheckpointError",
        "CheckpointStorageError",
        "ConcurrentRunError",
        "CoordinatorSettings",
        "ExecutionSettings",
        "IncompatibleCheckpointError",
        "Job",
        "JobDefinitionError",
        "JobLoadError",
        "JobRunner",
        "KeyedStream",
        "OnceflowError",
        "OperatorError",
        "Partitioning",
        "RestartStrategy",
        "RunResult",
        "RunStatus",
        "Stream",
    ],
    "onceflow.operators": [
        "Capability",
        "DeltaSink",
        "EventTimeSessionWindows",
        "FileSink",
        "FileSource",
        "KeyedCoProcessFunction",
        "KeyedProcessFunction",
        "Operator",
        "OperatorSnapshot",
        "PostgresSink",
        "RedisStreamSink",
        "RedisStreamSource",
        "RestoredState",
        "RuntimeContext",
        "Sink",
        "SinkCommitError",
        "SinkError",
        "SlidingEventTimeWindows",
        "Source",
        "SourceError",
        "SourceReader",
        "TimestampAssigner",
        "TumblingEventTimeWindows",
        "TumblingProcessingTimeWindows",
        "TwoPhaseCommitWriter",
        "Window",
        "read_committed_lines",
    ],
    "onceflow.state_backends": [
        "CorruptStateError",
        "DEFAULT_MAX_PARALLELISM",
        "DiskKeyedState",
        "ErrorDomain",
        "HASH_FUNCTION_ID",
        "HeapKeyedState",
        "IncompatibleStateError",
        "KeyEncodingError",
        "KeyGroupAssigner",
        "KeyGroupRange",
        "OnceflowError",
        "STATE_BACKENDS",
        "StateBackendConfig",
        "StateFileHandle",
        "decode_key",
        "encode_key",
        "key_group_for",
        "key_group_range_for_subtask",
        "read_state_file",
        "stable_hash",
        "subtask_for_key_group",
        "write_state_file",
    ],
}


@pytest.mark.parametrize("package", sorted(PINNED))
def test_all_matches_the_pinned_public_names(package: str) -> None:
    module = importlib.import_module(package)

    assert sorted(module.__all__) == sorted(PINNED[package])
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("package", sorted(PINNED))
def test_every_exported_name_resolves_and_nothing_public_is_left_out(package: str) -> None:
    module = importlib.import_module(package)

    missing = [name for name in module.__all__ if not hasattr(module, name)]
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType | __future__._Feature)
    }

    assert missing == []
    assert public == set(module.__all__)


@pytest.mark.parametrize("package", sorted(PINNED))
def test_star_import_gives_exactly_the_exported_names(package: str) -> None:
    namespace: dict[str, object] = {}

    exec(f"from {package} import *", namespace)

    assert set(namespace) - {"__builtins__"} == set(PINNED[package])


def test_one_root_error_is_shared_by_every_package() -> None:
    from onceflow import engine, operators, state_backends

    assert engine.OnceflowError is state_backends.OnceflowError
    for error in (
        engine.JobDefinitionError,
        engine.OperatorError,
        operators.SinkError,
        operators.SourceError,
        state_backends.CorruptStateError,
    ):
        assert issubclass(error, engine.OnceflowError)
    assert issubclass(engine.JobLoadError, engine.JobDefinitionError)
    assert issubclass(operators.SinkCommitError, operators.SinkError)
    assert issubclass(state_backends.KeyEncodingError, TypeError)
