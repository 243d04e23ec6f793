"""Named crash points for fault-injection tests: ``ONCEFLOW_CRASH_AT=label:n``.

When a run passes ``label`` for the n-th time, the process that passes it
kills itself with SIGKILL, exactly as ``kill -9`` would, so tests can crash at
precise moments of the checkpoint protocol. Passes are counted across the
runner and the worker processes it forks (process executor), so ``label:n``
means the same under both executors, and a crash point fires once per run: a
worker it killed is not killed again in every restarted attempt. Several
settings may be given, comma-separated. Unset, every check is one dict lookup
on a path that runs per checkpoint, never per record.

Labels used by the engine and the shipped connectors:
``before_snapshot``, ``after_task_snapshots_before_metadata``,
``after_metadata_before_notify``, ``mid_commit``,
``after_pending_rename_before_commit_rename``, ``during_restore``,
``during_commit_on_restore`` (before each committable a restored sink
re-commits), ``end_of_input_before_final_checkpoint``, ``during_graceful_stop``
(the sources stopped, the stop checkpoint not yet triggered), ``mid_checkpoint_delete``
(a checkpoint's ``_metadata`` is gone, its files not yet: retention, abort or
``--fresh`` interrupted), ``mid_shared_write`` (incremental checkpoints: after
a subtask's delta or compacted base files are written, before the ack) and
``mid_shared_delete`` (before each shared file that no retained checkpoint
lists is deleted). The PostgreSQL sink adds ``after_prepare_before_ack``
and ``after_commit_prepared_before_bookkeeping``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
import threading

ENV_VAR = "ONCEFLOW_CRASH_AT"


class CrashPoints:
    """Counts passes per label across a run and kills the process at the configured one."""

    def __init__(self, spec: str | None = None) -> None:
        self.targets: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        """The run's count of each label as this process last saw it."""
        for part in (spec if spec is not None else os.environ.get(ENV_VAR, "")).split(","):
            part = part.strip()
            if not part:
                continue
            label, _, n = part.partition(":")
            self.targets[label] = int(n or 1)
        self._offsets = {label: 8 * i for i, label in enumerate(self.targets)}
        if self.targets:
            # One 8-byte counter per label in an unlinked file: forked workers share it.
            self._file = tempfile.TemporaryFile()
            self._file.truncate(8 * len(self.targets))
            self._lock = threading.Lock()
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork

    def _count(self, label: str) -> int:
        fd, offset = self._file.fileno(), self._offsets[label]
        # The record lock orders processes (the kernel drops it if its holder is killed);
        # it does not order threads of one process, the thread lock does.
        with self._lock:
            fcntl.lockf(fd, fcntl.LOCK_EX, 8, offset)
            try:
                count = int.from_bytes(os.pread(fd, 8, offset), "little") + 1
                os.pwrite(fd, count.to_bytes(8, "little"), offset)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 8, offset)
        return count

    def hit(self, label: str) -> None:
        """Pass ``label``; die here if this is the configured pass."""
        if label not in self.targets:
            return
        count = self._count(label)
        self.counts[label] = count
        if count == self.targets[label]:
            sys.stderr.write(f"onceflow: crash point {label}:{count} reached, killing process\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


CRASH_POINTS = CrashPoints()
"""The process-wide crash points, read once from the environment."""
