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
from operators.files import FileSink, FileSource, read_committed_lines

__all__ = [
    "FileSink",
    "FileSource",
    "Operator",
    "OperatorSnapshot",
    "RestoredState",
    "RuntimeContext",
    "Sink",
    "SinkCommitError",
    "SinkError",
    "Source",
    "SourceError",
    "SourceReader",
    "TwoPhaseCommitWriter",
    "read_committed_lines",
]
