"""What ``_metadata`` says, as types: ``StateHandle``, ``OperatorInfo``, ``CheckpointMetadata``.

The JSON keys are the on-disk format (``format`` 1); ``to_json``/``from_json``
are its only encoder and decoder, and :func:`encode_metadata` and
:func:`decode_metadata` the only code that turns ``_metadata`` bytes into a
checkpoint and back (``CheckpointStore`` does the I/O around them). A decoder
that accepts anything would let a damaged checkpoint fail deep inside a
restore; ``decode_metadata`` checks every field's type up front, so a damaged
file is a ``CheckpointStorageError`` the runner can fall back from.

Format 2 adds handle kinds: an incremental checkpoint's handles are ``base``
and ``delta`` files under ``<job>/shared/`` (with the id of the checkpoint that
wrote them, ``created``), applied in order at restore. A checkpoint with only
full handles is still written as format 1. A reader refuses a format newer
than it knows instead of guessing (an older reader would otherwise take a
delta for a whole state).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onceflow.engine.errors import CheckpointStorageError, IncompatibleCheckpointError
from onceflow.state_backends.arrow_snapshot import StateFileHandle
from onceflow.state_backends.key_groups import HASH_FUNCTION_ID

if TYPE_CHECKING:
    from onceflow.engine.plan import PhysicalPlan

__all__ = [
    "METADATA_FORMAT",
    "CheckpointMetadata",
    "JobDescription",
    "OperatorInfo",
    "StateHandle",
    "Timings",
    "decode_metadata",
    "encode_metadata",
]

METADATA_FORMAT = 2
"""The newest version of the ``_metadata`` JSON this code writes and reads."""
FULL_ONLY_FORMAT = 1
"""The version written when every handle is a full state file (readable by older onceflow)."""
HANDLE_KINDS = ("full", "base", "delta")
"""``full``: a subtask's whole state in one file; ``base``/``delta``: one segment of an incremental chain."""


def _int(value: Any) -> int:
    # bool is an int subclass; a checkpoint id of True is damage, not 1.
    if type(value) is not int:
        msg = f"expected an integer, got {value!r}"
        raise TypeError(msg)
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        msg = f"expected a string, got {value!r}"
        raise TypeError(msg)
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        msg = f"expected an object, got {value!r}"
        raise TypeError(msg)
    return value


@dataclass(frozen=True)
class StateHandle:
    """One state file of one operator's subtask, as a checkpoint references it.

    ``path`` is relative to the job directory (``chk-<n>/<uid>-<subtask>.arrow``),
    so checkpoints can share files; ``rows``, ``bytes`` and ``sha256`` let a
    restore verify the file before trusting it; the key group bounds let a
    restore skip files holding none of its key groups. ``kind`` is one of
    :data:`HANDLE_KINDS`; ``created`` is the id of the checkpoint that wrote a
    base or delta file, the order a restore applies them in.
    """

    uid: str
    subtask: int
    path: str
    rows: int
    bytes: int
    sha256: str
    key_group_start: int | None = None
    key_group_end: int | None = None
    kind: str = "full"
    created: int | None = None

    @classmethod
    def of_file(
        cls,
        uid: str,
        subtask: int,
        relative_path: str,
        file: StateFileHandle,
        *,
        kind: str = "full",
        created: int | None = None,
    ) -> StateHandle:
        """Describe a state file the backend just wrote, under its path relative to the job."""
        return cls(
            uid=uid,
            subtask=subtask,
            path=relative_path,
            rows=file.rows,
            bytes=file.bytes,
            sha256=file.sha256,
            key_group_start=file.key_group_start,
            key_group_end=file.key_group_end,
            kind=kind,
            created=created,
        )

    @property
    def incremental(self) -> bool:
        """Whether this is a base or delta file of an incremental chain."""
        return self.kind != "full"

    def file_handle(self, absolute_path: str) -> StateFileHandle:
        """Return the backend's handle for reading this file at ``absolute_path``."""
        return StateFileHandle(
            path=absolute_path,
            rows=self.rows,
            bytes=self.bytes,
            sha256=self.sha256,
            key_group_start=self.key_group_start,
            key_group_end=self.key_group_end,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the handle's ``_metadata`` entry."""
        return {
            "uid": self.uid,
            "subtask": self.subtask,
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "key_group_start": self.key_group_start,
            "key_group_end": self.key_group_end,
            **({"kind": self.kind, "created": self.created} if self.incremental else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StateHandle:
        """Rebuild a handle from its ``_metadata`` entry; raise on a missing or mistyped field."""
        kind = _str(d.get("kind", "full"))
        if kind not in HANDLE_KINDS:
            msg = f"unknown handle kind {kind!r}"
            raise ValueError(msg)
        created = _opt_int(d.get("created"))
        if kind != "full" and created is None:
            msg = f"a {kind} handle needs the id of the checkpoint that created it"
            raise ValueError(msg)
        return cls(
            uid=_str(d["uid"]),
            subtask=_int(d["subtask"]),
            path=_str(d["path"]),
            rows=_int(d["rows"]),
            bytes=_int(d["bytes"]),
            sha256=_str(d["sha256"]),
            key_group_start=_opt_int(d.get("key_group_start")),
            key_group_end=_opt_int(d.get("key_group_end")),
            kind=kind,
            created=created,
        )


@dataclass(frozen=True)
class OperatorInfo:
    """An operator of the job that took the checkpoint: display name, kind, parallelism, method.

    ``method`` is the call that made it (``reduce``, ``stateful_map``,
    ``source:FileSource``...), the kind of its state: a restore hands state
    only to an operator of the same uid, kind and method. Checkpoints written
    before it was recorded read as ``""`` (only the kind is compared then).
    """

    name: str
    kind: str
    parallelism: int
    method: str = ""

    @property
    def state_kind(self) -> str:
        """The method, or the kind when the method was not recorded: what a restore compares."""
        return self.method or self.kind

    def to_json(self) -> dict[str, Any]:
        """Return the operator's ``_metadata`` entry."""
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "parallelism": self.parallelism}
        if self.method:
            entry["method"] = self.method
        return entry

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OperatorInfo:
        """Rebuild from :meth:`to_json` output."""
        return cls(
            name=_str(d["name"]),
            kind=_str(d["kind"]),
            parallelism=_int(d["parallelism"]),
            method=_str(d.get("method", "")),
        )


@dataclass(frozen=True)
class JobDescription:
    """What every checkpoint of one run says about the job; fixed for the run.

    A restore compares it with the job about to run (fingerprint, key groups,
    parameters), so it is recorded in full in every ``_metadata``.
    """

    job: str
    fingerprint: str
    max_parallelism: int
    operators: Mapping[str, OperatorInfo]
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_plan(cls, plan: PhysicalPlan, params: Mapping[str, str]) -> JobDescription:
        """Describe the job ``plan`` runs, started with ``params``."""
        operators = {
            op.uid: OperatorInfo(
                name=op.name, kind=op.kind.value, parallelism=task.parallelism, method=op.method
            )
            for task in plan.tasks
            for op in task.operators
        }
        return cls(
            job=plan.job_name,
            fingerprint=plan.fingerprint,
            max_parallelism=plan.max_parallelism,
            operators=operators,
            params=dict(params),
        )


@dataclass(frozen=True)
class Timings:
    """When a checkpoint was triggered (aware UTC, ISO 8601) and how long it took to complete."""

    triggered_at: str
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        """Return the ``timings`` entry."""
        return {"triggered_at": self.triggered_at, "duration_s": self.duration_s}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Timings:
        """Rebuild from :meth:`to_json` output."""
        duration = d["duration_s"]
        if type(duration) not in (int, float):
            msg = f"expected a number, got {duration!r}"
            raise TypeError(msg)
        return cls(triggered_at=_str(d["triggered_at"]), duration_s=float(duration))


@dataclass(frozen=True)
class CheckpointMetadata:
    """The content of one completed checkpoint's ``_metadata``.

    Built once by the coordinator when the last subtask acknowledged
    (:meth:`complete`), written by ``CheckpointStore.write_metadata``, read back
    by restore, retention and the CLI. ``handles`` are sorted by uid and
    subtask, so the file is the same whatever order the acks arrived in.
    """

    job: str
    fingerprint: str
    max_parallelism: int
    operators: Mapping[str, OperatorInfo]
    params: Mapping[str, str]
    checkpoint_id: int
    final: bool
    handles: tuple[StateHandle, ...]
    size_bytes: int
    timings: Timings
    hash_function: str = HASH_FUNCTION_ID
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    format: int = METADATA_FORMAT

    @classmethod
    def complete(
        cls,
        job: JobDescription,
        *,
        checkpoint_id: int,
        final: bool,
        handles: Iterable[StateHandle],
        timings: Timings,
    ) -> CheckpointMetadata:
        """Describe checkpoint ``checkpoint_id`` of ``job`` from its subtasks' state files."""
        ordered = tuple(sorted(handles, key=lambda h: (h.uid, h.subtask)))
        return cls(
            job=job.job,
            fingerprint=job.fingerprint,
            max_parallelism=job.max_parallelism,
            operators=dict(job.operators),
            params=dict(job.params),
            checkpoint_id=checkpoint_id,
            final=final,
            handles=ordered,
            size_bytes=sum(h.bytes for h in ordered),
            timings=timings,
            format=METADATA_FORMAT if any(h.incremental for h in ordered) else FULL_ONLY_FORMAT,
        )

    @property
    def referenced_paths(self) -> frozenset[str]:
        """Every file this checkpoint needs, relative to the job directory."""
        return frozenset(h.path for h in self.handles)

    @property
    def written_bytes(self) -> int:
        """Bytes of the files this checkpoint wrote itself (full files, and shared files it created)."""
        return sum(h.bytes for h in self.handles if not h.incremental or h.created == self.checkpoint_id)

    @property
    def stateful_uids(self) -> list[str]:
        """The uids of the operators that have state in this checkpoint, sorted."""
        return sorted({h.uid for h in self.handles})

    def to_json(self) -> dict[str, Any]:
        """Return the ``_metadata`` JSON object (format :data:`METADATA_FORMAT`)."""
        return {
            "job": self.job,
            "fingerprint": self.fingerprint,
            "max_parallelism": self.max_parallelism,
            "operators": {uid: op.to_json() for uid, op in self.operators.items()},
            "params": dict(self.params),
            "format": self.format,
            "checkpoint_id": self.checkpoint_id,
            "final": self.final,
            "hash_function": self.hash_function,
            "python": self.python,
            "handles": [h.to_json() for h in self.handles],
            "size_bytes": self.size_bytes,
            "timings": self.timings.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckpointMetadata:
        """Rebuild from :meth:`to_json` output; raise ``KeyError``/``TypeError`` on damage."""
        final = d["final"]
        if not isinstance(final, bool):
            msg = f"expected true or false, got {final!r}"
            raise TypeError(msg)
        handles = d["handles"]
        if not isinstance(handles, list):
            msg = f"expected a list of handles, got {handles!r}"
            raise TypeError(msg)
        params = _dict(d["params"])
        return cls(
            job=_str(d["job"]),
            fingerprint=_str(d["fingerprint"]),
            max_parallelism=_int(d["max_parallelism"]),
            operators={
                _str(uid): OperatorInfo.from_json(_dict(op)) for uid, op in _dict(d["operators"]).items()
            },
            params={_str(k): _str(v) for k, v in params.items()},
            checkpoint_id=_int(d["checkpoint_id"]),
            final=final,
            handles=tuple(StateHandle.from_json(_dict(h)) for h in handles),
            size_bytes=_int(d["size_bytes"]),
            timings=Timings.from_json(_dict(d["timings"])),
            hash_function=_str(d["hash_function"]),
            python=_str(d["python"]),
            format=_int(d["format"]),
        )


def encode_metadata(meta: CheckpointMetadata) -> bytes:
    """Return the bytes of ``_metadata``: one top-level field, and one state file, per line, keys sorted.

    So diffs and ``inspect`` read well. Each line is encoded by ``json``'s C
    encoder (an ``indent`` would take the pure-Python one, several times
    slower on the hundreds of files an incremental checkpoint lists, and
    this runs beside processing at every checkpoint).
    """
    entry = meta.to_json()
    lines = []
    for key in sorted(entry):
        value = entry[key]
        if key == "handles" and value:
            files = ",\n  ".join(json.dumps(h, sort_keys=True) for h in value)
            lines.append(f"{json.dumps(key)}: [\n  {files}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    return ("{\n " + ",\n ".join(lines) + "\n}\n").encode()


def decode_metadata(data: bytes, *, checkpoint_id: int, where: str) -> CheckpointMetadata:
    """Parse and validate ``_metadata`` bytes read from ``where`` for checkpoint ``checkpoint_id``.

    Raises:
        CheckpointStorageError: the file is not the metadata of ``checkpoint_id``
            (not JSON, a field missing or of the wrong type, another id); the
            caller may fall back to an older checkpoint.
        IncompatibleCheckpointError: a newer onceflow wrote it; never a fallback,
            since deleting it would destroy a good checkpoint.
    """
    try:
        raw = json.loads(data)
    except ValueError as exc:
        msg = f"checkpoint metadata {where!r} is corrupt: {exc}"
        raise CheckpointStorageError(msg) from exc
    if not isinstance(raw, dict) or raw.get("checkpoint_id") != checkpoint_id:
        msg = f"checkpoint metadata {where!r} is corrupt: unexpected content"
        raise CheckpointStorageError(msg)
    version = raw.get("format")
    if type(version) is int and version > METADATA_FORMAT:
        msg = (
            f"checkpoint metadata {where!r} has format {version}, newer than {METADATA_FORMAT} that "
            "this onceflow reads; run a newer onceflow, or --fresh to start over"
        )
        raise IncompatibleCheckpointError(msg)
    try:
        return CheckpointMetadata.from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        msg = f"checkpoint metadata {where!r} is corrupt: {detail}"
        raise CheckpointStorageError(msg) from exc
