"""onceflow: a checkpointing dataflow engine for Python with exactly-once results.

Job files import the public API flat from here::

    from onceflow import Job, FileSource, FileSink

The engine lives in three subpackages, imported one way only
(``engine`` -> ``operators`` -> ``state_backends``):

- :mod:`onceflow.engine`: the job API, planning, checkpoints, executors, runner, CLI;
- :mod:`onceflow.operators`: sources, transforms, keyed operators, windows, sinks;
- :mod:`onceflow.state_backends`: key groups, keyed state, Arrow state files.

Names are resolved on first use (PEP 562), so ``onceflow run`` imports only
what the job touches: a job without PostgreSQL never imports the sink's module,
and the CLI starts fast.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from onceflow.engine.api import Job, KeyedStream, Stream
    from onceflow.engine.coordinator import CoordinatorSettings
    from onceflow.engine.errors import (
        CheckpointError,
        CheckpointStorageError,
        ConcurrentRunError,
        IncompatibleCheckpointError,
        JobDefinitionError,
        JobLoadError,
        OperatorError,
    )
    from onceflow.engine.executors._wiring import ExecutionSettings
    from onceflow.engine.graph import Partitioning
    from onceflow.engine.runner import JobRunner, RestartStrategy, RunResult, RunStatus
    from onceflow.operators.base import (
        Capability,
        Operator,
        OperatorSnapshot,
        RestoredState,
        RuntimeContext,
        Sink,
        Source,
        SourceReader,
        TwoPhaseCommitWriter,
    )
    from onceflow.operators.co_process import KeyedCoProcessFunction
    from onceflow.operators.delta import DeltaSink
    from onceflow.operators.errors import SinkCommitError, SinkError, SourceError
    from onceflow.operators.event_time import TimestampAssigner
    from onceflow.operators.file_sink import FileSink, read_committed_lines
    from onceflow.operators.files import FileSource
    from onceflow.operators.postgres import PostgresSink
    from onceflow.operators.process_function import KeyedProcessFunction
    from onceflow.operators.redis_streams import RedisStreamSink, RedisStreamSource
    from onceflow.operators.windows import (
        EventTimeSessionWindows,
        SlidingEventTimeWindows,
        TumblingEventTimeWindows,
        TumblingProcessingTimeWindows,
        Window,
    )
    from onceflow.state_backends.config import StateBackendConfig
    from onceflow.state_backends.errors import CorruptStateError, ErrorDomain, OnceflowError

_HOMES: dict[str, str] = {
    # the job API
    "Job": "onceflow.engine.api",
    "Stream": "onceflow.engine.api",
    "KeyedStream": "onceflow.engine.api",
    "Partitioning": "onceflow.engine.graph",
    # sources, sinks, operators
    "FileSource": "onceflow.operators.files",
    "FileSink": "onceflow.operators.file_sink",
    "read_committed_lines": "onceflow.operators.file_sink",
    "PostgresSink": "onceflow.operators.postgres",
    "DeltaSink": "onceflow.operators.delta",
    "RedisStreamSource": "onceflow.operators.redis_streams",
    "RedisStreamSink": "onceflow.operators.redis_streams",
    "KeyedProcessFunction": "onceflow.operators.process_function",
    "KeyedCoProcessFunction": "onceflow.operators.co_process",
    "TimestampAssigner": "onceflow.operators.event_time",
    "EventTimeSessionWindows": "onceflow.operators.windows",
    "SlidingEventTimeWindows": "onceflow.operators.windows",
    "TumblingEventTimeWindows": "onceflow.operators.windows",
    "TumblingProcessingTimeWindows": "onceflow.operators.windows",
    "Window": "onceflow.operators.windows",
    # extension points: custom sources, sinks and operators
    "Capability": "onceflow.operators.base",
    "Operator": "onceflow.operators.base",
    "OperatorSnapshot": "onceflow.operators.base",
    "RestoredState": "onceflow.operators.base",
    "RuntimeContext": "onceflow.operators.base",
    "Sink": "onceflow.operators.base",
    "Source": "onceflow.operators.base",
    "SourceReader": "onceflow.operators.base",
    "TwoPhaseCommitWriter": "onceflow.operators.base",
    # running a job from Python
    "JobRunner": "onceflow.engine.runner",
    "RestartStrategy": "onceflow.engine.runner",
    "RunResult": "onceflow.engine.runner",
    "RunStatus": "onceflow.engine.runner",
    "ExecutionSettings": "onceflow.engine.executors._wiring",
    "CoordinatorSettings": "onceflow.engine.coordinator",
    "StateBackendConfig": "onceflow.state_backends.config",
    # errors
    "OnceflowError": "onceflow.state_backends.errors",
    "ErrorDomain": "onceflow.state_backends.errors",
    "CorruptStateError": "onceflow.state_backends.errors",
    "SourceError": "onceflow.operators.errors",
    "SinkError": "onceflow.operators.errors",
    "SinkCommitError": "onceflow.operators.errors",
    "JobDefinitionError": "onceflow.engine.errors",
    "JobLoadError": "onceflow.engine.errors",
    "OperatorError": "onceflow.engine.errors",
    "CheckpointError": "onceflow.engine.errors",
    "CheckpointStorageError": "onceflow.engine.errors",
    "ConcurrentRunError": "onceflow.engine.errors",
    "IncompatibleCheckpointError": "onceflow.engine.errors",
}

__all__ = [
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
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Import a public name from its home module on first use."""
    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'onceflow' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
