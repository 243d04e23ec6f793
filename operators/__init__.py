"""What jobs are built from: sources, transforms, keyed operators and sinks."""

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
from onceflow.operators.files import FileSink, FileSource, read_committed_lines
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

__all__ = [
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
]
