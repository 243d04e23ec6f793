"""Keyed state for onceflow: key groups, the heap and disk backends and Arrow state files.

The lowest layer: it imports nothing from ``operators`` or ``engine``. It decides
where a key lives and how state is stored; when to snapshot and which files make
up a checkpoint is ``engine``'s job.
"""

from __future__ import annotations

from onceflow.state_backends.arrow_snapshot import StateFileHandle, read_state_file, write_state_file
from onceflow.state_backends.config import STATE_BACKENDS, StateBackendConfig
from onceflow.state_backends.disk import DiskKeyedState
from onceflow.state_backends.errors import (
    CorruptStateError,
    ErrorDomain,
    IncompatibleStateError,
    KeyEncodingError,
    OnceflowError,
)
from onceflow.state_backends.heap import HeapKeyedState
from onceflow.state_backends.key_groups import (
    DEFAULT_MAX_PARALLELISM,
    HASH_FUNCTION_ID,
    KeyGroupAssigner,
    KeyGroupRange,
    decode_key,
    encode_key,
    key_group_for,
    key_group_range_for_subtask,
    stable_hash,
    subtask_for_key_group,
)

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "HASH_FUNCTION_ID",
    "STATE_BACKENDS",
    "CorruptStateError",
    "DiskKeyedState",
    "ErrorDomain",
    "HeapKeyedState",
    "IncompatibleStateError",
    "KeyEncodingError",
    "KeyGroupAssigner",
    "KeyGroupRange",
    "OnceflowError",
    "StateBackendConfig",
    "StateFileHandle",
    "decode_key",
    "encode_key",
    "key_group_for",
    "key_group_range_for_subtask",
    "read_state_file",
    "stable_hash",
    "subtask_for_key_group",
    "write_state_file",
]
