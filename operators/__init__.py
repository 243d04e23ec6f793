"""What jobs are built from: sources, transforms, keyed operators and sinks."""

from operators.base import (
    Operator,
    OperatorSnapshot,
    RestoredState,
    RuntimeContext,
    Sink,
    Source,
    SourceReader,
    TwoPhaseCommitWriter,
)
from operators.errors import SinkCommitError, SinkError, SourceError
from operators.event_time import TimestampAssigner
from operators.files import FileSink, FileSource, read_committed_lines
from operators.postgres import PostgresSink
from operators.process_function import KeyedProcessFunction
from operators.redis_streams import RedisStreamSink, RedisStreamSource
from operators.windows import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
    Window,
)

__all__ = [
    "EventTimeSessionWindows",
    "FileSink",
    "FileSource",
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
