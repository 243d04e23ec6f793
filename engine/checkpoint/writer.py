"""The snapshot writer: puts captured snapshots on storage in the background and reports acks.

Snapshots are asynchronous: a subtask captures its state at the barrier and
goes on processing while this writer serializes it to ``chk-<n>/<uid>-<subtask>.arrow``.
The executor's loop drains ``acks`` and hands each to the coordinator
(acknowledge on success, decline on an error a retry may cure); an error of
the job's own making (state that cannot be pickled) fails the attempt instead.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from onceflow.engine.checkpoint.metadata import StateHandle
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.operators.base import OperatorSnapshot
from onceflow.state_backends.arrow_snapshot import write_state_file

__all__ = ["SnapshotWriter"]


@dataclass(frozen=True)
class _Ack:
    """One subtask's snapshot for ``checkpoint_id`` is written (``error`` None) or failed."""

    checkpoint_id: int
    key: tuple[int, int]
    handles: list[StateHandle]
    error: BaseException | None
    uid: str | None = None
    """The operator whose state could not be written, with ``error``."""


class SnapshotWriter:
    """Writes captured snapshots to storage on a background thread and reports acks.

    One worker thread, so writes and deletions happen in submission order.
    ``outstanding`` counts submitted writes; whoever drains ``acks`` decrements it.
    """

    def __init__(self, store: CheckpointStore, max_parallelism: int) -> None:
        self.store = store
        self.acks: queue.SimpleQueue[_Ack] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onceflow-writer")
        self.max_parallelism = max_parallelism
        self.outstanding = 0

    def submit(
        self, checkpoint_id: int, key: tuple[int, int], snapshots: list[tuple[str, OperatorSnapshot]]
    ) -> None:
        """Queue the write of one subtask's snapshots for ``checkpoint_id``."""
        self.outstanding += 1
        self._pool.submit(self._write, checkpoint_id, key, snapshots)

    def _write(
        self, checkpoint_id: int, key: tuple[int, int], snapshots: list[tuple[str, OperatorSnapshot]]
    ) -> None:
        handles: list[StateHandle] = []
        error: BaseException | None = None
        failed: str | None = None
        subtask = key[1]
        try:
            paths = self.store.paths
            for uid, snap in snapshots:
                failed = uid
                relative = CheckpointPaths.relative_state_file(checkpoint_id, uid, subtask)
                written = write_state_file(
                    self.store.fs,
                    paths.resolve(relative),
                    keyed_state=snap.keyed_state,
                    operator_state=snap.operator_state,
                    max_parallelism=self.max_parallelism,
                )
                handles.append(StateHandle.of_file(uid, subtask, relative, written))
        except Exception as exc:  # noqa: BLE001 - reported as a declined checkpoint
            error = exc
        self.acks.put(_Ack(checkpoint_id, key, handles, error, failed if error is not None else None))

    def delete_later(self, checkpoint_id: int) -> None:
        """Delete an aborted checkpoint's files after the writes queued before."""
        self._pool.submit(self.store.delete_checkpoint, checkpoint_id)

    def shutdown(self) -> None:
        """Wait for queued work and stop the thread."""
        self._pool.shutdown(wait=True)
