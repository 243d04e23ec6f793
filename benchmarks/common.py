"""What the benchmark jobs and their baselines share: user functions, data, sources and sinks.

The engine jobs and the plain-Python baselines call the *same* user functions,
so a ratio measures the engine's overhead and nothing else.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from onceflow.operators.base import RestoredState, Sink, Source, SourceReader, TwoPhaseCommitWriter

VOCABULARY = 10_000
SEED = 20240603

# -- user functions ------------------------------------------------------------


def to_pair(word: str) -> tuple[str, int]:
    """Map: a word to ``(word, 1)``."""
    return (word, 1)


def key_of(pair: tuple[str, int]) -> str:
    """key_by: the word."""
    return pair[0]


def add(a: tuple[str, int], b: tuple[str, int]) -> tuple[str, int]:
    """Running count (reduce)."""
    return (a[0], a[1] + b[1])


def is_short(pair: tuple[str, int]) -> bool:
    """Filter: keep words of at most 4 characters (about 10% of the vocabulary)."""
    return len(pair[0]) <= 4


def spin(i: int) -> tuple[int, int]:
    """A few microseconds of pure-Python work per record (the scaling job's map)."""
    h = i
    for _ in range(40):
        h = (h * 1103515245 + 12345) & 0x7FFFFFFF
    return (h % 1000, 1)


def add_counts(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Running count for the scaling job."""
    return (a[0], a[1] + b[1])


def int_key(pair: tuple[int, int]) -> int:
    """key_by for the scaling job."""
    return pair[0]


# -- data ----------------------------------------------------------------------


def vocabulary(size: int = VOCABULARY) -> list[str]:
    """``size`` distinct words: ``w0`` ... ``w9999``."""
    return [f"w{i}" for i in range(size)]


def make_words(n: int, vocab_size: int = VOCABULARY, seed: int = SEED) -> list[str]:
    """``n`` words drawn uniformly (seeded) from the vocabulary; the strings are shared."""
    return random.Random(seed).choices(vocabulary(vocab_size), k=n)


def write_words_file(path: str, words: Sequence[str]) -> None:
    """One word per line, for the ``FileSource`` variant."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(words))
        out.write("\n")


# -- a source that does not dominate: slices of a pre-built sequence -------------


class SliceSource(Source):
    """Emit slices of a pre-built sequence (a list, or an Arrow table's record batches).

    Like ``TestingSource`` without the sentinel checks: per batch one slice,
    per record nothing. ``partitions`` splits ``items`` into that many
    contiguous ranges read by subtask ``split % parallelism``; offsets are
    indices, so it resumes exactly after a restore.
    """

    def __init__(self, items: Any, *, batch_size: int = 1024, partitions: int = 1) -> None:
        self.items = items
        self.batch_size = batch_size
        self.partitions = partitions

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        """Return the reader of this subtask's ranges."""
        return _SliceReader(self, subtask_index, parallelism)


class _SliceReader(SourceReader):
    def __init__(self, source: SliceSource, subtask_index: int, parallelism: int) -> None:
        self.source = source
        n = len(source.items)
        p = source.partitions
        bounds = [n * s // p for s in range(p + 1)]
        self.ranges = {s: (bounds[s], bounds[s + 1]) for s in range(p) if s % parallelism == subtask_index}
        self.offsets = {s: lo for s, (lo, _) in self.ranges.items()}

    def restore_state(self, restored: RestoredState) -> None:
        for _, state in restored.operator_states:
            for split, offset in (state or {}).items():
                if split in self.offsets:
                    self.offsets[split] = offset

    def poll_batch(self, max_records: int) -> Any:
        items = self.source.items
        size = self.source.batch_size
        for split, (_, hi) in self.ranges.items():
            start = self.offsets[split]
            if start >= hi:
                continue
            end = min(hi, start + size)
            self.offsets[split] = end
            return items[start:end]
        return None

    def snapshot_state(self, checkpoint_id: int) -> dict[int, int]:
        return dict(self.offsets)


class RangeSource(Source):
    """Emit ``0 .. n-1`` without holding them: for the peak-RSS case, where the input must not count."""

    def __init__(self, n: int, *, batch_size: int = 1024) -> None:
        self.n = n
        self.batch_size = batch_size

    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader:
        """Return the reader of the numbers ``i`` with ``i % parallelism == subtask_index``."""
        return _RangeReader(self, subtask_index, parallelism)


class _RangeReader(SourceReader):
    def __init__(self, source: RangeSource, subtask_index: int, parallelism: int) -> None:
        self.source = source
        self.index = subtask_index
        self.step = parallelism
        self.next = subtask_index

    def restore_state(self, restored: RestoredState) -> None:
        # Resumes at the same parallelism only (enough for benchmarks).
        for index, state in restored.operator_states:
            if index == self.index and state is not None:
                self.next = state

    def poll_batch(self, max_records: int) -> list | None:
        start = self.next
        if start >= self.source.n:
            return None
        stop = min(self.source.n, start + self.source.batch_size * self.step)
        self.next = stop + ((start - stop) % self.step)
        return list(range(start, stop, self.step))

    def snapshot_state(self, checkpoint_id: int) -> int:
        return self.next


# -- sinks ---------------------------------------------------------------------


class CountingSink(Sink):
    """A transactional sink that counts records instead of storing them.

    Per batch: ``len()`` into the open transaction; at a barrier the count is
    pre-committed, and committed when the checkpoint completes, through the
    same ``TwoPhaseCommitWriter`` bookkeeping as ``FileSink``. It does no I/O,
    so throughput figures measure the engine, not a disk. ``arrow=True``
    counts the rows of Arrow batches carried as records.
    """

    def __init__(self, *, arrow: bool = False, delay: float = 0.0) -> None:
        self.arrow = arrow
        self.delay = delay
        self.committed = 0
        self.commits = 0

    def create_writer(self, subtask_index: int, parallelism: int) -> TwoPhaseCommitWriter:
        """Return a counting two-phase-commit writer."""
        return _CountingWriter(self)


class _CountingWriter(TwoPhaseCommitWriter):
    def __init__(self, sink: CountingSink) -> None:
        super().__init__()
        self.sink = sink
        self.open_count = 0

    def write(self, records: Any) -> None:
        if self.sink.arrow:
            self.open_count += sum(getattr(r, "num_rows", 1) for r in records)
        else:
            self.open_count += len(records)
        if self.sink.delay:
            import time

            time.sleep(self.sink.delay)

    def pre_commit(self, checkpoint_id: int) -> Any:
        if not self.open_count:
            return None
        count, self.open_count = self.open_count, 0
        return {"checkpoint_id": checkpoint_id, "count": count}

    def commit(self, committable: Any) -> None:
        self.sink.committed += committable["count"]
        self.sink.commits += 1
