"""Named crash points for fault-injection tests: ``ONCEFLOW_CRASH_AT=label:n``.

When the process passes ``label`` for the n-th time it kills itself with
SIGKILL, exactly as ``kill -9`` would, so tests can crash at precise moments
of the checkpoint protocol. Several settings may be given, comma-separated.
Unset, every check is one dict lookup on a path that runs per checkpoint,
never per record.

Labels used by the engine and the shipped connectors:
``before_snapshot``, ``after_task_snapshots_before_metadata``,
``after_metadata_before_notify``, ``mid_commit``,
``after_pending_rename_before_commit_rename``, ``during_restore``,
``during_commit_on_restore`` (before each committable a restored sink
re-commits), ``end_of_input_before_final_checkpoint``, ``mid_checkpoint_delete``
(a checkpoint's ``_metadata`` is gone, its files not yet: retention, abort or
``--fresh`` interrupted).
"""

from __future__ import annotations

import os
import signal
import sys

ENV_VAR = "ONCEFLOW_CRASH_AT"


class CrashPoints:
    """Counts passes per label and kills the process at the configured one."""

    def __init__(self, spec: str | None = None) -> None:
        self.targets: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        for part in (spec if spec is not None else os.environ.get(ENV_VAR, "")).split(","):
            part = part.strip()
            if not part:
                continue
            label, _, n = part.partition(":")
            self.targets[label] = int(n or 1)

    def hit(self, label: str) -> None:
        """Pass ``label``; die here if this is the configured pass."""
        if label not in self.targets:
            return
        count = self.counts.get(label, 0) + 1
        self.counts[label] = count
        if count == self.targets[label]:
            sys.stderr.write(f"onceflow: crash point {label}:{count} reached, killing process\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


CRASH_POINTS = CrashPoints()
"""The process-wide crash points, read once from the environment."""
