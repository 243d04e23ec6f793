"""The snapshot writer: puts captured snapshots on storage in the background and reports acks.

Snapshots are asynchronous: a subtask captures its state at the barrier and
goes on processing while this writer serializes it to ``chk-<n>/<uid>-<subtask>.arrow``.
The executor's loop drains ``acks`` and hands each to the coordinator
(acknowledge on success, decline on an error a retry may cure); an error of
the job's own making (state that cannot be pickled) fails the attempt instead.

Incremental checkpoints (a snapshot whose keyed state is a ``base`` or a
``delta``): the writer keeps, per operator subtask, the chain of shared files
each key-group segment is made of (:mod:`onceflow.state_backends.changelog`),
writes the new delta's segments under ``shared/`` and answers with the handles
of every file of the chain, so ``_metadata`` lists all a restore needs. It
keeps the chain whether or not the checkpoint then completes: the next delta
holds only what changed after this one, so it needs this one's files (they
stay on storage until no retained checkpoint lists them). A delta whose write
failed is carried into the next one instead.

Compaction merges a segment's chain into a new base, which bounds what a
restore reads (at most :attr:`SnapshotWriter.max_deltas` deltas per
segment). Rewriting a base costs the whole segment, so its pace decides the
bytes a long run writes: with ``S`` segments, one segment is compacted every
``max_deltas // S`` checkpoints of a subtask (the one with the most deltas),
so each base is rewritten once per ``max_deltas`` checkpoints and the
rewrites are spread evenly instead of coming in a burst when every chain
reaches the limit at once. On top of that pace, a segment whose deltas reach
``max_deltas`` files or the size of its base is compacted at once. A
compaction runs after the checkpoint's ack (it never delays a checkpoint),
on the same thread, so the next checkpoint lists the new base. Its file is
named as created by checkpoint ``n + 1`` (``n`` the checkpoint just written):
retention during the run collects unlisted shared files only up to the
checkpoint just completed, and the first checkpoint to complete past ``n``
lists the new base. A crash before then leaves an unlisted shared file that
the cleanup at restore removes.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from onceflow.engine.checkpoint.metadata import StateHandle
from onceflow.engine.checkpoint.paths import CheckpointPaths
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.faults import CRASH_POINTS
from onceflow.operators.base import OperatorSnapshot
from onceflow.state_backends.arrow_snapshot import write_state_file
from onceflow.state_backends.changelog import compact, segments_of, write_segments, write_view_segments
from onceflow.state_backends.disk import DiskSnapshot
from onceflow.state_backends.heap import BASE, FULL
from onceflow.state_backends.key_groups import KeyGroupRange

__all__ = ["SnapshotWriter"]

log = logging.getLogger("onceflow")

_Chain = dict[KeyGroupRange, list[StateHandle]]
"""One operator subtask's shared files per segment: a base (if the segment had rows), then deltas."""


@dataclass(frozen=True)
class _Ack:
    """One subtask's snapshot for ``checkpoint_id`` is written (``error`` None) or failed."""

    checkpoint_id: int
    key: tuple[int, int]
    handles: list[StateHandle]
    error: BaseException | None
    uid: str | None = None
    """The operator whose state could not be written, with ``error``."""


def _incremental_tables(snap: OperatorSnapshot) -> dict[str, dict[Any, Any]]:
    """Return the dicts of a heap backend's base or delta capture."""
    if not isinstance(snap.keyed_state, dict):
        msg = f"an incremental capture must hold dicts, got {type(snap.keyed_state).__name__}"
        raise TypeError(msg)
    return snap.keyed_state


def _merge(older: OperatorSnapshot, newer: OperatorSnapshot) -> OperatorSnapshot:
    """One delta holding ``older``'s changes overridden by ``newer``'s (a failed write carried on)."""
    if isinstance(newer.keyed_state, DiskSnapshot) and isinstance(older.keyed_state, DiskSnapshot):
        newer.keyed_state.absorb(older.keyed_state)
        kind = BASE if BASE in (older.keyed_kind, newer.keyed_kind) else newer.keyed_kind
        return OperatorSnapshot(newer.operator_state, newer.keyed_state, keyed_kind=kind)
    tables = {name: dict(table) for name, table in _incremental_tables(older).items()}
    deleted = {name: set(keys) for name, keys in older.deleted.items()}
    for name, table in _incremental_tables(newer).items():
        tables.setdefault(name, {}).update(table)
        deleted.get(name, set()).difference_update(table)
    for name, keys in newer.deleted.items():
        deleted.setdefault(name, set()).update(keys)
        table_ = tables.get(name, {})
        for key in keys:
            table_.pop(key, None)
    return OperatorSnapshot(
        operator_state=newer.operator_state,
        keyed_state=tables,
        keyed_kind=newer.keyed_kind if older.keyed_kind != BASE else BASE,
        deleted={name: list(keys) for name, keys in deleted.items() if keys},
    )


class SnapshotWriter:
    """Writes captured snapshots to storage on a background thread and reports acks.

    One worker thread, so writes and deletions happen in submission order.
    ``outstanding`` counts submitted writes; whoever drains ``acks`` decrements it.
    """

    min_compaction_bytes = 1 << 20
    """Deltas smaller in total than this are not compacted for size alone (small states)."""

    def __init__(self, store: CheckpointStore, max_parallelism: int, *, max_deltas: int = 64) -> None:
        self.store = store
        self.max_deltas = max_deltas
        """Deltas a segment's chain may hold before it is compacted into a new base."""
        self.acks: queue.SimpleQueue[_Ack] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onceflow-writer")
        self.max_parallelism = max_parallelism
        self.outstanding = 0
        self._segments = segments_of(KeyGroupRange(0, max_parallelism), max_parallelism)
        self._chains: dict[tuple[str, int], _Chain] = {}
        self._unwritten: dict[tuple[str, int], OperatorSnapshot] = {}
        self._since_compaction: dict[tuple[str, int], int] = {}
        """Deltas written per operator subtask since it last compacted a segment (the pace)."""
        self._compactions: list[tuple[int, str, int]] = []
        """``(checkpoint_id, uid, subtask)`` of chains to consider compacting once the ack is out."""
        self._unlisted: set[str] = set()
        """New bases no checkpoint has listed yet: deleted at :meth:`shutdown` (no checkpoint will)."""
        self._closing = False

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
        pending = iter(snapshots)
        try:
            paths = self.store.paths
            for uid, snap in pending:
                failed = uid
                if snap.keyed_kind != FULL:
                    handles.extend(self._write_incremental(checkpoint_id, uid, subtask, snap))
                    continue
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
            for uid, snap in pending:  # not attempted: their deltas go into the next ones
                if snap.keyed_kind != FULL:
                    self._carry(uid, subtask, snap)
        self.acks.put(_Ack(checkpoint_id, key, handles, error, failed if error is not None else None))
        compactions, self._compactions = self._compactions, []
        for cid, uid, sub in compactions:
            chain = self._chains.get((uid, sub))
            if chain is None or self._closing:
                continue
            try:
                self._compact_one(cid + 1, uid, sub, chain)
            except Exception:  # noqa: BLE001 - the chain stays as it was; the next checkpoint retries
                log.warning(
                    "compacting the state of %r subtask %d failed; retried later", uid, sub, exc_info=True
                )
        # Arrow's allocator keeps what a write or a compaction freed for reuse; a compacted segment of
        # a 10,000,000-key state left ~300 MiB resident until the next one. Handing it back costs ~1 us.
        pa.default_memory_pool().release_unused()

    def _carry(self, uid: str, subtask: int, snap: OperatorSnapshot) -> None:
        """Keep a snapshot that was not written, to merge into the next one of the same subtask."""
        older = self._unwritten.get((uid, subtask))
        self._unwritten[uid, subtask] = snap if older is None else _merge(older, snap)

    def _write_incremental(
        self, checkpoint_id: int, uid: str, subtask: int, snap: OperatorSnapshot
    ) -> list[StateHandle]:
        """Write a base or delta as shared segment files; return the handles of the whole chain."""
        key = (uid, subtask)
        older = self._unwritten.pop(key, None)
        if older is not None:
            snap = _merge(older, snap)
        kind = snap.keyed_kind
        paths = self.store.paths

        def relative(segment: KeyGroupRange) -> str:
            return CheckpointPaths.relative_shared_file(uid, subtask, checkpoint_id, segment.start, kind)

        try:
            if isinstance(snap.keyed_state, DiskSnapshot):
                written = write_view_segments(
                    self.store.fs,
                    lambda segment: paths.resolve(relative(segment)),
                    self._segments,
                    view=snap.keyed_state,
                    operator_state=snap.operator_state,
                    always=self._segments[0],
                )
            else:
                written = write_segments(
                    self.store.fs,
                    lambda segment: paths.resolve(relative(segment)),
                    self._segments,
                    keyed_state=_incremental_tables(snap),
                    deleted=snap.deleted if kind != BASE else None,
                    operator_state=snap.operator_state,
                    max_parallelism=self.max_parallelism,
                    always=self._segments[0],
                )
        except Exception:
            self._carry(uid, subtask, snap)
            raise
        if isinstance(snap.keyed_state, DiskSnapshot):
            snap.keyed_state.release()
        CRASH_POINTS.hit("mid_shared_write")
        chain = {} if kind == BASE else self._chains.setdefault(key, {})
        for segment, file in written.items():
            handle = StateHandle.of_file(
                uid, subtask, relative(segment), file, kind=kind, created=checkpoint_id
            )
            chain.setdefault(segment, []).append(handle)
        self._chains[key] = chain
        self._since_compaction[key] = 0 if kind == BASE else self._since_compaction.get(key, 0) + 1
        self._compactions.append((checkpoint_id, uid, subtask))
        listed = [h for segment in sorted(chain, key=lambda s: s.start) for h in chain[segment]]
        self._unlisted.difference_update(h.path for h in listed)
        return listed

    def _compact_one(self, created: int, uid: str, subtask: int, chain: _Chain) -> None:
        """Compact at most one segment: one past its limits, else the longest chain when the pace is due.

        ``created`` names the new base (see the module doc: one past the checkpoint just written).

        Limits: ``max_deltas`` deltas, or deltas as large as the base. Pace:
        ``max_deltas // len(chain)`` deltas written since the subtask last
        compacted, and the chosen segment holds at least that many deltas.
        """
        key = (uid, subtask)
        pace = max(1, self.max_deltas // max(1, len(chain)))
        paced = self._since_compaction.get(key, 0) >= pace
        worst: tuple[float, int, KeyGroupRange] | None = None
        for segment, files in chain.items():
            # The oldest file stands for the base: a fresh state's chain starts with a delta of all it wrote.
            base = files[0].bytes
            deltas = files[1:]
            delta_bytes = sum(h.bytes for h in deltas)
            need = max(len(deltas) / self.max_deltas, delta_bytes / max(base, self.min_compaction_bytes))
            if need < 1 and not (paced and len(deltas) >= pace):
                continue
            candidate = (need, len(deltas), segment)
            if worst is None or candidate[:2] > worst[:2]:
                worst = candidate
        if worst is None:
            return
        segment = worst[2]
        files = chain[segment]
        relative = CheckpointPaths.relative_shared_file(uid, subtask, created, segment.start, BASE)
        paths = self.store.paths
        merged = compact(
            self.store.fs, [h.file_handle(paths.resolve(h.path)) for h in files], paths.resolve(relative)
        )
        CRASH_POINTS.hit("mid_shared_write")
        chain[segment] = [StateHandle.of_file(uid, subtask, relative, merged, kind=BASE, created=created)]
        self._since_compaction[key] = 0
        self._unlisted.add(relative)

    def delete_later(self, checkpoint_id: int) -> None:
        """Delete an aborted checkpoint's files after the writes queued before."""
        self._pool.submit(self.store.delete_checkpoint, checkpoint_id)

    def shutdown(self) -> None:
        """Wait for queued work, stop the thread, and delete new bases that no checkpoint lists.

        A compaction after the last checkpoint's ack made a base no checkpoint
        will list: left on storage, a rerun of the finished job would find
        (and delete) it. A kill before this deletion leaves it to the cleanup
        at the next restore.
        """
        self._closing = True
        self._pool.shutdown(wait=True)
        for relative in sorted(self._unlisted):
            try:
                self.store.fs.rm_file(self.store.paths.resolve(relative))
            except FileNotFoundError:
                pass
        self._unlisted.clear()
