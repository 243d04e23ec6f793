"""SQL text of the PostgreSQL sink: quoted identifiers, write statements, marker table, 2PC commands.

Pure: every function returns a statement (a ``psycopg.sql.Composed`` or a
plain string with ``%s`` placeholders) and runs nothing; the writer and the
commit log execute them. Identifiers always go through ``sql.Identifier`` and
gids through ``sql.Literal``, never string formatting, because table names come
from the user and ``PREPARE TRANSACTION`` takes no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHOW_MAX_PREPARED = "SHOW max_prepared_transactions"
RESOLVE_TABLE = (
    "SELECT n.nspname, c.relname, c.oid FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)"
)
"""``(schema, name, oid)`` of a table name resolved like SQL does (search_path, case folding)."""
WRITABLE_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
    "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
)
"""The columns of a table oid that a write may fill (not dropped, not generated), in table order."""
LIST_PREPARED = (
    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
    "AND starts_with(gid, %s) ORDER BY prepared"
)
"""Prepared gids of this database with a given prefix, oldest first."""


def _sql() -> Any:
    from psycopg import sql  # lazily: onceflow imports without psycopg

    return sql


def identifier(schema: str, name: str) -> Any:
    """Return ``"schema"."name"``, quoted."""
    return _sql().Identifier(schema, name)


def _column_list(columns: Sequence[str]) -> Any:
    sql = _sql()
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def _placeholders(n: int) -> Any:
    sql = _sql()
    return sql.SQL(", ").join(sql.Placeholder() * n)


def copy_into(table: Any, columns: Sequence[str]) -> Any:
    """``COPY table (columns) FROM STDIN``."""
    return _sql().SQL("COPY {} ({}) FROM STDIN").format(table, _column_list(columns))


def insert_into(table: Any, columns: Sequence[str]) -> Any:
    """``INSERT INTO table (columns) VALUES (%s, ...)``: one row."""
    return (
        _sql()
        .SQL("INSERT INTO {} ({}) VALUES ({})")
        .format(table, _column_list(columns), _placeholders(len(columns)))
    )


def upsert_into(table: Any, columns: Sequence[str], key_columns: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET`` every non-key column (``DO NOTHING`` if none)."""
    sql = _sql()
    others = [c for c in columns if c not in key_columns]
    if others:
        action = sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in others
            )
        )
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        table,
        _column_list(columns),
        _placeholders(len(columns)),
        _column_list(key_columns),
        action,
    )


def explain(statement: Any) -> Any:
    """``EXPLAIN statement``: plans it (and checks names and the conflict target) without running it."""
    return _sql().SQL("EXPLAIN ") + statement


# -- the marker table -------------------------------------------------------------------------


def create_marker_table(marker: Any) -> Any:
    """Create the marker table if missing: one row per committed gid."""
    return (
        _sql()
        .SQL(
            "CREATE TABLE IF NOT EXISTS {} (gid text PRIMARY KEY, job text NOT NULL, "
            "sink text NOT NULL, subtask integer NOT NULL, checkpoint_id bigint NOT NULL, "
            "attempt text NOT NULL, target text NOT NULL, prepared_at timestamptz NOT NULL DEFAULT now())"
        )
        .format(marker)
    )


def insert_marker(marker: Any) -> Any:
    """Parameters: gid, job, sink, subtask, checkpoint_id, attempt, target."""
    return (
        _sql()
        .SQL(
            "INSERT INTO {} (gid, job, sink, subtask, checkpoint_id, attempt, target) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        .format(marker)
    )


def find_marker(marker: Any) -> Any:
    """Parameter: gid. A row means that gid's transaction committed."""
    return _sql().SQL("SELECT 1 FROM {} WHERE gid = %s").format(marker)


def count_earlier_commits(marker: Any) -> Any:
    """Parameters: job, sink, target, attempt. ``(count, latest prepared_at)`` of other attempts."""
    return (
        _sql()
        .SQL(
            "SELECT count(*), max(prepared_at) FROM {} WHERE job = %s AND sink = %s AND target = %s "
            "AND attempt <> %s"
        )
        .format(marker)
    )


def last_committed_checkpoint(marker: Any) -> Any:
    """Parameters: job, sink, target. The newest checkpoint id committed, by any subtask and attempt."""
    return (
        _sql()
        .SQL("SELECT max(checkpoint_id) FROM {} WHERE job = %s AND sink = %s AND target = %s")
        .format(marker)
    )


def forget_earlier_commits(marker: Any) -> Any:
    """Parameters: job, sink, target, attempt. Deletes the marker rows of other attempts."""
    return (
        _sql()
        .SQL("DELETE FROM {} WHERE job = %s AND sink = %s AND target = %s AND attempt <> %s")
        .format(marker)
    )


# -- two-phase commit -------------------------------------------------------------------------


def prepare_transaction(gid: str) -> Any:
    sql = _sql()
    return sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid))


def commit_prepared(gid: str) -> Any:
    sql = _sql()
    return sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid))


def rollback_prepared(gid: str) -> Any:
    sql = _sql()
    return sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid))
