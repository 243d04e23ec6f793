"""Connections of the PostgreSQL sink and the life cycle of its open data transaction.

:func:`connect` opens a connection and sorts a failure into "fix the DSN"
(:class:`PostgresSinkError`) or "the server is away" (:class:`PostgresUnavailableError`).
:class:`DataTransaction` owns the data connection's open transaction through
the states of :class:`TxnState`; each method is guarded by the states it may
run in. It does not decide what a write error means for a record or when to
commit: the writer does (it passes ``describe_error``).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from onceflow.operators import _postgres_sql as statements
from onceflow.operators._postgres_errors import PostgresSinkError, PostgresUnavailableError, one_line
from onceflow.operators.errors import SinkError
from onceflow.state_backends.errors import ErrorDomain

log = logging.getLogger("onceflow")

COPY_ROWS = 65536
"""Insert mode: rows per ``COPY`` statement at most (they are kept to name a record that fails)."""
FIND_BAD_RECORD_LIMIT = 10000
"""Rows retried one by one to find the record a failed write complains about."""
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
"""Fragments of libpq connect errors that a retry cannot fix."""


def import_psycopg() -> Any:
    """Import psycopg 3, or fail with how to install it."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the installation
        msg = (
            "PostgresSink needs psycopg 3; install it with pip install 'onceflow[postgres]' "
            "(or pip install 'psycopg[binary]')"
        )
        raise PostgresSinkError(msg) from exc
    return psycopg


def connect(
    dsn: str,
    *,
    autocommit: bool,
    application_name: str,
    connect_timeout: float,
    lock_timeout: float,
    where: str,
) -> Any:
    """Open one connection; a failure becomes a user or an unavailable error, in one line.

    ``application_name`` is cut to PostgreSQL's 63 bytes; ``lock_timeout``
    (seconds, 0 for none) applies to a transactional connection only.
    """
    options: dict[str, Any] = {
        "application_name": application_name.encode()[:63].decode("utf-8", "ignore"),
        "connect_timeout": max(1, int(connect_timeout)),
    }
    if not autocommit and lock_timeout > 0:
        options["options"] = f"-c lock_timeout={int(lock_timeout * 1000)}"
    psycopg = import_psycopg()
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **options)
    except psycopg.ProgrammingError as exc:  # a malformed DSN
        msg = f"{where}: the DSN is invalid: {one_line(exc)}"
        raise PostgresSinkError(msg) from exc
    except psycopg.OperationalError as exc:
        text = one_line(exc)
        where = f"{where}: cannot connect to PostgreSQL at {safe_dsn(dsn)}"
        if any(s in text.lower() for s in _USER_CONNECT_ERRORS):
            msg = f"{where}: {text}; check the user, password and database in the DSN"
            raise PostgresSinkError(msg) from exc
        msg = f"{where}: {text}; is the server running and reachable?"
        raise PostgresUnavailableError(msg) from exc


def safe_dsn(dsn: str) -> str:
    """Return the DSN without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
    except Exception:  # only for a message
        return "<unparsable dsn>"
    params.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(params.items())) or "<defaults>"


def close_quietly(conn: Any) -> None:
    """Close a connection; closing must never raise."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:
        log.debug("closing a PostgreSQL connection failed", exc_info=True)


# -- the data transaction ---------------------------------------------------------------------


class TxnState(enum.Enum):
    """Where the data connection's open transaction stands."""

    IDLE = "idle"
    """Connected; the open transaction holds no rows (fresh, just prepared, or rolled back)."""
    WRITING = "writing"
    """Rows were written into the open transaction (a ``COPY`` may still be streaming)."""
    FAILED = "failed"
    """A statement failed: the server aborted the transaction; only diagnosis and close remain."""
    CLOSED = "closed"
    """The connection is closed; the server rolled back whatever was not prepared."""


class TransactionStateError(SinkError):
    """The writer called a step of the data transaction in a state that forbids it: a bug."""

    domain = ErrorDomain.INTERNAL


_F = TypeVar("_F", bound=Callable[..., Any])


def _requires(*allowed: TxnState) -> Callable[[_F], _F]:
    """Guard a :class:`DataTransaction` method: run it only in one of ``allowed`` states."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def guarded(txn: DataTransaction, *args: Any, **kwargs: Any) -> Any:
            if txn.state not in allowed:
                names = ", ".join(s.name for s in allowed)
                msg = f"{method.__name__} needs the data transaction in {names}, but it is {txn.state.name}"
                raise TransactionStateError(msg)
            return method(txn, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


@dataclass
class _CopyStream:
    """An open ``COPY ... FROM STDIN`` and the rows sent into it (kept to name a bad record)."""

    columns: tuple[str, ...]
    cursor: Any
    manager: Any
    copy: Any
    sent: list[Any] = field(default_factory=list)


DescribeError = Callable[[tuple[str, ...], list[Any], BaseException], Exception]
"""``(columns, rows, error) -> the exception to raise`` for a failed write."""


class DataTransaction:
    """The data connection and its one open transaction: write, prepare, diagnose, close.

    Cost: insert mode, per batch one ``write_row`` per record into a ``COPY``
    kept open across batches; upsert mode, per flush one pipelined
    ``executemany`` per column list.
    """

    def __init__(self, conn: Any, describe_error: DescribeError, where: str) -> None:
        self.conn = conn
        self.where = where
        self.state = TxnState.IDLE
        self.rows = 0
        """Rows written into the open transaction."""
        self._describe_error = describe_error
        self._stream: _CopyStream | None = None

    @_requires(TxnState.IDLE, TxnState.WRITING)
    def copy(self, table: Any, columns: tuple[str, ...], rows: list[Any]) -> None:
        """Stream rows into the open ``COPY`` (one per column list, up to COPY_ROWS rows).

        Keeping one ``COPY`` open across batches lets the server insert while
        the client sends, instead of waiting for the server after every batch.
        """
        stream = self._stream
        if stream is not None and (stream.columns != columns or len(stream.sent) >= COPY_ROWS):
            self.finish_copy()
            stream = None
        if stream is None:
            cursor = self.conn.cursor()
            manager = cursor.copy(statements.copy_into(table, columns))
            try:
                copy = manager.__enter__()
            except Exception as exc:
                cursor.close()
                self.state = TxnState.FAILED
                raise self._describe_error(columns, rows, exc) from exc
            stream = self._stream = _CopyStream(columns, cursor, manager, copy)
        write_row = stream.copy.write_row
        try:
            for row in rows:
                write_row(row)
        except Exception as exc:
            self._stream = None
            stream.sent.extend(rows)
            self.state = TxnState.FAILED
            _abort_copy(stream, exc)
            raise self._describe_error(columns, stream.sent, exc) from exc
        stream.sent.extend(rows)
        self.rows += len(rows)
        self.state = TxnState.WRITING

    def finish_copy(self) -> None:
        """End the open ``COPY``; the server reports a record that does not fit here at the latest."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.manager.__exit__(None, None, None)
        except Exception as exc:
            self.state = TxnState.FAILED
            raise self._describe_error(stream.columns, stream.sent, exc) from exc
        finally:
            stream.cursor.close()

    @_requires(TxnState.IDLE, TxnState.WRITING)
    def execute_many(self, statement: Any, columns: tuple[str, ...], rows: list[Any]) -> None:
        """Run ``statement`` once per row, pipelined, in the open transaction."""
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(statement, rows)
        except Exception as exc:
            self.state = TxnState.FAILED
            raise self._describe_error(columns, rows, exc) from exc
        self.rows += len(rows)
        self.state = TxnState.WRITING

    @_requires(TxnState.IDLE)
    def explain(self, statement: Any, params: Sequence[Any]) -> None:
        """Plan ``statement`` in a transaction of its own, without running it."""
        with self.conn.transaction():
            self.conn.execute(statements.explain(statement), params)

    @_requires(TxnState.WRITING)
    def prepare(self, marker_insert: Any, marker_row: Sequence[Any], gid: str) -> int:
        """Add the marker row and ``PREPARE TRANSACTION gid``; return the rows it holds.

        The connection then starts a new, empty transaction. Errors propagate
        unchanged (the writer sorts them).
        """
        try:
            self.conn.execute(marker_insert, marker_row)
            self.conn.execute(statements.prepare_transaction(gid))
        except Exception:
            self.state = TxnState.FAILED
            raise
        rows, self.rows = self.rows, 0
        self.state = TxnState.IDLE
        return rows

    def first_failing_row(self, statement: Any, rows: list[Any]) -> Any:
        """Retry the rows one by one in a transaction that is rolled back; return the first that fails.

        Runs only on the failure path: the attempt fails anyway, and its open
        transaction (already aborted by the error) holds nothing that a restore
        would not write again. Returns None when no row fails on its own or
        the diagnosis itself fails.
        """
        psycopg = import_psycopg()
        conn = self.conn
        try:
            conn.rollback()
            found = None
            with conn.transaction(force_rollback=True):
                for row in rows[:FIND_BAD_RECORD_LIMIT]:
                    try:
                        with conn.transaction():
                            conn.execute(statement, row)
                    except psycopg.Error:
                        found = row
                        break
            return found
        except Exception:  # diagnosis only; the original error is raised
            log.debug("%s: could not identify the bad record", self.where, exc_info=True)
            return None
        finally:
            self.rows = 0
            self.state = TxnState.IDLE

    def close(self) -> None:
        """Close the connection; the server rolls back the open (unprepared) transaction."""
        self._stream = None
        conn, self.conn = self.conn, None
        self.state = TxnState.CLOSED
        close_quietly(conn)


def _abort_copy(stream: _CopyStream, exc: BaseException) -> None:
    try:
        stream.manager.__exit__(type(exc), exc, exc.__traceback__)
    except Exception:  # the original error is the one to report
        log.debug("aborting COPY failed", exc_info=True)
    finally:
        stream.cursor.close()
