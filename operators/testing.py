"""Public testing helpers: a replayable source with failure sentinels, in-memory sinks, a fake clock.

Use them to prove a job exactly-once in-process::

    items = list(range(1000)) + [Crash()] + list(range(1000, 2000))
    sink = TestingSink()
    job.source(TestingSource(items, batch_size=10)) ... .sink(sink)
    run_job_for_test(job)            # onceflow.engine.testing; restarts after the crash
    assert sorted(sink.committed) == expected

Sentinels fire once per instance: after a restore the source replays from the
checkpointed offset, passes the same sentinel again and skips it. They live
in memory, so these helpers serve the local executor (one process) only.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

from onceflow.operators.base import (
    Capability,
    Operator,
    RestoredState,
    RuntimeContext,
    Sink,
    Source,
    SourceReader,
    TwoPhaseCommitWriter,
)
from onceflow.state_backends.errors import ErrorDomain, OnceflowError

__all__ = [
    "Crash",
    "EndOfRun",
    "FailingSink",
    "FakeClock",
    "InjectedFailure",
    "Pause",
    "RunInterrupted",
    "TestingSink",
    "TestingSource",
]


class InjectedFailure(RuntimeError):
    """Raised by a ``Crash`` sentinel or a ``FailingSink``: a deliberate, retryable failure."""


class RunInterrupted(OnceflowError):
    """Raised by an ``EndOfRun`` sentinel: stop this run as if the process had stopped.

    Not retried; the next run resumes from the latest completed checkpoint.
    """

    domain = ErrorDomain.USER


_MARKERS: str | None = None


def _marker_dir() -> str:
    """Return a folder for sentinel and failure markers that worker processes inherit."""
    global _MARKERS
    if _MARKERS is None:
        _MARKERS = tempfile.mkdtemp(prefix="onceflow-testing-")
    return _MARKERS


class _Sentinel:
    """A marker in the item list; whether it fired is a file, so worker processes agree."""

    def __init__(self) -> None:
        self._marker = os.path.join(_marker_dir(), uuid.uuid4().hex)

    @property
    def fired(self) -> bool:
        """Whether the sentinel already fired (in any process of this test)."""
        return os.path.exists(self._marker)

    def fire(self) -> None:
        """Record that the sentinel fired."""
        with open(self._marker, "x"):
            pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fired={self.fired})"


class Crash(_Sentinel):
    """Raise ``InjectedFailure`` the first time the source reaches it; skipped afterwards."""


class EndOfRun(_Sentinel):
    """Stop the run with ``RunInterrupted`` the first time it is reached; skipped afterwards."""


class Pause(_Sentinel):
    """Sleep ``seconds`` the first time it is reached (to let checkpoints happen)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds


class TestingSource(Source):
    """Emit ``items`` in order, ``batch_size`` at a time, replayable by index.

    ``partitions`` splits the items round-robin into that many splits (item i
    goes to split ``i % partitions``); split s is read by subtask
    ``s % parallelism``. The offset of each split is the index of its next
    item, so the source resumes exactly after a restore, also at a different
    parallelism.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, items: Sequence[Any], *, batch_size: int = 1, partitions: int = 1) -> None:
        if batch_size < 1 or partitions < 1:
            msg = f"batch_size and partitions must be >= 1, got {batch_size}, {partitions}"
            raise ValueError(msg)
        self.items = list(items)
        self.batch_size = batch_size
        self.partitions = partitions

    def split(self, index: int) -> list[Any]:
        """Return the items of one split."""
        return self.items[index :: self.partitions]

    def create_reader(self, subtask_index: int, parallelism: int) -> TestingSourceReader:
        """Return the reader of the splits this subtask owns."""
        return TestingSourceReader(self, subtask_index, parallelism)


class TestingSourceReader(SourceReader):
    """Reads the splits of one subtask, one split after the other."""

    __test__ = False

    def __init__(self, source: TestingSource, subtask_index: int, parallelism: int) -> None:
        self.source = source
        self.splits = [s for s in range(source.partitions) if s % parallelism == subtask_index]
        self.offsets = {s: 0 for s in self.splits}
        self._items = {s: source.split(s) for s in self.splits}

    def restore_state(self, restored: RestoredState) -> None:
        """Take the offsets of the owned splits from every old subtask's state."""
        for _, state in restored.operator_states:
            for split, offset in (state or {}).items():
                if split in self.offsets:
                    self.offsets[split] = offset

    def poll_batch(self, max_records: int) -> list | None:
        """Return up to ``batch_size`` items, handling a sentinel at the head."""
        for split in self.splits:
            items = self._items[split]
            start = self.offsets[split]
            if start >= len(items):
                continue
            head = items[start]
            if isinstance(head, _Sentinel):
                self.offsets[split] = start + 1
                if not head.fired:
                    head.fire()
                    if isinstance(head, Crash):
                        msg = f"injected crash at item {start} of split {split}"
                        raise InjectedFailure(msg)
                    if isinstance(head, EndOfRun):
                        msg = f"end of run at item {start} of split {split}"
                        raise RunInterrupted(msg)
                    if isinstance(head, Pause):
                        time.sleep(head.seconds)
                return []
            end = start
            stop = min(len(items), start + self.source.batch_size)
            while end < stop and not isinstance(items[end], _Sentinel):
                end += 1
            self.offsets[split] = end
            return items[start:end]
        return None

    def snapshot_state(self, checkpoint_id: int) -> dict[int, int]:
        """Return the next index of every owned split."""
        return dict(self.offsets)


class TestingSink(Sink):
    """An exactly-once sink into a folder of pickles that keeps pre-committed apart from committed.

    ``committed`` lists every committed record (ordered by checkpoint, then
    transaction); ``pending`` maps a transaction id to records pre-committed but
    not (yet) committed. A commit is a rename of the transaction's file, so it is
    idempotent, atomic, and visible to the test from worker processes too.
    """

    __test__ = False

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="onceflow-testsink-")
        for sub in ("pending", "committed"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)

    def create_writer(self, subtask_index: int, parallelism: int) -> Operator:
        """Return a transactional writer into this sink's folder."""
        return _TestingSinkWriter(self)

    def _files(self, sub: str) -> list[str]:
        folder = os.path.join(self.directory, sub)
        return sorted(n for n in os.listdir(folder) if n.endswith(".pkl"))

    def _load(self, sub: str, name: str) -> list[Any]:
        with open(os.path.join(self.directory, sub, name), "rb") as f:
            return pickle.load(f)

    @property
    def committed(self) -> list[Any]:
        """Every committed record, by checkpoint id, then transaction."""
        return [r for name in self._files("committed") for r in self._load("committed", name)]

    @property
    def pending(self) -> dict[str, list[Any]]:
        """Pre-committed transactions that are not committed."""
        return {name[:-4]: self._load("pending", name) for name in self._files("pending")}

    @property
    def commits(self) -> int:
        """Number of committed transactions."""
        return len(self._files("committed"))

    def _before(self, phase: str, checkpoint_id: int) -> None:
        """Run before ``pre_commit`` and ``commit``; ``FailingSink`` injects failures here."""


class _TestingSinkWriter(TwoPhaseCommitWriter):
    capabilities = Capability.TWO_PHASE_COMMIT

    def __init__(self, sink: TestingSink) -> None:
        super().__init__()
        self.sink = sink
        self.buffer: list[Any] = []

    def open(self, ctx: RuntimeContext) -> None:
        super().open(ctx)
        self.buffer = []
        if ctx.restored_checkpoint_id is None and ctx.subtask_index == 0:
            # Nothing to restore (as the real sinks do): what an earlier attempt pre-committed
            # for a checkpoint that never completed is dropped, not left pending.
            self.abort_leftovers([])

    def write(self, records: list) -> None:
        self.buffer.extend(records)

    def _path(self, sub: str, txn: str) -> str:
        return os.path.join(self.sink.directory, sub, txn + ".pkl")

    def pre_commit(self, checkpoint_id: int) -> Any:
        self.sink._before("pre_commit", checkpoint_id)  # noqa: SLF001 - sink and writer are one unit
        if not self.buffer:
            return None
        uid = "".join(c if c.isalnum() else "_" for c in self.ctx.uid)
        txn = f"{checkpoint_id:010d}-{uid}-{self.ctx.subtask_index:05d}-{self.ctx.attempt_id}"
        tmp = self._path("pending", txn) + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.buffer, f, protocol=5)
        os.replace(tmp, self._path("pending", txn))
        self.buffer = []
        return {"txn": txn, "checkpoint_id": checkpoint_id}

    def commit(self, committable: Any) -> None:
        self.sink._before("commit", committable["checkpoint_id"])  # noqa: SLF001
        txn = committable["txn"]
        if os.path.exists(self._path("committed", txn)):
            return
        os.replace(self._path("pending", txn), self._path("committed", txn))

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        wanted = {c["txn"] for c in keep if c}
        for name in self.sink._files("pending"):  # noqa: SLF001
            if name[:-4] not in wanted and not name.endswith(f"-{self.ctx.attempt_id}.pkl"):
                os.remove(self._path("pending", name[:-4]))


class FailingSink(TestingSink):
    """A ``TestingSink`` that raises ``InjectedFailure`` in ``fail_on`` at ``at_checkpoint``.

    ``fail_on`` is ``"pre_commit"`` (the checkpoint cannot complete) or
    ``"commit"`` (the checkpoint completed but its commit failed: the restore
    must commit it). It fails ``times`` times, then behaves.
    """

    def __init__(self, *, fail_on: str, at_checkpoint: int, times: int = 1) -> None:
        super().__init__()
        if fail_on not in ("pre_commit", "commit"):
            msg = f"fail_on must be 'pre_commit' or 'commit', got {fail_on!r}"
            raise ValueError(msg)
        self.fail_on = fail_on
        self.at_checkpoint = at_checkpoint
        self.times = times

    @property
    def failures(self) -> int:
        """How many failures were injected so far (in any process)."""
        return len([n for n in os.listdir(self.directory) if n.startswith("failure-")])

    def _before(self, phase: str, checkpoint_id: int) -> None:
        if phase == self.fail_on and checkpoint_id >= self.at_checkpoint and self.failures < self.times:
            with open(os.path.join(self.directory, f"failure-{self.failures}"), "x"):
                pass
            msg = f"injected failure in {phase} of checkpoint {checkpoint_id}"
            raise InjectedFailure(msg)


class FakeClock:
    """A monotonic clock that moves only when told to; pass ``clock.now`` where a clock is taken."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start

    def now(self) -> float:
        """Return the current fake time."""
        return self.time

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.time += seconds
