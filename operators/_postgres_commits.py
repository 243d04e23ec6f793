"""Gids and commit markers of the PostgreSQL sink: naming prepared transactions and proving commits.

A gid names the job, the sink uid, the target table, the subtask, the
checkpoint and the attempt::

    of:<sha256(job, uid, schema.table)[:16]>:<subtask>:<checkpoint>:<attempt>   (about 50 bytes, < 200)

so it is unique among prepared transactions of the cluster, never reused by a
later attempt, and ``of:<hash>:`` finds every transaction this sink prepared.

The marker row (``onceflow_commits``: gid, job, sink, subtask, checkpoint,
attempt, target) commits atomically with the data, so recovery can tell
"already committed" from "lost" (``COMMIT PREPARED`` of an unknown gid fails
the same way in both cases). Committing a gid follows this decision table:

    gid prepared                       -> COMMIT PREPARED          (CommitOutcome.COMMITTED)
    not prepared, marker row present   -> nothing to do            (CommitOutcome.ALREADY_COMMITTED)
    not prepared, no marker row        -> the rows are lost        (CommitOutcome.LOST)

This module runs statements on the connection it is handed and decides
nothing about retries or errors: the writer does.
"""

from __future__ import annotations

import enum
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onceflow.operators import _postgres_sql as statements

BOOKKEEPING_TABLE = "onceflow_commits"
"""Default name of the marker table, created in the target table's schema."""

_SAFE_ATTEMPT = re.compile(r"^[0-9A-Za-z]{1,32}$")
_BUSY_RETRIES = 50
"""``COMMIT PREPARED`` tries while the gid is busy (a dying session still holds it), 0.1 s apart."""


def gid_prefix(job_name: str, uid: str, table: str) -> str:
    """Return the prefix of every gid that sink ``uid`` of ``job_name`` prepares for ``table``.

    ``table`` is the resolved ``schema.name``: two runs of one job file into
    different tables never touch each other's transactions.
    """
    digest = hashlib.sha256(f"{job_name}\x00{uid}\x00{table}".encode()).hexdigest()[:16]
    return f"of:{digest}:"


def attempt_tag(attempt_id: str) -> str:
    """Return the attempt id as it appears in gids and marker rows: short and gid-safe."""
    if _SAFE_ATTEMPT.match(attempt_id):
        return attempt_id
    return hashlib.sha256(attempt_id.encode()).hexdigest()[:12]


class CommitOutcome(enum.Enum):
    """What committing one gid found, by the decision table."""

    COMMITTED = "committed"
    """It was prepared and is committed now."""
    ALREADY_COMMITTED = "already committed"
    """It was not prepared, and its marker row proves an earlier commit."""
    LOST = "lost"
    """It was neither prepared nor committed: something rolled it back."""


@dataclass(frozen=True)
class CommitBook:
    """The gids and marker rows of one subtask of one sink in one attempt.

    Args:
        job: the job name.
        sink: the sink's uid.
        subtask: the subtask index.
        attempt: the attempt tag (:func:`attempt_tag`).
        target: the resolved ``schema.table``.
        marker: the quoted marker table (``sql.Identifier``).
    """

    job: str
    sink: str
    subtask: int
    attempt: str
    target: str
    marker: Any

    @property
    def prefix(self) -> str:
        """The prefix of every gid of this job and sink (all subtasks and attempts)."""
        return gid_prefix(self.job, self.sink, self.target)

    def gid(self, checkpoint_id: int) -> str:
        """Return the gid of this subtask's transaction for ``checkpoint_id`` in this attempt."""
        return f"{self.prefix}{self.subtask}:{checkpoint_id}:{self.attempt}"

    def marker_row(self, gid: str, checkpoint_id: int) -> tuple[Any, ...]:
        """Return the parameters of :func:`_postgres_sql.insert_marker` for ``gid``."""
        return (gid, self.job, self.sink, self.subtask, checkpoint_id, self.attempt, self.target)

    def ensure_marker_table(self, control: Any) -> None:
        """Create the marker table if missing (another subtask may create it at the same moment)."""
        import psycopg

        try:
            control.execute(statements.create_marker_table(self.marker))
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # another subtask created it at the same moment

    def earlier_commits(self, control: Any) -> tuple[int, Any]:
        """``(count, latest time)`` of this sink's commits into the target by other attempts."""
        return control.execute(
            statements.count_earlier_commits(self.marker), (self.job, self.sink, self.target, self.attempt)
        ).fetchone()

    def last_committed_checkpoint(self, control: Any) -> int | None:
        """Return the newest checkpoint id this sink committed into the target: any subtask, any attempt.

        Marker rows commit with their data, so a prepared but uncommitted
        transaction does not count. None when nothing was committed.
        """
        row = control.execute(
            statements.last_committed_checkpoint(self.marker), (self.job, self.sink, self.target)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def forget_earlier_commits(self, control: Any) -> None:
        """Delete the marker rows of other attempts (``--fresh``); their rows stay in the table."""
        control.execute(
            statements.forget_earlier_commits(self.marker), (self.job, self.sink, self.target, self.attempt)
        )

    def commit(self, control: Any, gid: str, *, crash_point: Callable[[str], None]) -> CommitOutcome:
        """``COMMIT PREPARED gid``, or tell by the marker row whether it committed earlier.

        Connection errors propagate (the outcome is then unknown; committing
        again resolves it).
        """
        import psycopg

        for _ in range(_BUSY_RETRIES):
            try:
                control.execute(statements.commit_prepared(gid))
            except psycopg.errors.UndefinedObject:
                break  # not prepared (any more): the marker row decides
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.1)  # "is busy": a dying session still holds it
                continue
            crash_point("after_commit_prepared_before_bookkeeping")
            return CommitOutcome.COMMITTED
        marker = control.execute(statements.find_marker(self.marker), (gid,)).fetchone()
        if marker is not None:
            return CommitOutcome.ALREADY_COMMITTED  # by an attempt that died before its bookkeeping
        return CommitOutcome.LOST

    def rollback(self, control: Any, gid: str) -> None:
        """``ROLLBACK PREPARED gid``; a gid no longer prepared was finished by someone else meanwhile."""
        import psycopg

        try:
            control.execute(statements.rollback_prepared(gid))
        except psycopg.errors.UndefinedObject:
            pass

    def leftovers(self, control: Any, keep: Sequence[Any]) -> list[str]:
        """Return the prepared gids of this job and sink that nothing owes, oldest first.

        Kept: gids of a committable in ``keep`` (a restored checkpoint still
        owes them) and gids of the current attempt. Gids of other jobs, other
        sinks and other databases never match.
        """
        kept = {c["gid"] for c in keep if isinstance(c, dict) and "gid" in c}
        current = f":{self.attempt}"
        gids = [row[0] for row in control.execute(statements.LIST_PREPARED, (self.prefix,)).fetchall()]
        return [g for g in gids if g not in kept and not g.endswith(current)]
