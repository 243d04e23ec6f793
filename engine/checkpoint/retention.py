"""Which checkpoints to delete and which of their files to keep: pure decisions.

Two moments delete checkpoints, and both follow one rule, so they live in one
function (:func:`plan_deletions`):

- on completion, retention subsumes the completed checkpoints beyond the
  newest ``retain``;
- before a restore, the runner removes checkpoints that cannot be used
  (no ``_metadata``, a damaged one, corrupt state files) and finishes
  deletions a crash interrupted.

The rule: never delete a file that a surviving completed checkpoint
references. Handle paths are relative to the job directory, so a checkpoint
may reference another checkpoint's file (and, with incremental checkpoints,
files under ``<job>/shared/``, which will be collected here the same way).

Nothing here does I/O; ``CheckpointStore.delete_checkpoints`` carries a plan out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from onceflow.engine.checkpoint.metadata import CheckpointMetadata
from onceflow.engine.checkpoint.paths import CheckpointPaths

__all__ = ["Deletion", "checkpoints_to_subsume", "plan_deletions"]


@dataclass(frozen=True)
class Deletion:
    """Delete checkpoint ``checkpoint_id`` except ``keep_files`` (names inside its directory).

    When ``keep_files`` is empty the whole ``chk-<n>`` directory goes.
    """

    checkpoint_id: int
    keep_files: frozenset[str] = frozenset()


def checkpoints_to_subsume(completed: Iterable[int], retain: int) -> list[int]:
    """Return the completed checkpoint ids, oldest first, beyond the newest ``retain``."""
    if retain < 1:
        msg = f"retention must keep at least one checkpoint, got {retain!r}"
        raise ValueError(msg)
    return sorted(completed)[:-retain]


def plan_deletions(
    completed: Mapping[int, CheckpointMetadata],
    *,
    unusable: Iterable[int] = (),
    retain: int | None = None,
) -> list[Deletion]:
    """Decide what to delete: unusable checkpoints, then those retention subsumes.

    Args:
        completed: every completed checkpoint that is still wanted, by id.
        unusable: ids of checkpoints that cannot be restored (no or damaged
            ``_metadata``, corrupt state); deleted in the order given.
        retain: keep this many newest completed checkpoints and subsume the
            rest (oldest first); None keeps all of them.

    Returns:
        One ``Deletion`` per doomed checkpoint, each keeping the files that a
        surviving completed checkpoint references.
    """
    subsumed = checkpoints_to_subsume(completed, retain) if retain is not None else []
    doomed = [*unusable, *subsumed]
    gone = set(doomed)
    referenced: set[str] = set()
    for cid, meta in completed.items():
        if cid not in gone:
            referenced |= meta.referenced_paths
    return [Deletion(cid, CheckpointPaths.names_in_checkpoint_dir(cid, referenced)) for cid in doomed]
