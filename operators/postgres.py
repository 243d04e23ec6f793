"""Exactly-once output into a PostgreSQL table with two-phase commit (psycopg 3).

Each subtask of a :class:`PostgresSink` writes its records into one open
transaction on its *data* connection. At barrier ``n`` it adds a marker row to
the bookkeeping table and runs ``PREPARE TRANSACTION gid``: the rows are durable
but invisible. When checkpoint ``n`` completes it runs ``COMMIT PREPARED gid`` on
a separate autocommit *control* connection. A gid names the job, the sink uid,
the target table, the subtask, the checkpoint and the attempt::

    of:<sha256(job, uid, schema.table)[:16]>:<subtask>:<checkpoint>:<attempt>   (about 50 bytes, < 200)

so it is unique among prepared transactions of the cluster, never reused by a
later attempt, and ``of:<hash>:`` finds every transaction this sink prepared.

The marker row (``onceflow_commits``: gid, job, sink, subtask, checkpoint,
attempt, target) commits atomically with the data, so recovery can tell "already
committed" from "lost" (``COMMIT PREPARED`` of an unknown gid fails the same way
in both cases). Committing a committable follows the decision table of
FAULTS.md 3.1:

    gid prepared                       -> COMMIT PREPARED
    not prepared, marker row present   -> already committed: nothing to do
    not prepared, no marker row        -> SinkCommitError: the rows are lost (loud)

and on restore (subtask 0), every prepared gid of this job and sink that no
restored committable owns, and that the current attempt did not prepare, is
rolled back; gids of other jobs or sinks are never touched.

This module imports psycopg lazily, so ``import operators`` works without it;
install it with ``pip install 'onceflow[postgres]'``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from onceflow.operators.base import RuntimeContext, Sink, TwoPhaseCommitWriter
from onceflow.operators.errors import SinkCommitError, SinkError, SinkOutputExistsError
from onceflow.state_backends.errors import ErrorDomain

__all__ = [
    "BOOKKEEPING_TABLE",
    "PostgresSink",
    "PostgresSinkError",
    "PostgresSinkWriter",
    "PostgresUnavailableError",
    "gid_prefix",
]

log = logging.getLogger("onceflow")

BOOKKEEPING_TABLE = "onceflow_commits"
"""Default name of the marker table, created in the target table's schema."""

_MODES = ("insert", "upsert")
COPY_ROWS = 65536
"""Insert mode: rows per ``COPY`` statement at most (they are kept to name a record that fails)."""
_SAFE_ATTEMPT = re.compile(r"^[0-9A-Za-z]{1,32}$")
_USER_CONNECT_ERRORS = (
    "does not exist",
    "authentication failed",
    "no password supplied",
    "permission denied",
    "not permitted",
    "invalid connection option",
    "invalid dsn",
    'missing "="',
    "is not allowed",
)


class PostgresSinkError(SinkError):
    """The sink is set up wrongly or a record does not fit the table: retrying cannot help."""

    domain = ErrorDomain.USER


class PostgresUnavailableError(SinkError):
    """PostgreSQL cannot be reached or dropped the connection: a restart may succeed."""

    domain = ErrorDomain.EXTERNAL


def gid_prefix(job_name: str, uid: str, table: str) -> str:
    """Return the prefix of every gid that sink ``uid`` of ``job_name`` prepares for ``table``.

    ``table`` is the resolved ``schema.name``: two runs of one job file into
    different tables never touch each other's transactions.
    """
    digest = hashlib.sha256(f"{job_name}\x00{uid}\x00{table}".encode()).hexdigest()[:16]
    return f"of:{digest}:"


def _attempt_tag(attempt_id: str) -> str:
    if _SAFE_ATTEMPT.match(attempt_id):
        return attempt_id
    return hashlib.sha256(attempt_id.encode()).hexdigest()[:12]


def _one_line(exc: BaseException) -> str:
    """Return an exception's message on one line (libpq messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _shorten(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the installation
        msg = (
            "PostgresSink needs psycopg 3; install it with pip install 'onceflow[postgres]' "
            "(or pip install 'psycopg[binary]')"
        )
        raise PostgresSinkError(msg) from exc
    return psycopg


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


class PostgresSinkWriter(TwoPhaseCommitWriter):
    """One subtask's transactional writer of a :class:`PostgresSink`.

    Cost: insert mode, per batch one ``COPY`` and per record one ``write_row``;
    upsert mode, per batch one pipelined ``executemany``. Per checkpoint one
    marker insert, one ``PREPARE TRANSACTION`` and later one ``COMMIT PREPARED``.
    """

    def __init__(self, sink: PostgresSink) -> None:
        super().__init__()
        self._sink = sink
        self._psycopg: Any = None
        self._data: Any = None
        self._control: Any = None
        self._table_ident: Any = None
        self._marker_ident: Any = None
        self._columns: list[str] = []
        self._column_set: frozenset[str] = frozenset()
        self._rows_in_txn = 0
        self._stream: tuple | None = None
        """Insert mode: the open ``COPY`` as (columns, cursor, (manager, copy), rows sent)."""
        self._buffer: dict[Any, dict[str, Any]] = {}
        """Upsert mode: the merged row of every key written since the last barrier."""
        self._prepared_upserts: dict[int, dict[Any, dict[str, Any]]] = {}
        """Upsert mode: the rows of each prepared, not yet committed transaction."""
        self._last_snapshot = -1
        self._prefix = ""
        self._target = ""
        self._attempt = ""
        self._where = f"PostgresSink(table {sink.table!r})"

    # ------------------------------------------------------------ life cycle

    def open(self, ctx: RuntimeContext) -> None:
        """Connect, check the server and the table, then on a fresh start clear this sink's leftovers.

        Steps:
            1. Connect the data and control connections (application_name set).
            2. Check ``max_prepared_transactions`` > 0.
            3. Resolve the table and its columns; check key columns and the
               unique index for upsert; create the marker table if missing.
            4. Fresh start only: refuse if an earlier run of this job and sink
               committed into the table (unless ``--fresh``), and (subtask 0)
               roll back every prepared transaction of this job and sink.

        Raises:
            PostgresSinkError: wrong credentials, unknown database or role, a
                missing table or column, no matching unique index, or prepared
                transactions disabled on the server.
            PostgresUnavailableError: the server cannot be reached.
            SinkOutputExistsError: step 4 found an earlier run's commits.
        """
        super().open(ctx)
        sink = self._sink
        self._where = f"PostgresSink(table {sink.table!r}, uid {ctx.uid!r}, subtask {ctx.subtask_index})"
        self._attempt = _attempt_tag(ctx.attempt_id)
        self._psycopg = _import_psycopg()
        # Step 1
        self._data = self._connect(autocommit=False)
        self._control = self._connect(autocommit=True)
        try:
            # Step 2
            self._check_prepared_transactions()
            # Step 3
            self._resolve_table()
            self._ensure_marker_table()
            if sink.mode == "upsert":
                self._check_upsert_target()
            # Step 4
            if ctx.restored_checkpoint_id is None:
                self._start_fresh()
        except self._psycopg.OperationalError as exc:
            msg = "while checking the table"
            raise self._unavailable(msg, exc) from exc

    def _connect(self, *, autocommit: bool) -> Any:
        psycopg = self._psycopg
        ctx = self.ctx
        name = self._sink.application_name or (
            f"onceflow:{ctx.job_name}:{ctx.uid}:{ctx.subtask_index}:{self._sink.table}"
        )
        name = name.encode()[:63].decode("utf-8", "ignore")
        options = {"application_name": name, "connect_timeout": max(1, int(self._sink.connect_timeout))}
        if not autocommit and self._sink.lock_timeout > 0:
            options["options"] = f"-c lock_timeout={int(self._sink.lock_timeout * 1000)}"
        try:
            return psycopg.connect(self._sink.dsn, autocommit=autocommit, **options)
        except psycopg.ProgrammingError as exc:  # a malformed DSN
            msg = f"{self._where}: the DSN is invalid: {_one_line(exc)}"
            raise PostgresSinkError(msg) from exc
        except psycopg.OperationalError as exc:
            text = _one_line(exc)
            where = f"{self._where}: cannot connect to PostgreSQL at {self._safe_dsn()}"
            if any(s in text.lower() for s in _USER_CONNECT_ERRORS):
                msg = f"{where}: {text}; check the user, password and database in the DSN"
                raise PostgresSinkError(msg) from exc
            msg = f"{where}: {text}; is the server running and reachable?"
            raise PostgresUnavailableError(msg) from exc

    def _safe_dsn(self) -> str:
        """Return the DSN without its password, for messages."""
        try:
            from psycopg.conninfo import conninfo_to_dict

            params = conninfo_to_dict(self._sink.dsn)
        except Exception:  # noqa: BLE001 - only for a message
            return "<unparsable dsn>"
        params.pop("password", None)
        return " ".join(f"{k}={v}" for k, v in sorted(params.items())) or "<defaults>"

    def _check_prepared_transactions(self) -> None:
        value = self._control.execute("SHOW max_prepared_transactions").fetchone()[0]
        if int(value) == 0:
            msg = (
                f"{self._where}: the server has max_prepared_transactions = 0, so it cannot "
                f"prepare transactions (two-phase commit). Fix: run ALTER SYSTEM SET "
                f"max_prepared_transactions = 64; then restart PostgreSQL"
            )
            raise PostgresSinkError(msg)

    def _resolve_table(self) -> None:
        sql = self._psycopg.sql
        control = self._control
        try:
            row = control.execute(
                "SELECT n.nspname, c.relname, c.oid FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                (self._sink.table,),
            ).fetchone()
        except self._psycopg.errors.InvalidName as exc:
            msg = f"{self._where}: {self._sink.table!r} is not a valid table name: {_one_line(exc)}"
            raise PostgresSinkError(msg) from exc
        if row is None:
            database = control.execute("SELECT current_database()").fetchone()[0]
            msg = (
                f"{self._where}: table {self._sink.table!r} does not exist in database "
                f"{database!r} (search_path {control.execute('SHOW search_path').fetchone()[0]!r}); "
                f"create it first"
            )
            raise PostgresSinkError(msg)
        schema, name, oid = row
        self._target = f"{schema}.{name}"
        self._prefix = gid_prefix(self.ctx.job_name, self.ctx.uid, self._target)
        self._table_ident = sql.Identifier(schema, name)
        self._marker_ident = sql.Identifier(schema, self._sink.bookkeeping_table)
        columns = [
            r[0]
            for r in control.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (oid,),
            ).fetchall()
        ]
        wanted = list(self._sink.columns or columns)
        unknown = [c for c in wanted + self._sink.key_columns if c not in columns]
        if unknown:
            msg = (
                f"{self._where}: table {schema}.{name} has no (writable) column "
                f"{', '.join(map(repr, unknown))}; its columns are {columns}"
            )
            raise PostgresSinkError(msg)
        self._columns = wanted
        self._column_set = frozenset(columns)

    def _ensure_marker_table(self) -> None:
        psycopg = self._psycopg
        query = psycopg.sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (gid text PRIMARY KEY, job text NOT NULL, "
            "sink text NOT NULL, subtask integer NOT NULL, checkpoint_id bigint NOT NULL, "
            "attempt text NOT NULL, target text NOT NULL, prepared_at timestamptz NOT NULL DEFAULT now())"
        ).format(self._marker_ident)
        try:
            self._control.execute(query)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # another subtask created it at the same moment

    def _check_upsert_target(self) -> None:
        """EXPLAIN the upsert statement: fails now, not mid-run, without a matching unique index."""
        psycopg = self._psycopg
        columns = self._columns
        statement = self._upsert_sql(columns)
        try:
            with self._data.transaction():
                self._data.execute(psycopg.sql.SQL("EXPLAIN ") + statement, [None] * len(columns))
        except psycopg.errors.InvalidColumnReference as exc:
            msg = (
                f"{self._where}: upsert needs a unique index or primary key on exactly "
                f"{self._sink.key_columns}: {_one_line(exc)}"
            )
            raise PostgresSinkError(msg) from exc
        except psycopg.errors.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            msg = f"{self._where}: the upsert statement is invalid for this table: {_one_line(exc)}"
            raise PostgresSinkError(msg) from exc

    def _start_fresh(self) -> None:
        ctx = self.ctx
        earlier = self._control.execute(
            self._psycopg.sql.SQL(
                "SELECT count(*), max(prepared_at) FROM {} WHERE job = %s AND sink = %s AND target = %s "
                "AND attempt <> %s"
            ).format(self._marker_ident),
            (ctx.job_name, ctx.uid, self._target, self._attempt),
        ).fetchone()
        if earlier[0]:
            if not ctx.overwrite_output:
                msg = (
                    f"{self._where}: an earlier run of job {ctx.job_name!r} committed "
                    f"{earlier[0]} transactions into this table (last at {earlier[1]}) and there "
                    f"is no checkpoint to resume from; rerun with --fresh to start over (the rows it "
                    f"wrote stay in the table; in insert mode delete them first)"
                )
                raise SinkOutputExistsError(msg)
            if ctx.subtask_index == 0:
                log.warning(
                    "%s: --fresh forgets %d commits of an earlier run; the rows they wrote stay in the table",
                    self._where,
                    earlier[0],
                )
                self._control.execute(
                    self._psycopg.sql.SQL(
                        "DELETE FROM {} WHERE job = %s AND sink = %s AND target = %s AND attempt <> %s"
                    ).format(self._marker_ident),
                    (ctx.job_name, ctx.uid, self._target, self._attempt),
                )
        if ctx.subtask_index == 0:
            self.abort_leftovers([])

    # ------------------------------------------------------------ writing

    def write(self, records: Any) -> None:
        """Add the records to the open transaction (insert) or to the per-key buffer (upsert).

        Upsert rows are merged per key in memory and written at the barrier:
        written at once, they would wait for the row locks that this subtask's
        own prepared, not yet committed transaction holds, and a local
        executor commits that transaction on the same thread.

        Raises:
            PostgresSinkError: a record does not fit the table (the message shows it).
            PostgresUnavailableError: the connection broke or a lock wait timed out.
        """
        groups = self._group(records)
        if self._sink.mode == "insert":
            for columns, rows in groups:
                self._copy(columns, rows)
                self._rows_in_txn += len(rows)
            return
        buffer = self._buffer
        for columns, rows in groups:
            positions = [columns.index(k) for k in self._sink.key_columns]
            for row in rows:
                try:
                    key = tuple(row[p] for p in positions)
                    merged = buffer.get(key)
                except TypeError as exc:
                    msg = (
                        f"{self._where}: record {_shorten(dict(zip(columns, row)))} has an "
                        f"unhashable value in the key columns {self._sink.key_columns}"
                    )
                    raise PostgresSinkError(msg) from exc
                if merged is None:
                    buffer[key] = dict(zip(columns, row))
                else:  # as sequential upserts would: later values win, column by column
                    merged.update(zip(columns, row))

    def _group(self, records: Any) -> list[tuple[tuple[str, ...], list[Any]]]:
        """Split records into runs of equal column lists: ``[(columns, rows)]``, in order."""
        batches = [records] if _is_arrow(records) else None
        if batches is None and records and _is_arrow(records[0]):
            batches = list(records)
        if batches is not None:
            groups = []
            for batch in batches:
                names = tuple(batch.schema.names)
                self._check_columns(names, batch)
                rows = list(zip(*(column.to_pylist() for column in batch.columns)))
                if rows:
                    groups.append((names, rows))
            return groups
        all_columns = tuple(self._columns)
        width = len(all_columns)
        groups: list[tuple[tuple[str, ...], list[Any]]] = []
        current: tuple[str, ...] | None = None
        rows: list[Any] = []
        for record in records:
            if isinstance(record, dict):
                columns = tuple(record)
                if columns != current:
                    self._check_columns(columns, record)
                row = tuple(record.values())
            elif isinstance(record, tuple | list):
                if len(record) != width:
                    msg = (
                        f"{self._where}: record {_shorten(record)} has {len(record)} fields, but "
                        f"the sink writes {width} columns {list(all_columns)}; pass a dict, or "
                        f"columns=[...] to PostgresSink"
                    )
                    raise PostgresSinkError(msg)
                columns, row = all_columns, record
            else:
                msg = (
                    f"{self._where}: record {_shorten(record)} of type {type(record).__name__} "
                    f"cannot be written; records must be dicts, tuples or Arrow record batches"
                )
                raise PostgresSinkError(msg)
            if columns != current:
                if rows:
                    groups.append((current, rows))  # type: ignore[arg-type]
                current, rows = columns, []
            rows.append(row)
        if rows:
            groups.append((current, rows))  # type: ignore[arg-type]
        return groups

    def _check_columns(self, columns: tuple[str, ...], record: Any) -> None:
        unknown = [c for c in columns if c not in self._column_set]
        if unknown or not columns:
            msg = (
                f"{self._where}: record {_shorten(record)} does not fit the table: "
                f"{'no column ' + ', '.join(map(repr, unknown)) if unknown else 'no columns'} "
                f"(the table's columns are {sorted(self._column_set)})"
            )
            raise PostgresSinkError(msg)
        if self._sink.mode == "upsert":
            missing = [k for k in self._sink.key_columns if k not in columns]
            if missing:
                msg = (
                    f"{self._where}: record {_shorten(record)} lacks the key column(s) {missing} "
                    f"that upsert needs"
                )
                raise PostgresSinkError(msg)

    def _copy(self, columns: tuple[str, ...], rows: list[Any]) -> None:
        """Stream rows into the open ``COPY`` (one per column list, up to COPY_ROWS rows).

        Keeping one ``COPY`` open across batches lets the server insert while
        the client sends, instead of waiting for the server after every batch.
        """
        stream = self._stream
        if stream is not None and (stream[0] != columns or len(stream[3]) >= COPY_ROWS):
            self._finish_copy()
            stream = None
        if stream is None:
            sql = self._psycopg.sql
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                self._table_ident, sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            cursor = self._data.cursor()
            manager = cursor.copy(statement)
            try:
                copy = manager.__enter__()
            except Exception as exc:
                cursor.close()
                raise self._write_error(columns, rows, exc) from exc
            stream = self._stream = (columns, cursor, (manager, copy), [])
        sent = stream[3]
        write_row = stream[2][1].write_row
        try:
            for row in rows:
                write_row(row)
        except Exception as exc:
            self._stream = None
            sent.extend(rows)
            self._abort_copy(stream, exc)
            raise self._write_error(columns, sent, exc) from exc
        sent.extend(rows)

    def _finish_copy(self) -> None:
        """End the open ``COPY``; the server reports a record that does not fit here at the latest."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        columns, cursor, (manager, _), sent = stream
        try:
            manager.__exit__(None, None, None)
        except Exception as exc:
            raise self._write_error(columns, sent, exc) from exc
        finally:
            cursor.close()

    @staticmethod
    def _abort_copy(stream: tuple, exc: BaseException) -> None:
        manager = stream[2][0]
        try:
            manager.__exit__(type(exc), exc, exc.__traceback__)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.debug("aborting COPY failed", exc_info=True)
        finally:
            stream[1].close()

    def _upsert_sql(self, columns: Sequence[str]) -> Any:
        sql = self._psycopg.sql
        keys = self._sink.key_columns
        others = [c for c in columns if c not in keys]
        if others:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in others
                )
            )
        else:
            action = sql.SQL("DO NOTHING")
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            self._table_ident,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            sql.SQL(", ").join(map(sql.Identifier, keys)),
            action,
        )

    def _flush_upserts(self) -> dict[Any, dict[str, Any]]:
        """Upsert the buffered rows into the open transaction; return them (for an abort)."""
        buffer, self._buffer = self._buffer, {}
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in buffer.values():
            groups.setdefault(tuple(row), []).append(tuple(row.values()))
        for columns, rows in groups.items():
            try:
                with self._data.cursor() as cursor:
                    cursor.executemany(self._upsert_sql(columns), rows)
            except Exception as exc:
                raise self._write_error(columns, rows, exc) from exc
            self._rows_in_txn += len(rows)
        return buffer

    def _write_error(self, columns: tuple[str, ...], rows: list[Any], exc: BaseException) -> Exception:
        """Turn a failed write into a one-line error; for a bad record, find and show it."""
        psycopg = self._psycopg
        if isinstance(exc, psycopg.OperationalError | psycopg.errors.LockNotAvailable):
            return self._unavailable("while writing", exc)
        bad = _copy_line_record(exc, rows) if self._sink.mode == "insert" else None
        if bad is None:
            bad = self._find_bad_record(columns, rows)
        shown = _shorten(dict(zip(columns, bad))) if bad is not None else "(not identified)"
        msg = (
            f"{self._where}: a record does not fit the table: {_one_line(exc)}; record "
            f"{shown}; nothing of the open transaction was committed"
        )
        return PostgresSinkError(msg)

    def _find_bad_record(self, columns: tuple[str, ...], rows: list[Any]) -> Any:
        """Retry the rows one by one in a transaction that is rolled back; return the first that fails.

        Runs only on the failure path: the attempt fails anyway, and its open
        transaction (already aborted by the error) holds nothing that a restore
        would not write again.
        """
        psycopg = self._psycopg
        sql = psycopg.sql
        data = self._data
        try:
            data.rollback()
            if self._sink.mode == "upsert":
                statement = self._upsert_sql(columns)
            else:
                statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    self._table_ident,
                    sql.SQL(", ").join(map(sql.Identifier, columns)),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                )
            found = None
            with data.transaction(force_rollback=True):
                for row in rows[:10000]:
                    try:
                        with data.transaction():
                            data.execute(statement, row)
                    except psycopg.Error:
                        found = row
                        break
            return found
        except Exception:  # noqa: BLE001 - diagnosis only; the original error is raised
            log.debug("%s: could not identify the bad record", self._where, exc_info=True)
            return None
        finally:
            self._rows_in_txn = 0

    # ------------------------------------------------------------ two-phase commit

    def _gid(self, checkpoint_id: int) -> str:
        return f"{self._prefix}{self.ctx.subtask_index}:{checkpoint_id}:{self._attempt}"

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Write the marker row and ``PREPARE TRANSACTION``; None when nothing was written.

        Raises:
            PostgresUnavailableError: the connection broke; the attempt restarts
                and a later one rolls back whatever this one prepared.
        """
        self._finish_copy()
        flushed = self._flush_upserts() if self._buffer else {}
        if self._rows_in_txn == 0:
            return None
        ctx = self.ctx
        gid = self._gid(checkpoint_id)
        sql = self._psycopg.sql
        try:
            self._data.execute(
                sql.SQL(
                    "INSERT INTO {} (gid, job, sink, subtask, checkpoint_id, attempt, target) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
                ).format(self._marker_ident),
                (gid, ctx.job_name, ctx.uid, ctx.subtask_index, checkpoint_id, self._attempt, self._target),
            )
            self._data.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except self._psycopg.OperationalError as exc:
            msg = f"while preparing checkpoint {checkpoint_id}"
            raise self._unavailable(msg, exc) from exc
        ctx.crash_point("after_prepare_before_ack")
        rows, self._rows_in_txn = self._rows_in_txn, 0
        if flushed:
            self._prepared_upserts[checkpoint_id] = flushed
        return {"gid": gid, "checkpoint_id": checkpoint_id, "subtask": ctx.subtask_index, "rows": rows}

    def commit(self, committable: dict[str, Any]) -> None:
        """``COMMIT PREPARED`` the committable's gid; idempotent by the decision table.

        A broken control connection is reopened and the commit retried: its
        outcome was unknown, and the decision table resolves it.

        Raises:
            SinkCommitError: the gid is neither prepared nor marked committed,
                so the rows of a completed checkpoint are lost.
            PostgresUnavailableError: the server stayed unreachable.
        """
        psycopg = self._psycopg
        for attempt in range(3):
            try:
                self._commit_once(committable)
                return
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    msg = f"while committing {committable['gid']!r}"
                    raise self._unavailable(msg, exc) from exc
                log.warning(
                    "%s: commit of %s failed (%s); reconnecting",
                    self._where,
                    committable["gid"],
                    _one_line(exc),
                )
                self._close_quietly(self._control)
                time.sleep(0.2 * (attempt + 1))
                self._control = self._connect(autocommit=True)

    def _commit_once(self, committable: dict[str, Any]) -> None:
        psycopg = self._psycopg
        sql = psycopg.sql
        gid = committable["gid"]
        self.ctx.crash_point("mid_commit")
        for _ in range(50):
            try:
                self._control.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
            except psycopg.errors.UndefinedObject:
                break  # not prepared (any more): the marker row decides
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.1)  # "is busy": a dying session still holds it
                continue
            self.ctx.crash_point("after_commit_prepared_before_bookkeeping")
            self._prepared_upserts.pop(committable["checkpoint_id"], None)
            return
        marker = self._control.execute(
            sql.SQL("SELECT 1 FROM {} WHERE gid = %s").format(self._marker_ident), (gid,)
        ).fetchone()
        if marker is not None:
            self._prepared_upserts.pop(committable["checkpoint_id"], None)
            return  # committed earlier (by an attempt that died before its bookkeeping)
        msg = (
            f"{self._where}: checkpoint {committable['checkpoint_id']} completed, but its "
            f"prepared transaction {gid!r} ({committable.get('rows', '?')} rows of subtask "
            f"{committable['subtask']}) is neither prepared nor committed (no marker row in "
            f"{self._sink.bookkeeping_table}): something rolled it back and its rows are lost; "
            f"find who ran ROLLBACK PREPARED, then rerun with --fresh"
        )
        raise SinkCommitError(msg)

    def snapshot_state(self, checkpoint_id: int) -> Any:
        """Pre-commit and snapshot (see the base class); remember the latest snapshot's id."""
        snapshot = super().snapshot_state(checkpoint_id)
        self._last_snapshot = checkpoint_id
        return snapshot

    def notify_checkpoint_aborted(self, checkpoint_id: int) -> None:
        """Upsert mode: roll back the aborted checkpoint's transaction and write its rows again.

        Its prepared transaction holds row locks that the next transaction
        would wait for. Safe only while no later snapshot holds its
        committable (else a restore from that snapshot would find it gone):
        then it stays pending and the next completed checkpoint commits it.
        """
        rows = self._prepared_upserts.get(checkpoint_id)
        committable = self._pending.get(checkpoint_id)
        if rows is None or committable is None or self._last_snapshot > checkpoint_id:
            return
        sql = self._psycopg.sql
        try:
            self._control.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(committable["gid"])))
        except self._psycopg.errors.UndefinedObject:
            pass
        except self._psycopg.OperationalError as exc:
            msg = f"while rolling back aborted checkpoint {checkpoint_id}"
            raise self._unavailable(msg, exc) from exc
        del self._pending[checkpoint_id]
        del self._prepared_upserts[checkpoint_id]
        newer, self._buffer = self._buffer, rows
        for key, row in newer.items():
            if key in rows:
                rows[key].update(row)
            else:
                rows[key] = row

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Roll back every prepared transaction of this job and sink that nothing owes.

        Kept: gids of a committable in ``keep`` (a restored checkpoint still
        owes them) and gids of the current attempt. Gids of other jobs, other
        sinks and other databases are never touched.
        """
        psycopg = self._psycopg
        sql = psycopg.sql
        kept = {c["gid"] for c in keep if isinstance(c, dict) and "gid" in c}
        current = f":{self._attempt}"
        try:
            gids = [
                row[0]
                for row in self._control.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                    "AND starts_with(gid, %s) ORDER BY prepared",
                    (self._prefix,),
                ).fetchall()
            ]
            doomed = [g for g in gids if g not in kept and not g.endswith(current)]
            for gid in doomed:
                try:
                    self._control.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
                except psycopg.errors.UndefinedObject:
                    pass  # finished by someone else meanwhile
        except psycopg.OperationalError as exc:
            msg = "while rolling back leftovers"
            raise self._unavailable(msg, exc) from exc
        if doomed:
            log.info(
                "%s: rolled back %d prepared transactions of attempts that did not complete their checkpoint",
                self._where,
                len(doomed),
            )

    # ------------------------------------------------------------ helpers

    def _unavailable(self, when: str, exc: BaseException) -> PostgresUnavailableError:
        msg = f"{self._where}: PostgreSQL failed {when}: {_one_line(exc)}"
        return PostgresUnavailableError(msg)

    @staticmethod
    def _close_quietly(conn: Any) -> None:
        if conn is None:
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - close must not raise
            log.debug("closing a PostgreSQL connection failed", exc_info=True)

    def close(self) -> None:
        """Close both connections; the open (unprepared) transaction is rolled back by the server."""
        self._stream = None
        data, self._data = self._data, None
        control, self._control = self._control, None
        self._close_quietly(data)
        self._close_quietly(control)


_COPY_LINE = re.compile(r"\bCOPY\b.*?, line (\d+)")


def _copy_line_record(exc: BaseException, rows: list[Any]) -> Any:
    """Return the row that a ``COPY`` error names by line number (1-based), if any."""
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    match = _COPY_LINE.search(context)
    if match and 0 < int(match.group(1)) <= len(rows):
        return rows[int(match.group(1)) - 1]
    return None


def _is_arrow(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("pyarrow") and hasattr(value, "schema") and hasattr(value, "columns")
