"""Tables tokenlane's Python layer keeps beside the ledger's own, in the same SQLite file.

Alert marks and request tags are written rarely or in bulk and read by reports; they do not need
the C++ ledger, only the same file (so every worker process and ``tokenlane report`` see them).
One connection per process, guarded by a lock: callers are the ledger thread and worker threads.
With the ledger on PostgreSQL they are tables of the same database (:class:`PgSidecar`, the
queries written once, in SQLite's words, translated), so every replica sees them.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from .pgsql import is_postgres_url, postgres_dialect, redacted_url

log = logging.getLogger("tokenlane")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
  id             TEXT PRIMARY KEY,
  principal      TEXT NOT NULL,
  level          TEXT NOT NULL,           -- tenant today; org | team | key | user with the hierarchy
  kind           TEXT NOT NULL,           -- threshold | forecast
  threshold      REAL NOT NULL,           -- fraction of the limit (forecast: 1.0)
  period         TEXT NOT NULL,           -- the budget window: hour | day | month | total
  window_start   INTEGER NOT NULL,        -- Unix seconds; with the rest: fires once per window
  spent_pico_usd INTEGER NOT NULL,
  limit_pico_usd INTEGER NOT NULL,
  reason         TEXT NOT NULL,           -- spend | refused | forecast
  at             REAL NOT NULL,
  payload        TEXT NOT NULL,           -- the JSON every channel received
  delivery       TEXT NOT NULL,           -- none (no webhook) | pending | delivered | failed
  attempts       INTEGER NOT NULL DEFAULT 0,
  last_error     TEXT,
  delivered_at   REAL,
  UNIQUE (principal, level, kind, threshold, window_start)
);
CREATE INDEX IF NOT EXISTS alerts_at ON alerts(at);
CREATE INDEX IF NOT EXISTS alerts_principal_at ON alerts(principal, at);

CREATE TABLE IF NOT EXISTS request_tags (
  request_id TEXT NOT NULL,
  key        TEXT NOT NULL,
  value      TEXT NOT NULL,
  PRIMARY KEY (request_id, key)
);
CREATE INDEX IF NOT EXISTS request_tags_key_value ON request_tags(key, value);
"""


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b >= ?`` and its parameters from (clause, value) pairs; None values are
    left out (an empty string when none is left)."""
    used = [(clause, value) for clause, value in conditions if value is not None]
    sql = " WHERE " + " AND ".join(clause for clause, _ in used) if used else ""
    return sql, [value for _, value in used]


class Sidecar:
    """The extra tables in the ledger's SQLite file (``":memory:"``: a private in-memory database)."""

    def __init__(self, path: str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self.before_read: Any = None  # as Ledger.before_read: reports see every answered request
        self._conn = self._open()
        self._ready = False
        with self._lock:
            self._prepare()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, check_same_thread=False,
                               isolation_level=None)  # autocommit; explicit BEGIN where needed
        conn.row_factory = sqlite3.Row
        return conn

    def _prepare(self) -> None:
        """Creates the tables. A read-only file is no reason not to start (the ledger refuses with
        503 meanwhile): the tables are created on first use once the file is writable."""
        try:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            self._ready = True
        except sqlite3.OperationalError as exc:
            if not _read_only(exc):
                raise
            log.error("tokenlane: %s is read-only (%s); its extra tables wait until it is writable", self.path, exc)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        if self.before_read is not None:
            self.before_read()
        with self._lock:
            if not self._ready:  # SQLite keeps a connection opened on a read-only file read-only
                self._conn.close()
                self._conn = self._open()
                self._prepare()
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                if _read_only(exc):
                    self._ready = False  # a new connection next time: the file may be writable by then
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PgSidecar:
    """The same tables in the ledger's PostgreSQL database, on the ledger's connection pool (see
    :meth:`tokenlane.pgledger.PostgresLedger.sidecar`). ``connection()`` yields a connection whose
    ``execute`` takes the SQLite queries of the callers: ``?`` parameters, ``date(x, 'unixepoch')``;
    rows are dicts, sums are ints (not Decimals). Unreachable: :class:`StorageError`."""

    def __init__(self, pool: Any, url: str) -> None:
        self.path = url  # (without its password) for messages
        self._pool = pool
        self.before_read: Any = None
        with pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7461636)")  # the ledger's migration lock: replicas start together
            for statement in re.sub(r"--[^\n]*", "", _SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(postgres_dialect(statement))

    @contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        from ._core import StorageError

        if self.before_read is not None:
            self.before_read()
        try:
            with self._pool.connection() as conn:
                conn.row_factory = _number_rows
                yield _PgConnection(conn)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StorageError(f"ledger {self.path} is unreachable: {exc}") from None

    def close(self) -> None:
        pass  # the pool is the ledger's


class _PgConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(_postgres_query(sql), params)

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self._conn.cursor()
        cur.executemany(_postgres_query(sql), rows)
        return cur


_UNIX_DATE = re.compile(r"date\(([\w.]+), 'unixepoch'\)")


def _postgres_query(sql: str) -> str:
    """SQLite's ``?`` and ``date(x, 'unixepoch')`` → PostgreSQL's (the only words the callers use
    that differ; they write upserts as ``ON CONFLICT`` and boolean sums as ``CASE``)."""
    sql = _UNIX_DATE.sub(r"to_char(to_timestamp(\1) AT TIME ZONE 'UTC', 'YYYY-MM-DD')", sql)
    return sql.replace("?", "%s")


def _number_rows(cursor: Any) -> Any:
    """psycopg rows as dicts, with NUMERIC sums as int (or float), as SQLite gives them."""
    names = [d.name for d in cursor.description or ()]

    def row(values: Any) -> dict[str, Any]:
        return {n: (int(v) if v == v.to_integral_value() else float(v)) if isinstance(v, Decimal) else v
                for n, v in zip(names, values)}
    return row


def open_sidecar(db: str) -> Any:
    """The sidecar of a ledger given by path or URL (``tokenlane report``): the SQLite file's own,
    or the PostgreSQL database's (its own small pool)."""
    if not is_postgres_url(db):
        return Sidecar(db.removeprefix("sqlite:///"))
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(db, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True)
    sidecar = PgSidecar(pool, redacted_url(db))
    sidecar.close = pool.close  # type: ignore[method-assign]
    return sidecar


def _read_only(exc: Exception) -> bool:
    """SQLite's "attempt to write a readonly database" (the file, or its directory, may not be written)."""
    return "readonly database" in str(exc)


__all__ = ["PgSidecar", "Sidecar", "open_sidecar", "where"]
