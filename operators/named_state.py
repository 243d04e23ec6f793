"""Named keyed state of process functions: value, list and map state, with an optional time-to-live.

``ctx.value_state(name)``, ``ctx.list_state(name)`` and ``ctx.map_state(name)``
return one of these handles, scoped to the key of the current record or timer.
A handle reads and writes a plain ``{key: value}`` table of the operator's
keyed state, so it is snapshotted by key group and restored at any parallelism.

Time-to-live (``ttl=`` seconds of processing time since the last write, the
operator's clock): a write also sets the key's expiry time in a sibling table
(``ttl:<kind>:<name>``, itself keyed state, so expiry survives a restore). A
read of an expired key finds nothing and drops it; a snapshot leaves out every
expired entry. So state of keys that stop coming is never returned again and
leaves the checkpoints without a timer per key. For map state the whole map of
a key expires together, counted from its last ``put``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

__all__ = ["ListState", "MapState", "ValueState", "check_ttl", "expired_keys"]

TTL_PREFIX = "ttl:"
"""The expiry table of state table ``t`` is ``TTL_PREFIX + t``."""


class _Owner(Protocol):
    current_key: Any

    def clock(self) -> float: ...


def check_ttl(ttl: Any, where: str) -> float | None:
    """Return ``ttl`` as seconds (None: no expiry) or raise a ``TypeError`` naming ``where``."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0 or math.isinf(ttl):
        msg = f"{where}: ttl must be a finite number of seconds > 0 (or None), got {ttl!r}"
        raise TypeError(msg)
    return float(ttl)


def expired_keys(tables: dict[str, dict], now: float) -> dict[str, set]:
    """Per state table with a time-to-live, the keys expired at ``now`` (to leave out of a snapshot)."""
    out: dict[str, set] = {}
    for name, expiry in tables.items():
        if name.startswith(TTL_PREFIX):
            gone = {k for k, at in expiry.items() if at <= now}
            if gone:
                out[name] = out[name[len(TTL_PREFIX) :]] = gone
    return out


class _NamedState:
    __slots__ = ("_expiry", "_op", "_table", "_ttl")

    def __init__(self, op: _Owner, table: dict, ttl: float | None = None, expiry: dict | None = None) -> None:
        self._op = op
        self._table = table
        self._ttl = ttl
        self._expiry = expiry

    def _live(self) -> Any:
        """Return the current key, after dropping its entry if it expired."""
        key = self._op.current_key
        expiry = self._expiry
        if expiry is not None:
            at = expiry.get(key)
            if at is not None and at <= self._op.clock():
                del expiry[key]
                self._table.pop(key, None)
        return key

    def _touch(self, key: Any) -> None:
        if self._expiry is not None and self._ttl is not None:
            self._expiry[key] = self._op.clock() + self._ttl

    def _forget(self, key: Any) -> None:
        self._table.pop(key, None)
        if self._expiry is not None:
            self._expiry.pop(key, None)

    def clear(self) -> None:
        """Forget the current key's state."""
        self._forget(self._op.current_key)


class ValueState(_NamedState):
    """One value per key: ``value()`` (None if unset), ``update(v)``, ``clear()``.

    Treat the value as immutable: ``update`` with a new one instead of changing it in place.
    """

    __slots__ = ()

    def value(self, default: Any = None) -> Any:
        """Return the current key's value, or ``default``."""
        return self._table.get(self._live(), default)

    def update(self, value: Any) -> None:
        """Set the current key's value (None clears it)."""
        key = self._op.current_key
        if value is None:
            self._forget(key)
        else:
            self._table[key] = value
            self._touch(key)


class ListState(_NamedState):
    """A list per key: ``get()``, ``add(v)``, ``update(values)``, ``clear()``."""

    __slots__ = ()

    def get(self) -> list:
        """Return a copy of the current key's list (empty if unset)."""
        return list(self._table.get(self._live(), ()))

    def add(self, value: Any) -> None:
        """Append to the current key's list."""
        key = self._live()
        values = self._table.get(key)
        if values is None:
            self._table[key] = [value]
        else:
            values.append(value)
        self._touch(key)

    def update(self, values: Iterable[Any]) -> None:
        """Replace the current key's list."""
        values = list(values)
        key = self._op.current_key
        if values:
            self._table[key] = values
            self._touch(key)
        else:
            self._forget(key)


class MapState(_NamedState):
    """A dict per key: ``get``, ``put``, ``remove``, ``contains``, ``items``, ``keys``, ``clear``..."""

    __slots__ = ()

    def _map(self) -> dict | None:
        return self._table.get(self._live())

    def get(self, name: Any, default: Any = None) -> Any:
        """Return the value under ``name`` for the current key."""
        found = self._map()
        return default if found is None else found.get(name, default)

    def put(self, name: Any, value: Any) -> None:
        """Set ``name`` to ``value`` for the current key."""
        key = self._live()
        found = self._table.get(key)
        if found is None:
            found = self._table[key] = {}
        found[name] = value
        self._touch(key)

    def remove(self, name: Any) -> None:
        """Delete ``name`` for the current key (no error if absent)."""
        found = self._map()
        if found is not None:
            found.pop(name, None)
            if not found:
                self._forget(self._op.current_key)

    def contains(self, name: Any) -> bool:
        """Whether ``name`` is set for the current key."""
        found = self._map()
        return found is not None and name in found

    __contains__ = contains

    def items(self) -> list[tuple[Any, Any]]:
        """Return a copy of the current key's entries."""
        found = self._map()
        return [] if found is None else list(found.items())

    def keys(self) -> list[Any]:
        """Return a copy of the current key's names."""
        return [k for k, _ in self.items()]

    def values(self) -> list[Any]:
        """Return a copy of the current key's values."""
        return [v for _, v in self.items()]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        found = self._map()
        return 0 if found is None else len(found)
