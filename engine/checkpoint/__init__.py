"""The checkpoint format and its life on storage, in one place.

- :mod:`.paths`: ``CheckpointPaths``, the only code that names checkpoint files;
- :mod:`.metadata`: ``_metadata`` as types (``CheckpointMetadata``, ``StateHandle``)
  and its one encoder and decoder;
- :mod:`.store`: ``CheckpointStore``, fsspec I/O (the one reader and writer of
  ``_metadata``) and the run lock (:mod:`.lock`);
- :mod:`.retention`: which checkpoints and files to delete, as pure decisions;
- :mod:`.writer`: ``SnapshotWriter``, state files written in the background;
- :mod:`.restore`: choosing, checking and loading the checkpoint to resume from.
"""

from __future__ import annotations

from onceflow.engine.checkpoint.metadata import (
    METADATA_FORMAT,
    CheckpointMetadata,
    JobDescription,
    OperatorInfo,
    StateHandle,
    Timings,
)
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.retention import Deletion, plan_deletions
from onceflow.engine.checkpoint.store import CheckpointStore, list_jobs

__all__ = [
    "METADATA_FORMAT",
    "CheckpointMetadata",
    "CheckpointPaths",
    "CheckpointStore",
    "Deletion",
    "JobDescription",
    "OperatorInfo",
    "StateHandle",
    "Timings",
    "list_jobs",
    "plan_deletions",
]
