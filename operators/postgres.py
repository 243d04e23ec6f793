"""Exactly-once output into a PostgreSQL table with two-phase commit (psycopg 3).

Each subtask of a :class:`PostgresSink` writes its records into one open
transaction on its *data* connection. At barrier ``n`` it adds a marker row to
the bookkeeping table and runs ``PREPARE TRANSACTION gid``: the rows are durable
but invisible. When checkpoint ``n`` completes it runs ``COMMIT PREPARED gid`` on
a separate autocommit *control* connection; the marker row tells "already
committed" from "lost" on a retry (gids, markers and the decision table:
``_postgres_commits``). On restore (subtask 0), every prepared gid of this job
and sink that no restored committable owns, and that the current attempt did
not prepare, is rolled back; gids of other jobs or sinks are never touched.

The pieces: ``_postgres_writer`` (the writer's steps), ``_postgres_txn``
(connections, the data transaction's life cycle), ``_postgres_sql``
(statements), ``_postgres_commits`` (gids and markers), ``_postgres_rows``
(records into rows). This module imports psycopg
lazily, so ``import onceflow`` works without it; install it with
``pip install 'onceflow[postgres]'``.
"""

from __future__ import annotations

from collections.abc import Sequence

from onceflow.operators._postgres_commits import BOOKKEEPING_TABLE, gid_prefix
from onceflow.operators._postgres_errors import PostgresSinkError, PostgresUnavailableError
from onceflow.operators._postgres_writer import PostgresSinkWriter
from onceflow.operators.base import Sink

__all__ = [
    "BOOKKEEPING_TABLE",
    "PostgresSink",
    "PostgresSinkError",
    "PostgresSinkWriter",
    "PostgresUnavailableError",
    "gid_prefix",
]

_MODES = ("insert", "upsert")


class PostgresSink(Sink):
    """Write records into a PostgreSQL table, visible only when their checkpoint completes.

    Records are dicts (column -> value, a subset of the columns), tuples in the
    order of ``columns`` (default: every column of the table that is not
    generated, in table order), or Arrow record batches (columns by name).
    Insert mode uses ``COPY``; upsert mode runs ``INSERT ... ON CONFLICT
    (key_columns) DO UPDATE`` for every record (the last record of a key in a
    batch wins), so route every key to one subtask (``key_by``) before an
    upsert sink: two subtasks writing one key wait for each other's locks.

    Requirements: the server runs with ``max_prepared_transactions`` > 0, the
    table exists, and the DSN's database and role stay the same across resumes
    (a prepared transaction can only be finished from its own database).

    Args:
        dsn: a libpq connection string or URI, e.g. ``"postgresql://postgres@127.0.0.1/test"``.
        table: the target table, ``"name"`` or ``"schema.name"`` (resolved like SQL
            identifiers: unquoted names are lower-cased).
        mode: ``"insert"`` or ``"upsert"``.
        key_columns: the conflict target of ``upsert`` (a unique index must cover
            exactly these columns).
        columns: the columns tuple records fill, in order.
        application_name: shown in ``pg_stat_activity``; default
            ``onceflow:<job>:<uid>:<subtask>:<table>`` (cut to 63 bytes).
        connect_timeout: seconds to wait for a connection.
        lock_timeout: seconds a write waits for a row lock before the attempt
            fails and restarts (0: wait forever).
        bookkeeping_table: the marker table, created if missing in the target
            table's schema.

    Raises:
        PostgresSinkError: an unknown mode, or upsert without key columns.
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        mode: str = "insert",
        key_columns: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        application_name: str | None = None,
        connect_timeout: float = 10.0,
        lock_timeout: float = 30.0,
        bookkeeping_table: str = BOOKKEEPING_TABLE,
    ) -> None:
        if mode not in _MODES:
            msg = f"PostgresSink(table {table!r}): mode must be one of {_MODES}, got {mode!r}"
            raise PostgresSinkError(msg)
        if isinstance(key_columns, str):
            key_columns = [key_columns]
        if mode == "upsert" and not key_columns:
            msg = (
                f"PostgresSink(table {table!r}): mode='upsert' needs key_columns=[...], the "
                f"columns of the unique index that ON CONFLICT targets"
            )
            raise PostgresSinkError(msg)
        if not isinstance(table, str) or not table:
            msg = f"PostgresSink: table must be a non-empty string, got {table!r}"
            raise PostgresSinkError(msg)
        self.dsn = dsn
        self.table = table
        self.mode = mode
        self.key_columns = list(key_columns) if key_columns else []
        self.columns = list(columns) if columns else None
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.lock_timeout = lock_timeout
        self.bookkeeping_table = bookkeeping_table

    def create_writer(self, subtask_index: int, parallelism: int) -> PostgresSinkWriter:
        """Return the writer of one subtask."""
        return PostgresSinkWriter(self)

    def __repr__(self) -> str:
        return f"PostgresSink(table={self.table!r}, mode={self.mode!r})"
