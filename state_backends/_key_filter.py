"""Which database keys a disk state may hold: a Bloom filter, so a lookup of a new key skips LMDB.

A keyed job asks its state for every key of a batch, and many of those keys
were never seen (every key is new once; in a job that creates keys as it goes,
most lookups are). Looking such a key up in LMDB walks the B-tree down to a
leaf page, faulting the path in, only to find nothing: about as costly as a
lookup that finds a value. The filter answers "certainly absent" for all but
about 0.5% of them from memory, 2 bytes per key.

Design: a blocked Bloom filter. A key's 64-bit hash picks one 64-bit word of
the filter and 4 bits within it (16 bits per key: about 0.5% false
positives), so a test is one memory access and the whole batch is tested
with a few numpy operations. The number of keys is not known in advance, so
the filter is a list of stages, each twice the capacity of the one before: a
key is added to the newest stage, and is possibly present if any stage says
so. Keys are never removed (a deleted key stays "possibly present": one
lookup that finds nothing, never a wrong answer).

The hash is Python's ``hash`` of the database key (bytes; computed once per
bytes object and cached in it). It is randomized per process, which is fine:
the filter lives only in the process that owns the database and is rebuilt
with it (a restore writes every restored key again; a rescaled subtask's
restore writes only its own key groups, so the filter holds exactly those).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BITS_PER_KEY = 16
_PROBES = 4
"""Bits set per key in its word (4 of 64: with 16 bits per key, about 0.5% false positives)."""
_SHIFTS = tuple(np.uint64(64 - 6 * (i + 1)) for i in range(_PROBES))
"""Where each probe's 6-bit position is taken from: the hash's high bits (the low ones pick the word)."""
_LOW6 = np.uint64(63)
_ONE = np.uint64(1)


class _Stage:
    __slots__ = ("words", "size", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        size = max(1, capacity * _BITS_PER_KEY // 64)
        self.words = np.zeros(size, dtype=np.uint64)
        self.size = np.uint64(size)
        self.capacity = capacity
        self.count = 0

    def locate(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = (hashes % self.size).astype(np.intp)
        mask = np.zeros(len(hashes), dtype=np.uint64)
        for shift in _SHIFTS:
            mask |= _ONE << ((hashes >> shift) & _LOW6)
        return index, mask

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        index, mask = self.locate(hashes)
        return (self.words[index] & mask) == mask

    def add(self, hashes: np.ndarray) -> None:
        index, mask = self.locate(hashes)
        words = self.words
        words[index] |= mask
        # Two keys of one call in the same word: fancy-index assignment kept only one of them.
        lost = np.flatnonzero((words[index] & mask) != mask)
        for i in lost.tolist():
            words[index[i]] |= mask[i]
        self.count += len(hashes)


class KeyFilter:
    """A growing Bloom filter of database keys: :meth:`may_contain` is never False for a key added."""

    __slots__ = ("_stages", "_first_capacity")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._first_capacity = max(1, capacity)
        self._stages = [_Stage(self._first_capacity)]

    def clear(self, capacity: int | None = None) -> None:
        """Forget every key; size the first stage for ``capacity`` keys (default: as at creation)."""
        self._stages = [_Stage(max(1, capacity or self._first_capacity))]

    @staticmethod
    def _hashes(db_keys: Sequence[bytes]) -> np.ndarray:
        return np.fromiter(map(hash, db_keys), dtype=np.int64, count=len(db_keys)).view(np.uint64)

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        stages = self._stages
        found = stages[-1].contains(hashes)
        for stage in stages[:-1]:
            found |= stage.contains(hashes)
        return found

    def may_contain(self, db_keys: Sequence[bytes]) -> list[bytes]:
        """Return the keys of ``db_keys`` that may have been added (all that were, about 0.5% of others)."""
        if not db_keys:
            return []
        found = self._contains(self._hashes(db_keys))
        return [db_keys[i] for i in np.flatnonzero(found).tolist()]

    def add(self, db_keys: Sequence[bytes]) -> None:
        """Remember ``db_keys`` (keys already present count once towards a stage's capacity)."""
        if not db_keys:
            return
        hashes = self._hashes(db_keys)
        new = hashes[~self._contains(hashes)]
        if not len(new):
            return
        stage = self._stages[-1]
        if stage.count + len(new) > stage.capacity:
            stage = _Stage(max(2 * stage.capacity, len(new)))
            self._stages.append(stage)
        stage.add(new)

    @property
    def nbytes(self) -> int:
        """Memory held by the filter's bits."""
        return sum(stage.words.nbytes for stage in self._stages)

    @property
    def stages(self) -> int:
        """How many stages the filter has grown to."""
        return len(self._stages)


__all__ = ["KeyFilter"]
