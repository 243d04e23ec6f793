"""The runtime context handed to each operator: where it runs and which attempt it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from onceflow.engine.faults import CRASH_POINTS
from onceflow.state_backends.config import StateBackendConfig
from onceflow.state_backends.key_groups import KeyGroupRange


@dataclass
class SubtaskContext:
    """Implements ``onceflow.operators.base.RuntimeContext`` for one operator of one subtask."""

    job_name: str
    operator_name: str
    uid: str
    subtask_index: int
    parallelism: int
    max_parallelism: int
    key_group_range: KeyGroupRange
    attempt_id: str
    restored_checkpoint_id: int | None
    overwrite_output: bool
    incremental_checkpoints: bool | None = None
    state_backend: StateBackendConfig = field(default_factory=StateBackendConfig)

    def crash_point(self, label: str) -> None:
        """Kill the process here when ``ONCEFLOW_CRASH_AT`` names ``label``."""
        CRASH_POINTS.hit(label)
