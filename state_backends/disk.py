"""Keep one subtask's keyed state in an LMDB database on local disk, with a bounded hot cache.

Why LMDB: measured against RocksDB (``rocksdict``) on this workload (random
read-modify-write of small pickled values from Python, batches of 1024 keys),
LMDB did 2-5x the reads and read-modify-writes per second at equal writes
(``benchmarks/results/state_backends.md``); its reads are memory-mapped
B-tree lookups with no per-key allocation in the store, and a read transaction
is a consistent MVCC view that a background writer can stream while
processing goes on.

The local database is a cache of the checkpoint, never the checkpoint: it
lives in a fresh directory per operator subtask and attempt, is rebuilt from
the checkpoint's Arrow files on restore, and is deleted on close (a directory
left behind by a killed process is removed by the next subtask that starts on
the machine).

Layout: one entry per ``(state name, key)``. The database key is
``key_group (2 bytes, big-endian) | state id (2 bytes) | encode_key(key)``, so a
cursor walks the entries sorted by key group, which is the order of a state
file; the value is the pickled state value. A snapshot therefore streams the
database into the Arrow state file without decoding a single key or value.

Memory: what lives on the Python heap is bounded by ``cache_entries`` per
state (the hot keys and the changes not yet written). LMDB reads through a
memory map of its file; the pages lookups and snapshots touched are given back
once they pass a budget (:class:`_MappedPages`), so the database's size does
not show up in the process's memory: its data stays in the OS page cache.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import os
import pickle
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from onceflow.state_backends import _change_runs
from onceflow.state_backends._key_filter import KeyFilter
from onceflow.state_backends.errors import StateSerializationError
from onceflow.state_backends.heap import BASE, DELTA, FULL, KeyedCapture
from onceflow.state_backends.key_groups import KeyGroupRange, encode_key

_PREFIX = struct.Struct(">HH")
_PREFIX_BYTES = _PREFIX.size
_PICKLE_PROTOCOL = 5
_MAP_SIZE = 1 << 40
"""Address space reserved for the database file (it grows on disk only as written)."""
_TXN_ENTRIES = 8192
"""Entries written per transaction (at most this many changed pages, 32 MiB, held at once)."""
_TRIM_KEYS = 1024
"""Keys looked up or written between two checks of the resident mapped pages. Linux maps up to
16 pages around every page a read faults in (fault-around, 64 KiB), so a random lookup in a large
database adds about 64 KiB to the resident set, not 4: checked every 8192 keys, the mapped pages
overshot a 256 MiB budget by 300 MiB at 10,000,000 keys; every 1024 keys, by at most 64 MiB."""
_MAPPED_BUDGET = 256 << 20
"""Resident file-backed memory (this process's mapped files, the database's pages most of it) past
which the database's pages are given back."""
_SMALL_DELTA = 16 << 20
"""Run files of a delta up to this size are read once, not once per segment."""
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MISSING = object()
_DIR_PREFIX = "onceflow-state-"
_MADV_DONTNEED = 4
"""Linux: drop the pages of a range from this process's page tables (a shared file mapping
keeps its data in the page cache; the next read faults the page back in)."""
_libc: Any = None


def _madvise_dontneed(start: int, length: int) -> None:
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.madvise(start, length, _MADV_DONTNEED)


class _MappedPages:
    """The memory map of one LMDB data file, so the pages this process touched can be given back.

    LMDB reads through a shared, read-only mapping of its file (writes go
    through ``pwrite``), and every page a lookup or a snapshot touched stays
    in the process's resident set. :meth:`release` drops them from the page
    tables (Linux ``madvise(MADV_DONTNEED)``); their data stays in the OS page
    cache, which the kernel shrinks as it needs, so the process's memory stays
    bounded by the cache and not by the database size. Elsewhere a no-op.

    Giving pages back has a price: the next lookups fault every page of their
    path in again. So :meth:`trim` releases only once the process's resident
    file pages pass :attr:`budget` (a small database then stays mapped).
    """

    budget = _MAPPED_BUDGET

    def __init__(self, data_file: str) -> None:
        self.data_file = data_file
        self.ranges: list[tuple[int, int]] | None = None
        self.touched = 0
        """Keys read since the last check (lookups call :meth:`trim` every so many)."""

    def trim(self) -> None:
        """Give back the mapping's resident pages if the process's resident file pages pass the budget."""
        self.touched = 0
        try:
            with open("/proc/self/statm", "rb") as statm:
                shared_pages = int(statm.read().split()[2])
        except (OSError, ValueError, IndexError):
            shared_pages = -1  # not Linux: release as before
        if shared_pages < 0 or shared_pages * _PAGE_SIZE > self.budget:
            self.release()

    def _find(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                if line.rstrip("\n").endswith(self.data_file):
                    start, end = line.split(None, 1)[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
        return ranges

    def release(self) -> None:
        """Give back the resident pages of the mapping (cheap for pages never touched)."""
        self.touched = 0
        if self.ranges is None:
            self.ranges = self._find()
        try:
            size = os.path.getsize(self.data_file)
        except OSError:
            return
        for start, end in self.ranges:
            length = min(end - start, size + (1 << 21))
            if length > 0:
                _madvise_dontneed(start, length)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_local_state(base: str | None) -> None:
    """Delete the local databases under ``base`` that belong to processes no longer running.

    A process killed with SIGKILL skips every cleanup; its databases are only
    a cache of a checkpoint, so whoever comes next removes them. Never raises.
    """
    root = os.path.join(base or tempfile.gettempdir(), "onceflow-state")
    with contextlib.suppress(OSError):
        for entry in os.listdir(root):
            pid = entry.removeprefix(_DIR_PREFIX).split("-", 1)[0]
            if entry.startswith(_DIR_PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def local_state_directory(base: str | None, label: str) -> str:
    """Create a fresh directory for one subtask's database under ``base`` (default: the temp dir).

    The name starts with the process id, so :func:`sweep_local_state` can tell
    the directories of processes that are gone; they are removed here first.
    """
    sweep_local_state(base)
    root = os.path.join(base or tempfile.gettempdir(), "onceflow-state")
    os.makedirs(root, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._" else "_" for c in label)[:80]
    return tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-{safe}-", dir=root)


class DiskTable:
    """One named state: a hot-key cache dict in front of the database.

    The per-record path never calls this class: an operator calls
    :meth:`prepare` once per batch, which loads every key of the batch that is
    in the database into :attr:`cache` and returns that plain dict, then reads
    and writes the dict directly, then calls :meth:`done` with the same keys.
    """

    __slots__ = ("name", "table_id", "cache", "dirty", "touched", "db_keys", "recent", "previous", "_state")

    def __init__(self, state: DiskKeyedState, name: str, table_id: int) -> None:
        self.name = name
        self.table_id = table_id
        self.cache: dict[Any, Any] = {}
        """Hot keys and their values; a key absent here may still be in the database."""
        self.dirty: set[Any] = set()
        """Keys whose cache entry (or absence: a delete) is not yet written to the database."""
        self.touched: set[Any] = set()
        """Incremental checkpoints: keys changed since the last capture (written out or not)."""
        self.db_keys: dict[Any, bytes] = {}
        """Database keys of the keys looked up or written since the cache was last emptied
        (a key is encoded once per stay in the cache, not at every read and write)."""
        self.recent: set[Any] = set()
        self.previous: set[Any] = set()
        """Keys of the latest batches (two generations of a quarter of the cache each): what an
        eviction keeps, so hot keys stay in memory."""
        self._state = state

    def prepare(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """Load the batch's keys that are on disk into the cache; return the cache."""
        cache = self.cache
        missing = set(keys).difference(cache)
        if missing and self.dirty:
            missing = missing.difference(self.dirty)  # deleted since the last write: not on disk
        if missing:
            self._state.load(self, missing)
        return cache

    def done(self, keys: Iterable[Any]) -> None:
        """Mark the batch's keys as changed; evict (writing out what leaves) when the cache is full."""
        self.dirty.update(keys)
        self.recent.update(keys)
        if self._state.incremental:
            self.touched.update(keys)
        limit = self._state.cache_entries
        if len(self.recent) > limit // 4:
            self.previous, self.recent = self.recent, set()
        if len(self.cache) > limit or len(self.dirty) > limit:
            self._state.evict(self)


class DiskKeyedState:
    """Named keyed states of one operator subtask in a local LMDB database.

    The same role as :class:`~onceflow.state_backends.heap.HeapKeyedState`;
    operators go through :meth:`prepare` / :meth:`done` per batch, so the loop
    over records touches a plain dict with either backend.
    """

    def __init__(self, directory: str, *, max_parallelism: int, cache_entries: int = 100_000) -> None:
        import lmdb  # noqa: PLC0415 - only the disk backend needs it

        if cache_entries < 1:
            msg = f"cache_entries must be at least 1, got {cache_entries!r}"
            raise ValueError(msg)
        self.directory = directory
        self.max_parallelism = max_parallelism
        self.cache_entries = cache_entries
        self.operator_label = "?"
        """Named in errors (set by the operator that owns this state)."""
        self.tables: dict[str, DiskTable] = {}
        self.incremental = False
        """Set by the operator in ``open`` when the run takes incremental checkpoints."""
        self._runs = _change_runs.ChangeRun(directory)
        """Incremental: the changes written out since the last capture, pickled, in a file (a delta
        needs no database read, and memory does not grow with the changes of an interval)."""
        self._base_needed = False
        """Only after :meth:`restore`: a fresh state starts empty, so its first delta is all of it."""
        self.stored = KeyFilter(4 * cache_entries)
        """The database keys ever written since the database was last emptied (a Bloom filter): a
        key it rules out is not looked up (a new key costs no database read)."""
        self._env = lmdb.open(
            directory, map_size=_MAP_SIZE, sync=False, metasync=False, readahead=False, max_readers=64
        )
        self.pages = _MappedPages(os.path.realpath(os.path.join(directory, "data.mdb")))
        self._lock = threading.Lock()
        self._open_snapshots = 0
        self._closing = False

    # -- per batch -----------------------------------------------------------------------

    def table(self, name: str) -> DiskTable:
        """Return the state named ``name``, creating it on first use."""
        table = self.tables.get(name)
        if table is None:
            if len(self.tables) >= 1 << 16:
                msg = f"{self.operator_label}: more than 65536 named states"
                raise ValueError(msg)
            table = self.tables[name] = DiskTable(self, name, len(self.tables))
        return table

    def prepare(self, name: str, keys: Iterable[Any]) -> dict[Any, Any]:
        """Return a dict holding every key of ``keys`` that has a value (see :meth:`DiskTable.prepare`)."""
        return self.table(name).prepare(keys)

    def done(self, name: str, keys: Iterable[Any]) -> None:
        """Record that the batch's keys may have changed (see :meth:`DiskTable.done`)."""
        self.table(name).done(keys)

    def _db_key(self, table_id: int, key: Any) -> bytes:
        encoded = encode_key(key)
        return _PREFIX.pack(zlib.crc32(encoded) % self.max_parallelism, table_id) + encoded

    def load(self, table: DiskTable, keys: Iterable[Any]) -> None:
        """Read ``keys`` from the database into ``table.cache`` (keys not stored stay absent)."""
        db_key = self._db_key
        tid = table.table_id
        known = table.db_keys
        by_db_key: dict[bytes, Any] = {}
        for key in keys:
            k = known[key] = db_key(tid, key)
            by_db_key[k] = key
        candidates = self.stored.may_contain(list(by_db_key))
        if not candidates:
            return
        with self._env.begin() as txn:
            found = txn.cursor().getmulti(sorted(candidates))
        cache = table.cache
        loads = pickle.loads
        for k, raw in found:
            cache[by_db_key[k]] = loads(raw)
        self.pages.touched += len(candidates)
        if self.pages.touched >= _TRIM_KEYS:
            self.pages.trim()

    def _pickle(self, table: DiskTable, key: Any, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            msg = (
                f"{self.operator_label}: state {table.name!r}, key {key!r}: a value of type "
                f"{type(value).__qualname__!r} cannot be pickled ({type(exc).__name__}: {exc}); "
                "keep plain data in state, not locks, open files, connections, generators or lambdas"
            )
            raise StateSerializationError(msg) from exc

    def write(self, table: DiskTable, keys: set[Any] | None = None) -> None:
        """Write the changed ``keys`` (default: every changed key) of ``table`` to the database."""
        if keys is None:
            keys, table.dirty = table.dirty, set()
        else:
            table.dirty.difference_update(keys)
        cache = table.cache
        db_key = self._db_key
        tid = table.table_id
        puts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        dumps = pickle.dumps
        known = table.db_keys
        record = self.incremental and not self._base_needed
        touched = table.touched
        run_keys: list[bytes] = []
        run_values: list[bytes | None] = []
        for key in keys:
            k = known.get(key)
            if k is None:
                k = db_key(tid, key)
            value = cache.get(key, _MISSING)
            if value is _MISSING:
                deletes.append(k)
                if record and key in touched:
                    run_keys.append(k)
                    run_values.append(None)
                continue
            try:
                raw = dumps(value, protocol=_PICKLE_PROTOCOL)
            except Exception:
                table.dirty.update(keys)
                self._pickle(table, key, value)  # raises, naming operator, state, key and type
                raise
            puts.append((k, raw))
            if record and key in touched:
                run_keys.append(k)
                run_values.append(raw)
        self._runs.append(run_keys, run_values)
        puts.sort(key=itemgetter(0))  # keys are distinct: by key alone, half the time of comparing pairs
        self.stored.add([k for k, _ in puts])
        # One transaction per slice: LMDB copies every page a transaction changes into
        # process memory until it commits, so a slice bounds that copy (random keys touch
        # about one page each) whatever the cache size.
        trim = self.pages.trim
        for start in range(0, max(len(puts), len(deletes)), _TXN_ENTRIES):
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor()
                for at in range(start, min(start + _TXN_ENTRIES, len(puts)), _TRIM_KEYS):
                    cursor.putmulti(puts[at : at + _TRIM_KEYS])
                    trim()  # the B-tree pages the puts read through the map
                for at in range(start, min(start + _TXN_ENTRIES, len(deletes)), _TRIM_KEYS):
                    for k in deletes[at : at + _TRIM_KEYS]:
                        txn.delete(k)
                    trim()  # and those the deletes read

    def evict(self, table: DiskTable) -> None:
        """Shrink a full cache to the keys of the latest batches, writing out the changes of those leaving.

        Write-back: a kept key that changed stays changed in the cache (written
        when it leaves, or at a full capture), so a hot key costs no database
        write per eviction.
        """
        keep = table.recent | table.previous
        cache = table.cache
        known = table.db_keys
        self.write(table, table.dirty - keep)
        if len(cache) > self.cache_entries:
            table.cache = {k: v for k in keep if (v := cache.get(k, _MISSING)) is not _MISSING}
            table.db_keys = {k: b for k in keep if (b := known.get(k)) is not None}

    # -- checkpoints ---------------------------------------------------------------------

    def capture(self) -> KeyedCapture:
        """Capture at a barrier: every entry (full or base) or the changed ones (delta), as a read view.

        Incremental: the first capture after a restore is a base (like the
        heap's); every other one is a delta: the changes written out since
        the previous capture, as pickled when written (a run file, see
        :mod:`~onceflow.state_backends._change_runs`), and the changes still
        only in the cache, pickled now (they stay in the cache, written out
        when they leave it). The synchronous cost is proportional to the
        changes in the cache, with no database write.
        """
        if not self.incremental:
            return KeyedCapture(FULL, self.snapshot())
        if self._base_needed:
            snapshot = self.snapshot()
            self._base_needed = False
            return KeyedCapture(BASE, snapshot)
        run = self._runs.seal()
        overlay: dict[bytes, bytes | None] = {}
        for table in self.tables.values():
            cache, known, tid = table.cache, table.db_keys, table.table_id
            for key in table.dirty & table.touched:
                k = known.get(key)
                if k is None:
                    k = self._db_key(tid, key)
                value = cache.get(key, _MISSING)
                overlay[k] = None if value is _MISSING else self._pickle(table, key, value)
            table.touched.clear()
        snapshot = self._open_view()
        snapshot.changes = [] if run is None else [run]
        snapshot.run_files = [] if run is None else [run]
        snapshot.overlay = overlay
        return KeyedCapture(DELTA, snapshot)

    def snapshot(self) -> DiskSnapshot:
        """Write every change out and open a consistent read view for the background writer.

        Synchronous cost: the changes since the last write (at most
        ``cache_entries`` per state). The view stays valid while processing
        writes on; the writer streams it into the state file and releases it.
        """
        for table in self.tables.values():
            if table.dirty:
                self.write(table)
            table.touched.clear()
        self._runs.discard()
        return self._open_view()

    def _open_view(self) -> DiskSnapshot:
        with self._lock:
            self._open_snapshots += 1
        names = [t.name for t in sorted(self.tables.values(), key=lambda t: t.table_id)]
        return DiskSnapshot(self, names, self._env.begin())

    def release_snapshot(self) -> None:
        """End one snapshot's view (a :class:`DiskSnapshot` calls this); finish a deferred close."""
        with self._lock:
            self._open_snapshots -= 1
            close_now = self._closing and self._open_snapshots == 0
        if close_now:
            self._destroy()

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Replace all state with ``tables`` (this subtask's keys of a checkpoint); next capture: a base."""
        self._runs.discard()
        self._base_needed = True
        for table in self.tables.values():
            table.cache.clear()
            table.dirty.clear()
            table.touched.clear()
            table.db_keys.clear()
        with self._env.begin(write=True) as txn:
            txn.drop(self._env.open_db(txn=txn), delete=False)
        self.stored.clear(max(4 * self.cache_entries, sum(len(t) for t in tables.values())))
        for name, restored in tables.items():
            table = self.table(name)
            entries = iter(restored.items())
            while chunk := dict(islice(entries, self.cache_entries)):
                table.cache.update(chunk)
                table.dirty.update(chunk)
                self.write(table)
                table.cache.clear()
                table.db_keys.clear()

    def keyed_tables(self) -> dict[str, dict[Any, Any]]:
        """Decode every state into dicts (tests and small states; a snapshot streams instead)."""
        snap = self.snapshot()
        try:
            return snap.to_dicts()
        finally:
            snap.release()

    def close(self) -> None:
        """Delete the database, once the last open snapshot is written; never raises."""
        with self._lock:
            self._closing = True
            close_now = self._open_snapshots == 0
        if close_now:
            self._destroy()

    def _destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._env.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __len__(self) -> int:
        for table in self.tables.values():
            if table.dirty:
                self.write(table)
        return int(self._env.stat()["entries"])


def _columns(
    raw_keys: Sequence[bytes] | pa.Array, raw_values: Sequence[bytes | None] | pa.Array
) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Split database keys into the state file's key group, state index and key columns, by Arrow kernels."""
    db_keys = raw_keys if isinstance(raw_keys, pa.Array) else pa.array(raw_keys, pa.large_binary())
    values = raw_values if isinstance(raw_values, pa.Array) else pa.array(raw_values, pa.large_binary())
    # Every database key is longer than its prefix, so both slices are well defined
    # (an explicit stop: pyarrow's binary_slice without one fails on long arrays).
    keys = pc.binary_slice(db_keys, _PREFIX_BYTES, 1 << 40)
    prefixes = pc.binary_slice(db_keys, 0, _PREFIX_BYTES)
    # Byte i of the prefix of entry j is at offsets[j] + i of the slices' data buffer.
    _, offsets_buffer, data_buffer = prefixes.buffers()
    count = len(prefixes)
    offsets = pa.Array.from_buffers(pa.int64(), count + 1, [None, offsets_buffer], 0, prefixes.offset)
    data = pa.Array.from_buffers(pa.uint8(), offsets[-1].as_py(), [None, data_buffer])
    starts = offsets.slice(0, count)

    def u16(at: int) -> pa.Array:
        high = pc.cast(data.take(pc.add(starts, at)), pa.int32())
        low = pc.cast(data.take(pc.add(starts, at + 1)), pa.int32())
        return pc.add(pc.multiply(high, 256), low)

    return u16(0), u16(2), keys, values


class DiskSnapshot:
    """A consistent read view of a :class:`DiskKeyedState`, streamed into state files.

    ``changes`` None: the view stands for every entry (a full or base
    capture). Otherwise it is a delta: ``changes`` are the layers of changes
    written out since the previous capture (run files, oldest first, see
    :mod:`~onceflow.state_backends._change_runs`; a null value is a
    tombstone), and ``overlay``, the changes that were still only in the
    cache, pickled at the capture (None: a delete), which win over them.
    ``batches`` yields the columns of a state file (sorted by key group) with
    values still pickled; call :meth:`release` when done (the owning state
    defers its close until then, and the run files are deleted then).
    """

    value_encoding = "pickle"

    def __init__(self, state: DiskKeyedState, names: list[str], txn: Any) -> None:
        self.names = names
        self.changes: list[_change_runs.Layer] | None = None
        self.overlay: dict[bytes, bytes | None] = {}
        self._sorted: list[bytes] | None = None
        self._in_range: tuple[bytes, bytes, pa.Table] | None = None
        """The newest changes of the last key-group range asked for (``has_rows``, then ``batches``)."""
        self.run_files: list[_change_runs.Layer] = []
        """The run files this view owns (deleted at release)."""
        self._state: DiskKeyedState | None = state
        self._txn = txn

    def _delta_layers(self) -> list[_change_runs.Layer]:
        assert self.changes is not None
        return [*self.changes, _change_runs.as_layer(self.overlay)] if self.overlay else list(self.changes)

    def absorb(self, older: DiskSnapshot) -> None:
        """Take over the changes of an earlier view of the same state that was never written; release it.

        The newest value of a key is, in order: this view's overlay, this
        view's changes (written out since ``older``), ``older``'s overlay (a
        change still in the cache then), ``older``'s changes, and for a key
        none of them holds, the view. An older full view makes this one full
        (the view holds every change written out since); a full view (all
        written out at its capture) needs nothing of an older one.
        """
        if self.changes is None:
            pass
        elif older.changes is None:
            self.changes = None
        else:
            self.changes = [*older._delta_layers(), *self.changes]
            self.run_files.extend(older.run_files)
            older.run_files = []
        self._sorted = None
        self._in_range = None
        older.release()

    def _view(self) -> Any:
        if self._state is None:
            msg = "the snapshot was already released"
            raise RuntimeError(msg)
        return self._txn

    def has_rows(self, key_groups: KeyGroupRange) -> bool:
        """Whether the view holds an entry (or a delta a change) in ``key_groups``."""
        txn = self._view()
        start, end = struct.pack(">H", key_groups.start), struct.pack(">H", key_groups.end)
        if self.changes is not None:
            return bool(self._changes_between(start, end).num_rows)
        if self.overlay:
            keys = self._sorted_changes()
            at = bisect.bisect_left(keys, start)
            if at < len(keys) and keys[at] < end:
                return True
        cursor = txn.cursor()
        return bool(cursor.set_range(start)) and cursor.key() < end

    def _sorted_changes(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self.overlay)
        return self._sorted

    def batches(
        self, rows: int, key_groups: KeyGroupRange | None = None
    ) -> Iterator[tuple[pa.Array, pa.Array, pa.Array, pa.Array]]:
        """Yield ``(key_group int32, state index int32, key, pickled value)`` of up to ``rows`` entries.

        Only the entries of ``key_groups`` (all if None); a tombstone's value is null.
        """
        self._view()
        state = self._state
        assert state is not None
        if self.changes is not None:
            chunks = self._changes(rows, key_groups)
        elif self.overlay:
            chunks = self._all_entries_with_overlay(rows, key_groups)
        else:
            chunks = self._all_entries(rows, key_groups)
        for raw_keys, raw_values in chunks:
            yield _columns(raw_keys, raw_values)
            state.pages.trim()  # the pages this chunk was read from

    def _all_entries(
        self, rows: int, key_groups: KeyGroupRange | None
    ) -> Iterator[tuple[Sequence[bytes], Sequence[bytes | None]]]:
        cursor = self._txn.cursor()
        stop: tuple[bytes] | None = None
        if key_groups is not None:
            stop = (struct.pack(">H", key_groups.end),)
            if not cursor.set_range(struct.pack(">H", key_groups.start)):
                return
        entries = cursor.iternext(keys=True, values=True)
        while chunk := list(islice(entries, rows)):
            if stop is not None and chunk[-1] >= stop:
                # Sorted pairs: the first entry at or past the range's end key group ends the range.
                chunk = chunk[: bisect.bisect_left(chunk, stop)]
                if chunk:
                    yield tuple(zip(*chunk, strict=True))  # type: ignore[misc]
                return
            yield tuple(zip(*chunk, strict=True))  # type: ignore[misc]

    def _all_entries_with_overlay(
        self, rows: int, key_groups: KeyGroupRange | None
    ) -> Iterator[tuple[Sequence[bytes], Sequence[bytes | None]]]:
        """Every entry, the overlay applied (a base that absorbed a delta: a rare path, merged per row)."""
        overlay = self.overlay
        lo, hi = 0, len(self._sorted_changes())
        if key_groups is not None:
            lo = bisect.bisect_left(self._sorted_changes(), struct.pack(">H", key_groups.start))
            hi = bisect.bisect_left(self._sorted_changes(), struct.pack(">H", key_groups.end))
        pending = self._sorted_changes()[lo:hi]
        at = 0
        keys: list[bytes] = []
        values: list[bytes | None] = []
        for chunk_keys, chunk_values in self._all_entries(rows, key_groups):
            for k, v in zip(chunk_keys, chunk_values, strict=True):
                while at < len(pending) and pending[at] <= k:
                    extra = overlay[pending[at]]
                    if pending[at] < k and extra is not None:
                        keys.append(pending[at])
                        values.append(extra)
                    at += 1
                if k in overlay:
                    v = overlay[k]
                if v is not None:
                    keys.append(k)
                    values.append(v)
            if len(keys) >= rows:
                yield keys, values
                keys, values = [], []
        for k in pending[at:]:
            if overlay[k] is not None:
                keys.append(k)
                values.append(overlay[k])
        if keys:
            yield keys, values

    def _changes(self, rows: int, key_groups: KeyGroupRange | None) -> Iterator[tuple[pa.Array, pa.Array]]:
        """Yield the newest row of each changed key in ``key_groups``, by key (no database read)."""
        start, end = (0, 1 << 16) if key_groups is None else (key_groups.start, key_groups.end)
        lo = struct.pack(">H", start)
        hi = struct.pack(">H", end) if end < 1 << 16 else b"\xff" * (_PREFIX_BYTES + 1)
        changes = self._changes_between(lo, hi)
        keys = changes["key"].combine_chunks()
        values = changes["value"].combine_chunks()
        for at in range(0, changes.num_rows, rows):
            yield keys.slice(at, rows), values.slice(at, rows)

    def _changes_between(self, start: bytes, end: bytes) -> pa.Table:
        """Return the newest changes in ``[start, end)``, sorted by key.

        Few changes (run files under :data:`_SMALL_DELTA` bytes) are read and
        sorted once, then sliced per range; more are read once per range, so
        memory holds one range's share of them.
        """
        if self._in_range is None and self._small_delta():
            everything = b"\xff" * (_PREFIX_BYTES + 1)
            self._in_range = (b"", everything, self._newest(b"", everything))
        if self._in_range is not None and self._in_range[0] <= start and end <= self._in_range[1]:
            rows = self._in_range[2]
            if self._in_range[:2] == (start, end):
                return rows
            keys = rows["key"]
            lo = pc.sum(pc.less(keys, pa.scalar(start, pa.large_binary()))).as_py() or 0
            hi = pc.sum(pc.less(keys, pa.scalar(end, pa.large_binary()))).as_py() or 0
            return rows.slice(lo, hi - lo)
        self._in_range = (start, end, self._newest(start, end))
        return self._in_range[2]

    def _small_delta(self) -> bool:
        size = 0
        for layer in self.changes or ():
            with contextlib.suppress(OSError):
                size += os.path.getsize(layer) if isinstance(layer, str) else layer.nbytes
        return size < _SMALL_DELTA

    def _newest(self, start: bytes, end: bytes) -> pa.Table:
        return _change_runs.newest_rows(_change_runs.rows_in_range(self._delta_layers(), start, end))

    def to_dicts(self) -> dict[str, dict[Any, Any]]:
        """Decode the whole view into ``{state: {key: value}}``."""
        from onceflow.state_backends.key_groups import decode_key  # noqa: PLC0415

        result: dict[str, dict[Any, Any]] = {}
        for _, ids, keys, values in self.batches(64 * 1024):
            for i, k, v in zip(ids.to_pylist(), keys.to_pylist(), values.to_pylist(), strict=True):
                result.setdefault(self.names[i], {})[decode_key(k)] = pickle.loads(v)
        return result

    def release(self) -> None:
        """End the read view; idempotent."""
        state, self._state = self._state, None
        files, self.run_files = self.run_files, []
        _change_runs.remove(files)
        if state is not None:
            with contextlib.suppress(Exception):
                self._txn.abort()
            state.release_snapshot()

    def __del__(self) -> None:
        self.release()


__all__ = ["DiskKeyedState", "DiskSnapshot", "DiskTable", "local_state_directory", "sweep_local_state"]
