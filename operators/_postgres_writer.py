"""One subtask's writer of a PostgresSink: open, write, pre-commit, commit, abort, close.

The writer sequences the steps and turns failures into the sink's errors; it
leaves the data transaction's states to ``_postgres_txn``, statements to
``_postgres_sql``, gids and markers to ``_postgres_commits`` and record shapes
to ``_postgres_rows``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from onceflow.operators import _postgres_sql as statements
from onceflow.operators._postgres_commits import CommitBook, CommitOutcome, attempt_tag
from onceflow.operators._postgres_errors import (
    PostgresSinkError,
    PostgresUnavailableError,
    one_line,
    shorten,
)
from onceflow.operators._postgres_rows import RowShape, UpsertBuffer, copy_line_record, runs_by_columns
from onceflow.operators._postgres_txn import DataTransaction, close_quietly, connect, import_psycopg
from onceflow.operators.base import RuntimeContext, TwoPhaseCommitWriter
from onceflow.operators.errors import SinkCommitError, SinkOutputExistsError

if TYPE_CHECKING:
    from onceflow.operators.postgres import PostgresSink

log = logging.getLogger("onceflow")
_T = TypeVar("_T")

_COMMIT_TRIES = 3
"""``commit`` tries, reconnecting the control connection in between."""


class PostgresSinkWriter(TwoPhaseCommitWriter):
    """One subtask's transactional writer of a :class:`PostgresSink`.

    Cost: insert mode, per batch one ``COPY`` and per record one ``write_row``;
    upsert mode, per batch one pipelined ``executemany``. Per checkpoint one
    marker insert, one ``PREPARE TRANSACTION`` and later one ``COMMIT PREPARED``.
    """

    def __init__(self, sink: PostgresSink) -> None:
        super().__init__()
        self._sink = sink
        self._where = f"PostgresSink(table {sink.table!r})"
        self._psycopg: Any = None
        self._txn: DataTransaction | None = None
        self._control: Any = None
        self._table_ident: Any = None
        self._book: CommitBook | None = None
        self._shape: RowShape | None = None
        self._buffer = UpsertBuffer(sink.key_columns, self._where)
        self._prepared_upserts: dict[int, dict[Any, dict[str, Any]]] = {}
        """Upsert mode: the rows of each prepared, not yet committed transaction."""
        self._last_snapshot = -1
        self._attempt = ""

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
        self._buffer.where = self._where
        self._attempt = attempt_tag(ctx.attempt_id)
        self._psycopg = import_psycopg()
        # Step 1
        self._txn = DataTransaction(self._connect(autocommit=False), self._write_error, self._where)
        self._control = self._connect(autocommit=True)
        try:
            # Step 2
            self._check_prepared_transactions()
            # Step 3
            self._resolve_table()
            self._opened(self._book).ensure_marker_table(self._control)
            if sink.mode == "upsert":
                self._check_upsert_target()
            # Step 4
            if ctx.restored_checkpoint_id is None:
                self._start_fresh()
        except self._psycopg.OperationalError as exc:
            msg = "while checking the table"
            raise self._unavailable(msg, exc) from exc

    def _connect(self, *, autocommit: bool) -> Any:
        ctx = self.ctx
        sink = self._sink
        name = sink.application_name or f"onceflow:{ctx.job_name}:{ctx.uid}:{ctx.subtask_index}:{sink.table}"
        return connect(
            sink.dsn,
            autocommit=autocommit,
            application_name=name,
            connect_timeout=sink.connect_timeout,
            lock_timeout=sink.lock_timeout,
            where=self._where,
        )

    def _check_prepared_transactions(self) -> None:
        value = self._control.execute(statements.SHOW_MAX_PREPARED).fetchone()[0]
        if int(value) == 0:
            msg = (
                f"{self._where}: the server has max_prepared_transactions = 0, so it cannot "
                f"prepare transactions (two-phase commit). Fix: run ALTER SYSTEM SET "
                f"max_prepared_transactions = 64; then restart PostgreSQL"
            )
            raise PostgresSinkError(msg)

    def _resolve_table(self) -> None:
        sink = self._sink
        control = self._control
        try:
            row = control.execute(statements.RESOLVE_TABLE, (sink.table,)).fetchone()
        except self._psycopg.errors.InvalidName as exc:
            msg = f"{self._where}: {sink.table!r} is not a valid table name: {one_line(exc)}"
            raise PostgresSinkError(msg) from exc
        if row is None:
            database = control.execute("SELECT current_database()").fetchone()[0]
            msg = (
                f"{self._where}: table {sink.table!r} does not exist in database "
                f"{database!r} (search_path {control.execute('SHOW search_path').fetchone()[0]!r}); "
                f"create it first"
            )
            raise PostgresSinkError(msg)
        schema, name, oid = row
        ctx = self.ctx
        self._book = CommitBook(
            job=ctx.job_name,
            sink=ctx.uid,
            subtask=ctx.subtask_index,
            attempt=self._attempt,
            target=f"{schema}.{name}",
            marker=statements.identifier(schema, sink.bookkeeping_table),
        )
        self._table_ident = statements.identifier(schema, name)
        columns = [r[0] for r in control.execute(statements.WRITABLE_COLUMNS, (oid,)).fetchall()]
        wanted = list(sink.columns or columns)
        unknown = [c for c in wanted + sink.key_columns if c not in columns]
        if unknown:
            msg = (
                f"{self._where}: table {schema}.{name} has no (writable) column "
                f"{', '.join(map(repr, unknown))}; its columns are {columns}"
            )
            raise PostgresSinkError(msg)
        self._shape = RowShape(
            columns=tuple(wanted),
            table_columns=frozenset(columns),
            key_columns=tuple(sink.key_columns) if sink.mode == "upsert" else (),
            where=self._where,
        )

    def _check_upsert_target(self) -> None:
        """EXPLAIN the upsert statement: fails now, not mid-run, without a matching unique index."""
        psycopg = self._psycopg
        columns = self._opened(self._shape).columns
        try:
            self._opened(self._txn).explain(self._upsert_statement(columns), [None] * len(columns))
        except psycopg.errors.InvalidColumnReference as exc:
            msg = (
                f"{self._where}: upsert needs a unique index or primary key on exactly "
                f"{self._sink.key_columns}: {one_line(exc)}"
            )
            raise PostgresSinkError(msg) from exc
        except psycopg.errors.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            msg = f"{self._where}: the upsert statement is invalid for this table: {one_line(exc)}"
            raise PostgresSinkError(msg) from exc

    def _start_fresh(self) -> None:
        ctx = self.ctx
        book = self._opened(self._book)
        earlier = book.earlier_commits(self._control)
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
                book.forget_earlier_commits(self._control)
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
        runs = self._opened(self._shape).runs(records)
        if self._sink.mode == "insert":
            txn = self._opened(self._txn)
            for columns, rows in runs:
                txn.copy(self._table_ident, columns, rows)
            return
        self._buffer.add(runs)

    def _upsert_statement(self, columns: Sequence[str]) -> Any:
        return statements.upsert_into(self._table_ident, columns, self._sink.key_columns)

    def _flush_upserts(self) -> dict[Any, dict[str, Any]]:
        """Upsert the buffered rows into the open transaction; return them (for an abort)."""
        buffer = self._buffer.take()
        txn = self._opened(self._txn)
        for columns, rows in runs_by_columns(buffer):
            txn.execute_many(self._upsert_statement(columns), columns, rows)
        return buffer

    def _write_error(self, columns: tuple[str, ...], rows: list[Any], exc: BaseException) -> Exception:
        """Turn a failed write into a one-line error; for a bad record, find and show it."""
        psycopg = self._psycopg
        if isinstance(exc, psycopg.OperationalError | psycopg.errors.LockNotAvailable):
            return self._unavailable("while writing", exc)
        bad = copy_line_record(exc, rows) if self._sink.mode == "insert" else None
        if bad is None:
            if self._sink.mode == "upsert":
                statement = self._upsert_statement(columns)
            else:
                statement = statements.insert_into(self._table_ident, columns)
            bad = self._opened(self._txn).first_failing_row(statement, rows)
        shown = shorten(dict(zip(columns, bad))) if bad is not None else "(not identified)"
        msg = (
            f"{self._where}: a record does not fit the table: {one_line(exc)}; record "
            f"{shown}; nothing of the open transaction was committed"
        )
        return PostgresSinkError(msg)

    # ------------------------------------------------------------ two-phase commit

    def pre_commit(self, checkpoint_id: int) -> dict[str, Any] | None:
        """Write the marker row and ``PREPARE TRANSACTION``; None when nothing was written.

        Raises:
            PostgresUnavailableError: the connection broke; the attempt restarts
                and a later one rolls back whatever this one prepared.
        """
        txn = self._opened(self._txn)
        txn.finish_copy()
        flushed = self._flush_upserts() if self._buffer else {}
        if txn.rows == 0:
            return None
        ctx = self.ctx
        book = self._opened(self._book)
        gid = book.gid(checkpoint_id)
        try:
            rows = txn.prepare(
                statements.insert_marker(book.marker), book.marker_row(gid, checkpoint_id), gid
            )
        except self._psycopg.OperationalError as exc:
            msg = f"while preparing checkpoint {checkpoint_id}"
            raise self._unavailable(msg, exc) from exc
        ctx.crash_point("after_prepare_before_ack")
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
        for attempt in range(_COMMIT_TRIES):
            try:
                self._commit_once(committable)
                return
            except psycopg.OperationalError as exc:
                if attempt == _COMMIT_TRIES - 1:
                    msg = f"while committing {committable['gid']!r}"
                    raise self._unavailable(msg, exc) from exc
                log.warning(
                    "%s: commit of %s failed (%s); reconnecting",
                    self._where,
                    committable["gid"],
                    one_line(exc),
                )
                close_quietly(self._control)
                time.sleep(0.2 * (attempt + 1))
                self._control = self._connect(autocommit=True)

    def _commit_once(self, committable: dict[str, Any]) -> None:
        gid = committable["gid"]
        self.ctx.crash_point("mid_commit")
        outcome = self._opened(self._book).commit(self._control, gid, crash_point=self.ctx.crash_point)
        if outcome is not CommitOutcome.LOST:
            self._prepared_upserts.pop(committable["checkpoint_id"], None)
            return
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
        try:
            self._opened(self._book).rollback(self._control, committable["gid"])
        except self._psycopg.OperationalError as exc:
            msg = f"while rolling back aborted checkpoint {checkpoint_id}"
            raise self._unavailable(msg, exc) from exc
        del self._pending[checkpoint_id]
        del self._prepared_upserts[checkpoint_id]
        self._buffer.put_back(rows)

    def last_committed_checkpoint(self) -> int | None:
        """Return the newest checkpoint whose transaction any subtask of this sink committed (marker rows).

        Raises:
            PostgresUnavailableError: the server cannot be reached.
        """
        try:
            return self._opened(self._book).last_committed_checkpoint(self._control)
        except self._psycopg.OperationalError as exc:
            msg = "while reading the last committed checkpoint"
            raise self._unavailable(msg, exc) from exc

    def abort_leftovers(self, keep: Sequence[Any]) -> None:
        """Roll back every prepared transaction of this job and sink that nothing owes.

        Kept: gids of a committable in ``keep`` (a restored checkpoint still
        owes them) and gids of the current attempt. Gids of other jobs, other
        sinks and other databases are never touched.
        """
        book = self._opened(self._book)
        try:
            doomed = book.leftovers(self._control, keep)
            for gid in doomed:
                book.rollback(self._control, gid)
        except self._psycopg.OperationalError as exc:
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
        msg = f"{self._where}: PostgreSQL failed {when}: {one_line(exc)}"
        return PostgresUnavailableError(msg)

    def _opened(self, part: _T | None) -> _T:
        """Return a part that ``open`` sets up (the data transaction, the commit book, the row shape)."""
        if part is None:
            msg = f"{self._where}: the writer is not open"
            raise PostgresSinkError(msg)
        return part

    def close(self) -> None:
        """Close both connections; the open (unprepared) transaction is rolled back by the server."""
        txn, self._txn = self._txn, None
        control, self._control = self._control, None
        if txn is not None:
            txn.close()
        close_quietly(control)
