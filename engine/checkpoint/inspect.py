"""What ``onceflow checkpoints inspect`` shows: state sizes per operator, and keyed state as a table.

Sizes come from ``_metadata`` alone (no state file is read). A keyed state is
read like a restore reads it (verified, incremental chains applied) and turned
into a pyarrow table with one row per ``(state, key)``, so it can be printed,
written to Parquet and queried with DuckDB or pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from onceflow.engine.checkpoint.metadata import CheckpointMetadata
from onceflow.state_backends.key_groups import key_group_for


@dataclass(frozen=True)
class OperatorStateSize:
    """The state files one checkpoint lists for one operator, summed.

    ``new_bytes`` were written for this checkpoint (full files, and base or
    delta files it created); ``shared_bytes`` are files of earlier checkpoints
    that this one still needs (incremental checkpoints reuse them).
    """

    uid: str
    name: str
    method: str
    files: int
    rows: int
    bytes: int
    new_bytes: int
    shared_bytes: int
    incremental: bool


def state_sizes(meta: CheckpointMetadata) -> list[OperatorStateSize]:
    """Sum the state files of ``meta`` per operator, largest first."""
    sizes: list[OperatorStateSize] = []
    for uid in sorted({h.uid for h in meta.handles}):
        handles = [h for h in meta.handles if h.uid == uid]
        shared = sum(h.bytes for h in handles if h.incremental and h.created != meta.checkpoint_id)
        total = sum(h.bytes for h in handles)
        info = meta.operators.get(uid)
        sizes.append(
            OperatorStateSize(
                uid=uid,
                name=info.name if info is not None else uid,
                method=(info.method or info.kind) if info is not None else "",
                files=len(handles),
                rows=sum(h.rows for h in handles),
                bytes=total,
                new_bytes=total - shared,
                shared_bytes=shared,
                incremental=any(h.incremental for h in handles),
            )
        )
    sizes.sort(key=lambda s: (-s.bytes, s.uid))
    return sizes


def format_sizes(meta: CheckpointMetadata, sizes: Sequence[OperatorStateSize]) -> str:
    """Render the summary ``inspect`` prints: one header line, then one row per operator."""
    final = ", final" if meta.final else ""
    lines = [
        f"job {meta.job!r}, checkpoint {meta.checkpoint_id}{final}: {meta.size_bytes:,} bytes of state "
        f"in {len(meta.handles)} files, triggered {meta.timings.triggered_at}",
        "",
        f"{'uid':<24} {'operator':<20} {'method':<20} {'files':>5} {'rows':>12} {'bytes':>14} "
        f"{'new':>14} {'shared':>14}",
    ]
    for s in sizes:
        lines.append(
            f"{s.uid:<24} {s.name:<20} {s.method:<20} {s.files:>5} {s.rows:>12,} {s.bytes:>14,} "
            f"{s.new_bytes:>14,} {s.shared_bytes:>14,}"
        )
    lines.append("")
    lines.append("new: written for this checkpoint; shared: files of earlier checkpoints it reuses")
    return "\n".join(lines)


def _column(values: list[Any]) -> pa.Array:
    """Values as their natural Arrow type, or as ``repr`` strings when they have none in common."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
        return pa.array([None if v is None else repr(v) for v in values], pa.large_string())


def keyed_state_table(tables: dict[str, dict[Any, Any]], max_parallelism: int) -> pa.Table:
    """Return one row per ``(state, key)``: ``state``, ``key_group``, ``key``, ``value``.

    Rows are sorted by state name and key group.

    ``key`` and ``value`` get the Arrow type pyarrow infers for all of them (so
    numbers stay numbers and dicts become structs); mixed or unsupported
    Python types are shown as their ``repr``.
    """
    names: list[str] = []
    groups: list[int] = []
    keys: list[Any] = []
    values: list[Any] = []
    for name in sorted(tables):
        table = tables[name]
        rows = sorted(((key_group_for(k, max_parallelism), i) for i, k in enumerate(table)))
        items = list(table.items())
        for group, i in rows:
            names.append(name)
            groups.append(group)
            keys.append(items[i][0])
            values.append(items[i][1])
    return pa.table(
        {
            "state": pa.array(names, pa.string()),
            "key_group": pa.array(groups, pa.int32()),
            "key": _column(keys),
            "value": _column(values),
        }
    )


__all__ = ["OperatorStateSize", "format_sizes", "keyed_state_table", "state_sizes"]
