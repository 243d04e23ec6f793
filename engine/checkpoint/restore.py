"""Restore: choose the checkpoint to resume from, check it fits the job, load its state.

Everything is decided and loaded before any subtask starts, so a damaged
checkpoint is found while falling back is still possible. The steps of
:func:`select_checkpoint`:

1. List ``chk-<n>`` directories newest first; skip those without ``_metadata``
   (they never completed).
2. Refuse a checkpoint of an incompatible job (:func:`check_compatible`; not
   a fallback: the user must decide).
3. Load and verify every state file (:func:`load_states`); a torn or corrupt
   checkpoint is discarded and the previous one is tried. Every checkpoint
   skipped in steps 1 and 3 is named in a warning with the one restored instead.
4. Delete incomplete and discarded checkpoints newer than the chosen one, and
   finish deleting incomplete ones older than it (a deletion by retention that
   a crash interrupted), keeping files that a completed checkpoint still
   references (the decision is :func:`~onceflow.engine.checkpoint.retention.plan_deletions`),
   and the shared files of incremental checkpoints that no completed checkpoint
   lists (written by a checkpoint that never completed, or left by a deletion
   a crash interrupted).

Checkpoint ids are never reused: the next id is above every ``chk-<n>`` still
on storage and above the high-water mark ``_checkpoint_ids``, which the
coordinator writes when it triggers a checkpoint, so an id stays taken after
its ``chk-<n>`` was aborted, damaged or deleted (:func:`next_checkpoint_id`).
A sink that committed checkpoint n therefore never sees a different
checkpoint n again; and a restore behind its commits is refused by the sink
(:class:`~onceflow.operators.base.TwoPhaseCommitWriter`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from onceflow.engine.checkpoint.metadata import CheckpointMetadata, StateHandle
from onceflow.engine.checkpoint.retention import plan_deletions, surviving_references
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.errors import CheckpointStorageError, CorruptStateError, IncompatibleCheckpointError
from onceflow.engine.graph import OperatorKind
from onceflow.engine.plan import PhysicalPlan
from onceflow.operators.base import RestoredState
from onceflow.state_backends.arrow_snapshot import read_state_file, read_state_table
from onceflow.state_backends.changelog import merge_changes
from onceflow.state_backends.key_groups import HASH_FUNCTION_ID, KeyGroupRange, key_group_range_for_subtask

__all__ = [
    "RestorePoint",
    "RestoreSelection",
    "check_compatible",
    "load_states",
    "next_checkpoint_id",
    "select_checkpoint",
]

log = logging.getLogger("onceflow")

StateKey = tuple[str, int]
"""``(uid, subtask_index)`` of the subtask a restored state belongs to."""


@dataclass(frozen=True)
class RestorePoint:
    """The checkpoint an attempt resumes from, with every subtask's state loaded."""

    metadata: CheckpointMetadata
    states: dict[StateKey, RestoredState]

    @property
    def checkpoint_id(self) -> int:
        """The id of the checkpoint restored."""
        return self.metadata.checkpoint_id


@dataclass(frozen=True)
class RestoreSelection:
    """What an attempt starts from: the restore point, the checkpoints kept, the next id."""

    restore: RestorePoint | None
    completed: dict[int, CheckpointMetadata] = field(default_factory=dict)
    next_checkpoint_id: int = 1


def next_checkpoint_id(existing: Iterable[int], started: int = 0) -> int:
    """Return the id of the next checkpoint: above every id in ``existing`` and above ``started``.

    ``started`` is the high-water mark, the highest id this run ever started
    (:meth:`CheckpointStore.read_checkpoint_id_mark`).
    """
    return max(max(existing, default=0), started) + 1


def select_checkpoint(
    store: CheckpointStore,
    plan: PhysicalPlan,
    params: Mapping[str, str],
    *,
    allow_unmatched_state: bool = False,
) -> RestoreSelection:
    """Find the newest usable checkpoint, load all its state, and clean up (steps in the module doc).

    Called by the runner at the start of every attempt, while it holds the run lock.

    Raises:
        IncompatibleCheckpointError: the newest completed checkpoint belongs to
            another job, key-group count or parameters.
    """
    ids = store.checkpoint_ids()
    started = store.read_checkpoint_id_mark()
    chosen: RestorePoint | None = None
    skipped: list[tuple[int, str]] = []
    doomed: list[int] = []
    stale: list[int] = []
    completed: dict[int, CheckpointMetadata] = {}
    for cid in reversed(ids):
        # Step 1
        try:
            meta = store.read_metadata(cid)
        except CheckpointStorageError as exc:
            if chosen is None:
                skipped.append((cid, str(exc)))
            doomed.append(cid)
            continue
        if meta is None:
            if chosen is None:
                skipped.append((cid, "no _metadata: it never completed, or its _metadata was lost"))
            (doomed if chosen is None else stale).append(cid)
            continue
        if chosen is not None:
            completed[cid] = meta
            continue
        # Step 2
        dropped = check_compatible(
            meta,
            plan,
            params,
            where=f"checkpoint {cid} in {store.paths.job_dir!r}",
            allow_unmatched_state=allow_unmatched_state,
        )
        # Step 3
        try:
            states = load_states(store, meta, plan, dropped=dropped)
        except (CorruptStateError, FileNotFoundError) as exc:
            skipped.append((cid, f"a state file is damaged or missing: {exc}"))
            doomed.append(cid)
            continue
        chosen = RestorePoint(meta, states)
        completed[cid] = meta
    instead = f"restoring from checkpoint {chosen.checkpoint_id}" if chosen else "starting from the beginning"
    for cid, reason in skipped:
        log.warning("checkpoint %d is unusable (%s); %s", cid, reason, instead)
    # Step 4
    deletions = plan_deletions(completed, unusable=[*doomed, *stale])
    store.delete_checkpoints(deletions)
    store.collect_shared(surviving_references(completed, deletions))
    return RestoreSelection(chosen, completed, next_checkpoint_id(ids, started))


def check_compatible(
    meta: CheckpointMetadata,
    plan: PhysicalPlan,
    params: Mapping[str, str],
    *,
    where: str,
    allow_unmatched_state: bool = False,
) -> frozenset[str]:
    """Raise ``IncompatibleCheckpointError`` unless ``meta`` can restore into ``plan``; return uids dropped.

    Key groups cannot be remapped (same max parallelism and key hash), and the
    checkpoint directory identifies one run (same parameters). Every piece of
    state in the checkpoint must match an operator of this job by uid and by
    kind of state (the method that made it: ``reduce``, ``stateful_map``...);
    unmatched state refuses the run, naming it and the stateful operators
    without ``uid=``, since handing it to another operator or silently
    starting over would both give wrong output. With
    ``allow_unmatched_state`` it is dropped instead, with a warning naming it,
    and the returned uids are what :func:`load_states` must skip.
    """
    if meta.max_parallelism != plan.max_parallelism:
        msg = (
            f"{where} was taken with max parallelism {meta.max_parallelism}, this run "
            f"uses {plan.max_parallelism}; key groups cannot be remapped. Use the same "
            "--max-parallelism, or --fresh to start over"
        )
        raise IncompatibleCheckpointError(msg)
    if meta.hash_function != HASH_FUNCTION_ID:
        msg = f"{where} uses key hash {meta.hash_function!r}, not {HASH_FUNCTION_ID!r}"
        raise IncompatibleCheckpointError(msg)
    if dict(meta.params) != dict(params):
        msg = (
            f"{where} is a run of {plan.job_name!r} with parameters {dict(meta.params)}, but this run "
            f"has {dict(params)}; the checkpoint directory identifies one run. Use another "
            "--checkpoint-dir for the new parameters, or --fresh to start over"
        )
        raise IncompatibleCheckpointError(msg)
    operators = {op.uid: op for task in plan.tasks for op in task.operators}
    unmatched: list[str] = []
    dropped_uids: list[str] = []
    for uid in meta.stateful_uids:
        info = meta.operators.get(uid)
        op = operators.get(uid)
        old = f"{uid!r} ({info.state_kind} {info.name!r})" if info is not None else repr(uid)
        if op is None:
            unmatched.append(old)
        elif info is not None and info.state_kind not in (op.method, op.kind.value):
            unmatched.append(f"{old}, now the uid of {op.method or op.kind.value} {op.name!r}")
        else:
            continue
        dropped_uids.append(uid)
    if not unmatched:
        if meta.fingerprint != plan.fingerprint:
            log.warning("the job graph changed since %s; restoring state by operator uid", where)
        return frozenset()
    dropped = frozenset(dropped_uids)
    if allow_unmatched_state:
        log.warning(
            "dropping the state of %s from %s (--allow-unmatched-state): no operator of this job "
            "matches it by uid and kind, so those operators start without it",
            ", ".join(unmatched),
            where,
        )
        return dropped
    stateful = (OperatorKind.SOURCE, OperatorKind.KEYED, OperatorKind.SINK)
    without_uid = [
        f"{op.name!r} ({op.method or op.kind.value}, now uid {op.uid!r})"
        for op in operators.values()
        if op.kind in stateful and not op.explicit_uid
    ]
    hint = (
        f"Operators without uid=: {', '.join(without_uid)}; give the one that held this state "
        f"the uid it had (e.g. uid={dropped_uids[0]!r})"
        if without_uid
        else "Give the operator that held this state the same uid= as before"
    )
    msg = (
        f"{where} has state that no operator of this job matches by uid and kind: "
        f"{'; '.join(unmatched)}. {hint}; or pass --allow-unmatched-state to drop that state, "
        "or --fresh to start over"
    )
    raise IncompatibleCheckpointError(msg)


def load_states(
    store: CheckpointStore,
    meta: CheckpointMetadata,
    plan: PhysicalPlan,
    *,
    dropped: frozenset[str] = frozenset(),
) -> dict[StateKey, RestoredState]:
    """Read and verify every state file of ``meta`` into each subtask's share under ``plan``.

    Every subtask of an operator gets every old subtask's operator state (it
    picks its share after a rescale) and the keyed state of its own key-group
    range. Raises ``CorruptStateError`` or ``FileNotFoundError`` for a damaged
    or missing file. State of the ``dropped`` uids (see :func:`check_compatible`) is not read.
    """
    by_uid: dict[str, list[StateHandle]] = defaultdict(list)
    for handle in meta.handles:
        if handle.uid not in dropped:
            by_uid[handle.uid].append(handle)
    states: dict[StateKey, RestoredState] = {}
    for task in plan.tasks:
        for op in task.operators:
            handles = sorted(by_uid.get(op.uid, ()), key=lambda h: h.subtask)
            if not handles:
                continue
            info = meta.operators.get(op.uid)
            old_parallelism = info.parallelism if info is not None else len(handles)
            for i in range(task.parallelism):
                rng = key_group_range_for_subtask(plan.max_parallelism, task.parallelism, i)
                if any(h.incremental for h in handles):
                    op_states, keyed = _load_chains(store, handles, rng)
                else:
                    op_states, keyed = _load_full(store, handles, rng)
                states[op.uid, i] = RestoredState(meta.checkpoint_id, old_parallelism, op_states, keyed)
    return states


def load_operator_keyed_state(
    store: CheckpointStore, meta: CheckpointMetadata, uid: str
) -> dict[str, dict[Any, Any]]:
    """Read the whole keyed state of operator ``uid`` in ``meta`` (all subtasks, chains applied).

    For inspection (``onceflow checkpoints inspect --state UID``): the same
    files and verification as a restore, over every key group at once.

    Raises:
        KeyError: no state file of ``meta`` belongs to ``uid``.
    """
    handles = sorted((h for h in meta.handles if h.uid == uid), key=lambda h: h.subtask)
    if not handles:
        raise KeyError(uid)
    everything = KeyGroupRange(0, meta.max_parallelism)
    if any(h.incremental for h in handles):
        return _load_chains(store, handles, everything)[1]
    return _load_full(store, handles, everything)[1]


def _load_full(
    store: CheckpointStore, handles: list[StateHandle], rng: KeyGroupRange
) -> tuple[list[tuple[int, Any]], dict[str, dict[Any, Any]]]:
    """One full state file per old subtask: its operator state, and its keys in ``rng``."""
    op_states: list[tuple[int, Any]] = []
    keyed: dict[str, dict[Any, Any]] = {}
    for h in handles:
        op_state, tables = read_state_file(store.fs, h.file_handle(store.paths.resolve(h.path)), rng)
        op_states.append((h.subtask, op_state))
        for name, table in tables.items():
            keyed.setdefault(name, {}).update(table)
    return op_states, keyed


def _load_chains(
    store: CheckpointStore, handles: list[StateHandle], rng: KeyGroupRange
) -> tuple[list[tuple[int, Any]], dict[str, dict[Any, Any]]]:
    """Incremental chains: apply the files holding keys in ``rng`` oldest first (bases before deltas).

    Old subtasks' files hold disjoint key groups, so only the order within one
    segment matters, and ``created`` gives it (a base before a delta of the
    same id: a compaction names its base after the checkpoint that first lists
    it). The files are merged in Arrow and only the live entries decoded
    (:func:`~onceflow.state_backends.changelog.merge_changes`). Each old
    subtask's operator state is the one of its newest file, which is read even
    when it holds no key in range.
    """

    def order(h: StateHandle) -> tuple[int, bool]:
        return (h.created or 0, h.kind != "base")

    newest: dict[int, StateHandle] = {}
    for h in handles:
        if h.subtask not in newest or order(h) > order(newest[h.subtask]):
            newest[h.subtask] = h
    op_state_of: dict[int, Any] = {}
    tables = []
    for h in sorted(handles, key=order):
        overlaps = h.key_group_start is not None and h.key_group_end is not None
        overlaps = overlaps and h.key_group_start < rng.end and rng.start < h.key_group_end  # type: ignore[operator]
        if not overlaps and newest[h.subtask] is not h:
            continue
        op_state, table = read_state_table(store.fs, h.file_handle(store.paths.resolve(h.path)), rng)
        if newest[h.subtask] is h:
            op_state_of[h.subtask] = op_state
        tables.append((h.path, table))
    return sorted(op_state_of.items()), merge_changes(tables)
