"""Wiring shared by executors: which channels a plan needs and how a subtask is assembled.

A subtask is built from the plan, its index and the channel ends a transport
supplies, so executors differ only in where subtasks run (placement) and what
their channels are (the transport: deques in one process, pipes between
processes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onceflow.engine.channels import BroadcastGate, ForwardGate, HashGate, OutputGate, RebalanceGate
from onceflow.engine.checkpoint.metadata import CheckpointMetadata, JobDescription
from onceflow.engine.checkpoint.store import CheckpointStore
from onceflow.engine.context import SubtaskContext
from onceflow.engine.coordinator import CheckpointCoordinator, Completer, CoordinatorSettings, complete_now
from onceflow.engine.graph import OperatorKind, Partitioning
from onceflow.engine.plan import PhysicalPlan, TaskSpec
from onceflow.engine.stopping import StopRequest
from onceflow.engine.task import SnapshotSink, Subtask
from onceflow.engine.transport.base import ChannelEnd, ChannelId
from onceflow.operators.base import RestoredState
from onceflow.state_backends.config import StateBackendConfig
from onceflow.state_backends.key_groups import key_group_range_for_subtask


def plan_edges(plan: PhysicalPlan) -> list[Any]:
    """Every task edge of the plan in a fixed order (the ``edge`` of a ``ChannelId``)."""
    return [edge for task in plan.tasks for edge in task.outputs]


def channel_ids(plan: PhysicalPlan) -> list[ChannelId]:
    """Every channel the plan needs: forward edges i->i, all others all-to-all."""
    ids: list[ChannelId] = []
    for n, edge in enumerate(plan_edges(plan)):
        pu = plan.task(edge.upstream_task).parallelism
        pv = plan.task(edge.downstream_task).parallelism
        if edge.partitioning is Partitioning.FORWARD:
            ids.extend(ChannelId(n, i, i) for i in range(pu))
        else:
            ids.extend(ChannelId(n, i, j) for i in range(pu) for j in range(pv))
    return ids


@dataclass(frozen=True)
class ExecutionSettings:
    """Knobs of one run that executors share."""

    batch_size: int = 1024
    channel_capacity: int = 8
    checkpoint: CoordinatorSettings = CoordinatorSettings()
    overwrite_output: bool = False
    incremental_checkpoints: bool | None = None
    """Write only the keyed entries changed since the previous checkpoint (``--incremental-checkpoints``);
    None: the state backend's default (:meth:`StateBackendConfig.incremental`)."""
    max_deltas: int = 64
    """Deltas a key-group segment's chain may hold before it is compacted (``--max-deltas``)."""
    ray_address: str | None = None
    """The Ray cluster the ray executor joins (``None``: ``RAY_ADDRESS``, else a local Ray)."""
    state_backend: StateBackendConfig = StateBackendConfig()


@dataclass(frozen=True)
class SubtaskSettings:
    """What every subtask of an attempt shares."""

    batch_size: int
    attempt_id: str
    restored_checkpoint_id: int | None
    overwrite_output: bool
    incremental_checkpoints: bool | None = None
    max_deltas: int = 64
    state_backend: StateBackendConfig = StateBackendConfig()


@dataclass(frozen=True)
class Attempt:
    """Everything one attempt of a run starts from: the runner builds it, an executor runs it."""

    plan: PhysicalPlan
    store: CheckpointStore
    settings: ExecutionSettings
    attempt_id: str
    restored_checkpoint_id: int | None
    restored: dict[tuple[str, int], RestoredState]
    first_checkpoint_id: int
    completed: dict[int, CheckpointMetadata]
    params: dict[str, str]
    stop: StopRequest = field(default_factory=StopRequest)
    """Set by a first SIGINT/SIGTERM: the executor stops the sources and ends at a stop checkpoint."""
    job_file: str | None = None
    """The file the job was built from (executors that rebuild the job elsewhere need it)."""
    parallelism: int = 1
    """The default parallelism the plan was built with (to rebuild the same plan)."""

    def subtask_settings(self) -> SubtaskSettings:
        """Return what every subtask of this attempt shares."""
        return SubtaskSettings(
            batch_size=self.settings.batch_size,
            attempt_id=self.attempt_id,
            restored_checkpoint_id=self.restored_checkpoint_id,
            overwrite_output=self.settings.overwrite_output,
            incremental_checkpoints=self.settings.incremental_checkpoints,
            max_deltas=self.settings.max_deltas,
            state_backend=self.settings.state_backend,
        )

    def coordinator(
        self,
        subtasks: list[tuple[int, int]],
        *,
        trigger_sources: Callable[[int, bool], None],
        notify_complete: Callable[[int], None],
        notify_abort: Callable[[int], None],
        complete: Completer = complete_now,
    ) -> CheckpointCoordinator:
        """Return this attempt's checkpoint coordinator, wired to the executor's callbacks.

        ``complete`` runs each checkpoint's completion I/O (see :class:`CheckpointCoordinator`).
        """
        return CheckpointCoordinator(
            store=self.store,
            job=JobDescription.of_plan(self.plan, self.params),
            subtasks=subtasks,
            settings=self.settings.checkpoint,
            first_checkpoint_id=self.first_checkpoint_id,
            completed=self.completed,
            trigger_sources=trigger_sources,
            notify_complete=notify_complete,
            notify_abort=notify_abort,
            complete=complete,
        )


def build_subtask(
    plan: PhysicalPlan,
    task: TaskSpec,
    index: int,
    channel: Callable[[ChannelId], ChannelEnd],
    snapshot_sink: SnapshotSink,
    settings: SubtaskSettings,
) -> Subtask:
    """Create the operators of one subtask and connect them to the channels ``channel`` returns."""
    edges = plan_edges(plan)
    edge_no = {id(e): n for n, e in enumerate(edges)}
    all_ids = channel_ids(plan)
    wired = [
        (channel(cid), edge.side)
        for edge in task.inputs
        for cid in all_ids
        if cid.edge == edge_no[id(edge)] and cid.dst == index
    ]
    inputs = [end for end, _ in wired]
    gates: list[OutputGate] = []
    tail = task.operators[-1]
    for edge in task.outputs:
        outs = [channel(c) for c in all_ids if c.edge == edge_no[id(edge)] and c.src == index]
        downstream = plan.task(edge.downstream_task).operators[0]
        if edge.partitioning is Partitioning.FORWARD:
            gates.append(ForwardGate(outs))
        elif edge.partitioning is Partitioning.REBALANCE:
            gates.append(RebalanceGate(outs, start=index))
        elif edge.partitioning is Partitioning.BROADCAST:
            gates.append(BroadcastGate(outs))
        else:
            gates.append(
                HashGate(
                    outs,
                    edge.key_fn,
                    max_parallelism=plan.max_parallelism,
                    operator_name=downstream.name,
                    uid=tail.uid,
                    subtask_index=index,
                )
            )
        gates[-1].tag = edge.tag
    created = [op.factory(index, task.parallelism) for op in task.operators]
    head_is_source = task.operators[0].kind is OperatorKind.SOURCE
    return Subtask(
        task=task,
        index=index,
        reader=created[0] if head_is_source else None,
        operators=created[1:] if head_is_source else created,
        inputs=inputs,
        input_sides=[side for _, side in wired],
        gates=gates,
        snapshot_sink=snapshot_sink,
        batch_size=settings.batch_size,
    )


def open_subtask(
    subtask: Subtask,
    plan: PhysicalPlan,
    restored: dict[tuple[str, int], RestoredState],
    settings: SubtaskSettings,
) -> None:
    """Open a subtask's operators with their contexts and restore their state."""
    task, index = subtask.task, subtask.index
    contexts = [
        SubtaskContext(
            job_name=plan.job_name,
            operator_name=op.name,
            uid=op.uid,
            subtask_index=index,
            parallelism=task.parallelism,
            max_parallelism=plan.max_parallelism,
            key_group_range=key_group_range_for_subtask(plan.max_parallelism, task.parallelism, index),
            attempt_id=settings.attempt_id,
            restored_checkpoint_id=settings.restored_checkpoint_id,
            overwrite_output=settings.overwrite_output,
            incremental_checkpoints=settings.incremental_checkpoints,
            state_backend=settings.state_backend,
        )
        for op in task.operators
    ]
    states = {op.uid: restored[op.uid, index] for op in task.operators if (op.uid, index) in restored}
    subtask.open(contexts, states)
