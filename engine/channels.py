"""Output gates: how a subtask's output batches are partitioned over the channels of an edge.

This is the per-record path: a gate sees each record once (the hash gate calls
the key function and one dict lookup per record); everything else is per batch.
The channels themselves belong to a transport (:mod:`onceflow.engine.transport`);
a gate only calls ``put`` and ``has_room`` on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import compress
from operator import not_
from typing import Any

from onceflow.engine.elements import Batch
from onceflow.engine.errors import KeyEncodingError, OperatorError
from onceflow.state_backends.errors import ErrorDomain
from onceflow.state_backends.key_groups import (
    changed_by_restore,
    decode_key,
    encode_key,
    key_group_for,
    key_groups_for,
    subtask_for_key_group,
)

log = logging.getLogger("onceflow")


class OutputGate:
    """Partitions a producer's output batches over the channels of one edge."""

    channels: list
    tag: str | None = None
    """The side output this gate carries; None for the main output."""

    def emit(self, records: list, timestamps: list | None = None) -> None:
        """Send a batch of records (and their carried event times, if any) downstream."""
        raise NotImplementedError

    def broadcast(self, element: Any) -> None:
        """Send a control element (barrier, watermark, end of data) on every channel."""
        for ch in self.channels:
            ch.put(element)

    def has_room(self) -> bool:
        """Whether every channel can take more."""
        return all(ch.has_room() for ch in self.channels)


class ForwardGate(OutputGate):
    """One channel: subtask i to subtask i."""

    def __init__(self, channels: list) -> None:
        self.channels = channels
        self._put = channels[0].put

    def emit(self, records: list, timestamps: list | None = None) -> None:
        """Send the batch as is."""
        self._put(Batch(records, None, timestamps))

    def has_room(self) -> bool:
        """Whether the channel can take more."""
        return self.channels[0].has_room()


class RebalanceGate(OutputGate):
    """Round-robin, one whole batch per channel in turn."""

    def __init__(self, channels: list, start: int = 0) -> None:
        self.channels = channels
        self._next = start % len(channels)

    def emit(self, records: list, timestamps: list | None = None) -> None:
        """Send the batch to the next channel."""
        self.channels[self._next].put(Batch(records, None, timestamps))
        self._next = (self._next + 1) % len(self.channels)


class BroadcastGate(OutputGate):
    """Every batch to every channel (records are shared, never copied)."""

    def __init__(self, channels: list) -> None:
        self.channels = channels

    def emit(self, records: list, timestamps: list | None = None) -> None:
        """Send the batch everywhere."""
        for ch in self.channels:
            ch.put(Batch(records, None, timestamps))


class HashGate(OutputGate):
    """Route each record by the stable hash of its key; keys travel with the batch.

    Cost per record: one ``key_fn`` call and one dict lookup (key -> channel),
    with the canonical hash computed once per distinct key, in bulk for the new
    keys of a batch (:meth:`_learn`): behind a combiner nearly every partial
    carries a key not seen before, so a call per new key would be a call per record.
    """

    def __init__(
        self,
        channels: list,
        key_fn: Callable[[Any], Any],
        *,
        max_parallelism: int,
        operator_name: str,
        uid: str,
        subtask_index: int,
        cache_size: int = 1_000_000,
    ) -> None:
        self.channels = channels
        self.key_fn = key_fn
        self.max_parallelism = max_parallelism
        self.operator_name = operator_name
        self.uid = uid
        self.subtask_index = subtask_index
        self.cache_size = cache_size
        self._route: dict[Any, int] = {}
        self._warned = False

    def _miss(self, key: Any) -> int:
        try:
            kg = key_group_for(key, self.max_parallelism)
        except KeyEncodingError as exc:
            msg = (
                f"key_by before operator {self.operator_name!r} produced key {key!r} of "
                f"type {type(key).__name__}: {exc}. Keys must be str, int, float, bool, "
                "bytes, None or tuples of these; convert the key in key_by's function"
            )
            raise self._error(msg, exc) from exc
        if not self._warned:
            self._warn_if_changed_by_restore([key])
        if len(self._route) >= self.cache_size:
            self._route.clear()
        target = subtask_for_key_group(self.max_parallelism, len(self.channels), kg)
        self._route[key] = target
        return target

    def _learn(self, batch_keys: set) -> None:
        """Route the batch's distinct uncached keys at once; a key without encoding raises in ``_miss``.

        When they would overflow the cache, it starts again with every key of
        the batch, so the batch's known keys stay routable too.
        """
        route = self._route
        new = [k for k in batch_keys if k not in route]
        if len(route) + len(new) > self.cache_size:
            route.clear()
            new = list(batch_keys)
        try:
            groups = key_groups_for(new, self.max_parallelism)
        except KeyEncodingError:
            for key in new:
                self._miss(key)  # raises the error naming the operator, for the first bad key
            raise
        if not self._warned:
            self._warn_if_changed_by_restore(new)
        mp, n = self.max_parallelism, len(self.channels)
        route.update(zip(new, [subtask_for_key_group(mp, n, kg) for kg in groups]))

    def _warn_if_changed_by_restore(self, keys: list) -> None:
        """Warn once if a key would come back from a checkpoint as another type (``changed_by_restore``)."""
        key = changed_by_restore(keys)
        if key is None:
            return
        self._warned = True
        canonical = decode_key(encode_key(key))
        log.warning(
            "key_by before operator %r produced the key %r (%s): a checkpoint keeps a key as its "
            "canonical equal, so after a restore its state, windows and timers hold it as %r (%s), "
            "which is what they then emit; key by a plain str, int or tuple of them where the key's "
            "type shows in the output",
            self.operator_name,
            key,
            type(key).__name__,
            canonical,
            type(canonical).__name__,
        )

    def _error(self, msg: str, exc: BaseException) -> OperatorError:
        err = OperatorError(
            msg,
            operator=f"key_by -> {self.operator_name}",
            uid=self.uid,
            subtask_index=self.subtask_index,
            checkpoint_id=None,
            domain=ErrorDomain.USER,
        )
        err.__cause__ = exc
        return err

    def emit(self, records: Any, timestamps: list | None = None) -> None:
        """Split the batch (a list, or an Arrow batch) by key into one keyed batch per channel.

        Carried ``timestamps`` are split alongside (only when present: one more
        C-level pass per target).
        """
        if type(records) is not list:  # an Arrow batch from map_batches: keys need rows
            records = records.to_pylist()
        try:
            keys = list(map(self.key_fn, records))
        except Exception as exc:
            msg = f"key_by before operator {self.operator_name!r} raised {exc!r}"
            raise self._error(msg, exc) from exc
        route = self._route
        get = route.get
        channels = self.channels
        out_ts: list[list] = []
        try:
            if len(channels) == 1:
                # One target: nothing to route, only keys to check. Keys of plain types
                # are valid by their type alone (one C-level pass); floats (NaN), tuples
                # and anything else are checked once per distinct key through the cache.
                types = set(map(type, keys))
                if not _PLAIN_KEY_TYPES.issuperset(types):
                    for key in keys:
                        if get(key) is None:
                            self._miss(key)
                elif bool in types and not self._warned:
                    self._warn_if_changed_by_restore(keys)
                channels[0].put(Batch(records, keys, timestamps))
                return
            n = len(channels)
            if n == 2:
                # Two targets (the common case): C-level passes only. The targets are
                # 0/1, so they select target 1 themselves and their negation target 0.
                targets = list(map(get, keys))
                if None in targets:
                    # New keys: hash each distinct one once (in bulk), then route the batch
                    # again at C speed.
                    self._learn(set(keys))
                    targets = list(map(get, keys))
                others = list(map(not_, targets))
                out_records = [list(compress(records, others)), list(compress(records, targets))]
                out_keys = [list(compress(keys, others)), list(compress(keys, targets))]
                if timestamps is not None:
                    out_ts = [list(compress(timestamps, others)), list(compress(timestamps, targets))]
            else:
                out_records = [[] for _ in range(n)]
                out_keys = [[] for _ in range(n)]
                if None in map(get, keys):
                    self._learn(set(keys))
                miss = self._miss
                for record, key in zip(records, keys):
                    target = get(key)
                    if target is None:
                        target = miss(key)
                    out_records[target].append(record)
                    out_keys[target].append(key)
                if timestamps is not None:
                    out_ts = [[] for _ in range(n)]
                    for key, t in zip(keys, timestamps):
                        target = get(key)
                        out_ts[target if target is not None else miss(key)].append(t)
        except TypeError as exc:
            if isinstance(exc, KeyEncodingError) or isinstance(exc, OperatorError):
                raise
            bad = next(k for k in keys if not _hashable(k))
            # The cause must be a KeyEncodingError (user domain): a plain TypeError
            # would make the runner retry a key that fails the same way every time.
            try:
                key_group_for(bad, self.max_parallelism)
            except KeyEncodingError as encoding_error:
                cause = encoding_error
            else:
                detail = (
                    f"key of type {type(bad).__name__!r} is unhashable; use str, int, float, "
                    "bool, bytes, None or tuples of these"
                )
                cause = KeyEncodingError(detail)
            cause.__context__ = exc
            msg = (
                f"key_by before operator {self.operator_name!r} produced key {bad!r} of "
                f"unsupported type {type(bad).__name__}: {cause}"
            )
            raise self._error(msg, cause) from cause
        for i in range(n):
            if out_records[i]:
                stamps = out_ts[i] if timestamps is not None else None
                channels[i].put(Batch(out_records[i], out_keys[i], stamps))


_PLAIN_KEY_TYPES = frozenset({str, int, bytes, bool, type(None)})


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
