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
may reference another checkpoint's file, and incremental checkpoints reference
files under ``<job>/shared/`` that earlier checkpoints wrote.
:func:`shared_to_delete` collects those once no surviving checkpoint lists
them. It runs after the checkpoint deletions (``_metadata`` first), so a kill
at any moment leaves every surviving checkpoint whole: what a kill leaves
behind is only unreferenced files, collected the next time. Shared files that
a checkpoint still being written may need are never collected: during a run
only files written by a checkpoint up to the one just completed are
candidates (the snapshot writer never builds on a file that the newest
completed checkpoint does not list), and at a restore or a ``checkpoints
delete`` nothing is being written.

Nothing here does I/O; ``CheckpointStore.delete_checkpoints`` carries a plan out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from onceflow.engine.checkpoint.metadata import CheckpointMetadata
from onceflow.engine.checkpoint.paths import CheckpointPaths

__all__ = ["Deletion", "checkpoints_to_subsume", "plan_deletions", "shared_to_delete", "surviving_references"]


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


def surviving_references(
    completed: Mapping[int, CheckpointMetadata], deletions: Iterable[Deletion]
) -> frozenset[str]:
    """Every file (relative path) that a completed checkpoint not in ``deletions`` references."""
    gone = {d.checkpoint_id for d in deletions}
    referenced: set[str] = set()
    for cid, meta in completed.items():
        if cid not in gone:
            referenced |= meta.referenced_paths
    return frozenset(referenced)


def shared_to_delete(
    shared: Iterable[str], referenced: frozenset[str], *, written_up_to: int | None = None
) -> list[str]:
    """Return the shared files (relative ``shared/...`` paths) that may be deleted, sorted.

    Args:
        shared: every file found under ``shared/``.
        referenced: what the surviving completed checkpoints reference
            (:func:`surviving_references`).
        written_up_to: during a run, the id of the checkpoint just completed:
            files written by a later checkpoint are kept. None (no run
            writing): any unreferenced shared file goes.

    Names that are not shared state files are never touched.
    """
    doomed = []
    for path in shared:
        created = CheckpointPaths.shared_file_checkpoint(path)
        if created is None or path in referenced:
            continue
        if written_up_to is None or created <= written_up_to:
            doomed.append(path)
    return sorted(doomed)
