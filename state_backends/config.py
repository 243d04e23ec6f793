"""Which backend holds a run's keyed state, and how a subtask's state is created from it."""

from __future__ import annotations

from dataclasses import dataclass

from onceflow.state_backends.disk import DiskKeyedState, local_state_directory
from onceflow.state_backends.heap import HeapKeyedState

STATE_BACKENDS = ("heap", "disk")


@dataclass(frozen=True)
class StateBackendConfig:
    """The run's choice of keyed-state backend (``--state-backend``), shared by every subtask.

    ``heap`` keeps state in dicts (fastest, bounded by memory); ``disk`` keeps it
    in a local LMDB database per subtask under ``directory`` (the system temp
    directory by default) with at most ``cache_entries`` keys per state on the
    Python heap. Both write the same checkpoint files, so a checkpoint of one
    restores on the other.
    """

    kind: str = "heap"
    directory: str | None = None
    cache_entries: int = 100_000

    def __post_init__(self) -> None:
        if self.kind not in STATE_BACKENDS:
            msg = f"state backend {self.kind!r} is unknown; choose one of {', '.join(STATE_BACKENDS)}"
            raise ValueError(msg)
        if self.cache_entries < 1:
            msg = f"cache_entries must be at least 1, got {self.cache_entries!r}"
            raise ValueError(msg)

    def incremental(self, requested: bool | None) -> bool:
        """Whether checkpoints of this backend's keyed state are incremental: ``requested``, or the default.

        The default (``requested`` None, no ``--[no-]incremental-checkpoints``)
        is full checkpoints on the heap and incremental ones on disk: a full
        checkpoint of a disk state streams the whole database, which is what
        the disk backend is for avoiding, while a small heap state is
        cheapest to restore from one file.
        """
        if requested is None:
            return self.kind == "disk"
        return requested

    def create(
        self, *, job_name: str, uid: str, subtask_index: int, max_parallelism: int
    ) -> HeapKeyedState | DiskKeyedState:
        """Create the keyed state of one operator subtask (a fresh local database for ``disk``)."""
        if self.kind == "heap":
            return HeapKeyedState()
        directory = local_state_directory(self.directory, f"{job_name}-{uid}-{subtask_index}")
        state = DiskKeyedState(directory, max_parallelism=max_parallelism, cache_entries=self.cache_entries)
        state.operator_label = f"operator uid {uid!r} subtask {subtask_index}"
        return state


__all__ = ["STATE_BACKENDS", "StateBackendConfig"]
