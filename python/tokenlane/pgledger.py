"""The ledger on PostgreSQL, for several replicas: ``Ledger("postgresql://user@host/db")``.

Same schema and migrations as the SQLite ledger (the C++ core's migration list, with SQLite's few
dialect words translated), same methods, same rows. Budget changes are single server-side
statements or one transaction, never read-modify-write in Python. Like the SQLite ledger every
method blocks (psycopg's pool, no GIL held while waiting): call it from a thread, as the runtime's
ledger writer does.

When PostgreSQL is unreachable, writes (request rows, settlements, releases) go to a local spool
(an SQLite file, synchronous=FULL, so a written entry survives a crash) and are replayed in order
once the database answers again. Every write carries a mark (a random id) that its transaction
inserts into ``tokenlane_writes``: a write whose connection failed may still have committed (the
server stopped between its commit and its answer), so it is spooled with its mark, and the replay
applies it only if the mark is not there yet, in one transaction with the mark. No write is ever
applied twice, not even a settlement (which adds to the spend), whether the first attempt or an
interrupted replay committed. The marks of writes that committed and were answered are deleted a
few seconds later (no spool holds them), the others after a week. Reads during an outage raise
:class:`StorageError`.

Budget reservations carry a lease. A reservation made with a ``hold`` (the request id) is recorded
in ``holds`` with its owner (the replica process) and an expiry ``lease_s`` ahead. Every
``lease_s / 3`` each replica runs one statement (:meth:`expire_holds`) that renews all of its own
holds and releases every other replica's expired ones at every level they reserved (their rows,
still unfinished, are marked failed): a replica killed with ``kill -9`` gives its reservations back
within the lease time, and its unfinished rows end (running: failed, queued: cancelled; each
replica renews a lease of its own in ``tokenlane_replicas`` in the same statement). Several
replicas may run it at once: a hold is deleted, and so released, once. Settling or releasing a
hold that has already expired frees nothing a second time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._core import InvalidArgumentError, StorageError
from ._core import Ledger as _CoreLedger
from .pgsql import postgres_dialect, redacted_url
from .recovery import owner_token
from .windows import budget_window, unix_seconds as _seconds

log = logging.getLogger("tokenlane")

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - the `scale` extra is not installed
    psycopg = None  # type: ignore[assignment]

_REQUEST_COLUMNS = (
    "id", "tenant", "user_id", "key_id", "route", "model", "status", "decision", "reason", "priority",
    "deadline_s", "max_tokens", "created_at", "started_at", "finished_at", "queue_ms", "est_input_tokens",
    "est_output_p50", "est_output_p90", "est_cost_pico_usd", "reserved_pico_usd", "input_tokens",
    "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_pico_usd", "error", "prompt_preview",
    "response_preview", "cache", "cache_saved_pico_usd", "prompt_cache_saved_pico_usd", "untrimmed_input_tokens",
    "end_user", "requested_model", "route_rule", "attempts", "fallbacks", "batch", "unrouted_cost_pico_usd",
    "owner")
_STATUSES = ("queued", "running", "succeeded", "failed", "rejected", "cancelled", "deferred")
_USER_COLUMNS = ("id, email, name, role, COALESCE(tenant, email) AS tenant, team, org, disabled <> 0 AS disabled, "
                 "created_at")
_BUDGET_COLUMNS = ("tenant, limit_pico_usd, limit_tokens, period AS window, window_start, spent_pico_usd, "
                   "reserved_pico_usd, spent_tokens, reserved_tokens, updated_at")
LOST = "replica lost: its lease expired"  # the error the lease sweep ends a row with
_KEY = re.compile(r"tl-[A-Za-z0-9_-]{40}")
_WRITES = ("insert_request", "update_request", "settle", "release")  # what the spool keeps
# Writes that are one statement (or one pipeline, which is one implicit transaction): they insert
# their mark themselves, with no BEGIN ... COMMIT around them.
_ONE_STATEMENT = ("statements", "records")
# A write's mark, inserted by the transaction that applies it (see the module docstring).
_MARK = "INSERT INTO tokenlane_writes (id, at) VALUES (%s, %s) ON CONFLICT DO NOTHING"
MARKS_KEPT_S = 7 * 86400.0  # a mark whose process died before it could delete it


def window_starts(now: float) -> dict[str, int]:
    """UTC start of the hour, day and month around ``now``, as the budget SQL's parameters."""
    return {"h": budget_window("hour", now)[0], "d": budget_window("day", now)[0], "m": budget_window("month", now)[0]}


# A budget row's window start for `now` and its spend counted in that window (SQL fragments).
_WS = "(CASE budgets.period WHEN 'hour' THEN %(h)s WHEN 'day' THEN %(d)s WHEN 'month' THEN %(m)s ELSE 0 END)"
_SPENT = f"(CASE WHEN {_WS} > budgets.window_start THEN 0 ELSE budgets.spent_pico_usd END)"
_SPENT_TOKENS = f"(CASE WHEN {_WS} > budgets.window_start THEN 0 ELSE budgets.spent_tokens END)"

# A conditional reservation of both units (pico-USD %(a)s, tokens %(k)s) and its audit event, one
# statement: both commit or neither.
_RESERVE = (f"WITH r AS (INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
            f"reserved_pico_usd, updated_at, reserved_tokens) VALUES (%(t)s, NULL, 'total', 0, 0, %(a)s, %(now)s, %(k)s) "
            f"ON CONFLICT (tenant) DO UPDATE SET spent_pico_usd = {_SPENT}, spent_tokens = {_SPENT_TOKENS}, "
            f"window_start = GREATEST(budgets.window_start, {_WS}), "
            f"reserved_pico_usd = budgets.reserved_pico_usd + %(a)s, "
            f"reserved_tokens = budgets.reserved_tokens + %(k)s, updated_at = %(now)s "
            f"WHERE (budgets.limit_pico_usd IS NULL OR {_SPENT} + budgets.reserved_pico_usd + %(a)s "
            f"<= budgets.limit_pico_usd) AND (budgets.limit_tokens IS NULL OR "
            f"{_SPENT_TOKENS} + budgets.reserved_tokens + %(k)s <= budgets.limit_tokens) RETURNING 1) "
            f"INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens) "
            f"SELECT %(t)s, 'reserve', %(a)s, NULL, %(now)s, %(k)s FROM r")

# The reservation at every level of a principal chain and its hold, as one server-side call: one
# round trip, one statement (all levels or none: a level without room raises, rolling back the
# levels before it; the error's detail is its index). Its statement per level is _RESERVE's.
_NO_ROOM = "TLNR0"  # the SQLSTATE of "a level has no room"
_RESERVE_ALL_FUNCTION = ("""CREATE OR REPLACE FUNCTION tokenlane_reserve_all(p_tenants TEXT[], p_a BIGINT, p_k BIGINT,
    p_now DOUBLE PRECISION, p_h BIGINT, p_d BIGINT, p_m BIGINT, p_hold TEXT, p_owner TEXT,
    p_expires DOUBLE PRECISION) RETURNS INTEGER LANGUAGE plpgsql AS $fn$
DECLARE
  i INTEGER;
  p_t TEXT;
BEGIN
  -- Every writer locks the budget rows it changes first, in name order: none waits for another
  -- in a circle (a deadlock, which PostgreSQL would end by rolling one back).
  PERFORM 1 FROM budgets WHERE tenant = ANY(p_tenants) ORDER BY tenant FOR UPDATE;
  FOR i IN 1 .. COALESCE(array_length(p_tenants, 1), 0) LOOP
    p_t := p_tenants[i];
    """ + _RESERVE % {"t": "p_t", "a": "p_a", "k": "p_k", "now": "p_now", "h": "p_h", "d": "p_d", "m": "p_m"} + """;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '""" + _NO_ROOM + """', MESSAGE = 'no room at a budget level',
        DETAIL = (i - 1)::TEXT;
    END IF;
  END LOOP;
  IF p_hold IS NOT NULL THEN
    INSERT INTO holds (request_id, owner, budgets, amount_pico_usd, created_at, expires_at, tokens)
    VALUES (p_hold, p_owner, array_to_json(p_tenants)::TEXT, p_a, p_now, p_expires, p_k)
    ON CONFLICT (request_id) DO NOTHING;
  END IF;
  RETURN -1;
END $fn$""")
_RESERVE_ALL = ("SELECT tokenlane_reserve_all(%(tenants)s, %(a)s, %(k)s, %(now)s, %(h)s, %(d)s, %(m)s, %(hold)s, "
                "%(owner)s, %(expires)s)")

# A batch of the runtime's ledger records (PostgresLedger.apply_journal) as one server-side call:
# one round trip, one statement, one transaction. p_records is the batch as a JSON array of the
# records as the runtime wrote them (no decoding in Python); p_mark the write's mark (NULL on a
# replay, whose transaction inserts it). Per record: the decided row (inserted once); with the final
# fields, the row inserted with them or updated to them (the columns the record names, no others),
# its hold ended and every level settled as _SETTLE_LEVEL does (the reservation freed only while the
# hold was in force). A final record whose row a final record finished already is skipped whole,
# settlement included: each is applied once, even when another replica adopted it from Redis while
# its own replica stalled, or both apply it at once; only the lease sweep's guess (LOST) is
# replaced. The check is the write's own WHERE, which PostgreSQL evaluates again on the newest row
# when a concurrent write got there first. The budget rows of the whole batch are locked first, in
# name order, as every writer of budgets does. Window starts (UTC hour, day, month of the record's time) are computed here,
# as budget_window() does. Returns how many records it applied.
_FINAL_SET = ", ".join(f"{c} = CASE WHEN v_fin ? '{c}' THEN excluded.{c} ELSE q.{c} END"
                       for c in _REQUEST_COLUMNS if c != "id")
_FINAL_UPDATE = ", ".join(f"{c} = CASE WHEN v_fin ? '{c}' THEN f.{c} ELSE q.{c} END"
                          for c in _REQUEST_COLUMNS if c != "id")
_V = {"h": "v_h", "d": "v_d", "m": "v_m"}
# A row no final record has finished yet (the lease sweep's ending is a guess a record replaces).
_OPEN = "(%(t)s.finished_at IS NULL OR %(t)s.error = '" + LOST + "')"
_APPLY_RECORDS_FUNCTION = ("""CREATE OR REPLACE FUNCTION tokenlane_apply_records(p_mark TEXT, p_at DOUBLE PRECISION,
    p_records JSONB) RETURNS INTEGER LANGUAGE plpgsql AS $fn$
DECLARE
  v_rec JSONB; v_fin JSONB; v_id TEXT; v_t TEXT; v_n INTEGER := 0;
  v_now DOUBLE PRECISION; v_h BIGINT; v_d BIGINT; v_m BIGINT;
  v_r BIGINT; v_x BIGINT; v_rk BIGINT; v_xk BIGINT; v_r0 BIGINT; v_rk0 BIGINT;
BEGIN
  IF p_mark IS NOT NULL THEN
    INSERT INTO tokenlane_writes (id, at) VALUES (p_mark, p_at) ON CONFLICT DO NOTHING;
  END IF;
  PERFORM 1 FROM budgets WHERE tenant IN (
      SELECT jsonb_array_elements_text(e.value->'budgets') FROM jsonb_array_elements(p_records) e
      WHERE jsonb_typeof(e.value->'budgets') = 'array') ORDER BY tenant FOR UPDATE;
  FOR v_rec IN SELECT value FROM jsonb_array_elements(p_records) LOOP
    v_id := v_rec->>'id';
    v_fin := v_rec->'final';
    IF v_fin IS NULL THEN
      INSERT INTO requests SELECT * FROM jsonb_populate_record(NULL::requests, v_rec->'row')
      ON CONFLICT (id) DO NOTHING;
    ELSE
      v_fin := v_fin - 'id';
      IF v_rec ? 'row' THEN
        INSERT INTO requests AS q SELECT * FROM jsonb_populate_record(NULL::requests,
            (v_rec->'row') || v_fin || jsonb_build_object('id', v_id))
        ON CONFLICT (id) DO UPDATE SET """ + _FINAL_SET + """
        WHERE """ + _OPEN % {"t": "q"} + """;
        CONTINUE WHEN NOT FOUND;
      ELSE
        UPDATE requests AS q SET """ + _FINAL_UPDATE + """
        FROM jsonb_populate_record(NULL::requests, v_fin) AS f WHERE q.id = v_id AND """ + _OPEN % {"t": "q"} + """;
        CONTINUE WHEN NOT FOUND AND EXISTS (SELECT 1 FROM requests WHERE id = v_id);
      END IF;
      IF jsonb_typeof(v_rec->'budgets') = 'array' AND jsonb_array_length(v_rec->'budgets') > 0 THEN
        v_now := (v_rec->>'now')::DOUBLE PRECISION;
        v_h := (floor(v_now / 3600) * 3600)::BIGINT;
        v_d := (floor(v_now / 86400) * 86400)::BIGINT;
        v_m := extract(epoch FROM date_trunc('month', to_timestamp(v_now) AT TIME ZONE 'UTC'))::BIGINT;
        v_x := COALESCE((v_rec->>'actual')::BIGINT, 0);
        v_xk := COALESCE((v_rec->>'tokens')::BIGINT, 0);
        -- The hold ends here: a sweeper that would release it finds it gone (or released it first,
        -- and then nothing is freed a second time).
        DELETE FROM holds WHERE request_id = v_id;
        IF FOUND THEN
          v_r := COALESCE((v_rec->>'reserved')::BIGINT, 0);
          v_rk := COALESCE((v_rec->>'reserved_tokens')::BIGINT, 0);
        ELSE
          v_r := 0; v_rk := 0;
        END IF;
        FOR v_t IN SELECT jsonb_array_elements_text(v_rec->'budgets') LOOP
          SELECT reserved_pico_usd, reserved_tokens INTO v_r0, v_rk0 FROM budgets WHERE tenant = v_t;
          INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, reserved_pico_usd,
              updated_at, spent_tokens) VALUES (v_t, NULL, 'total', 0, v_x, 0, v_now, v_xk)
          ON CONFLICT (tenant) DO UPDATE SET spent_pico_usd = """ + _SPENT % _V + """ + v_x,
            spent_tokens = """ + _SPENT_TOKENS % _V + """ + v_xk,
            window_start = GREATEST(budgets.window_start, """ + _WS % _V + """),
            reserved_pico_usd = GREATEST(budgets.reserved_pico_usd - v_r, 0),
            reserved_tokens = GREATEST(budgets.reserved_tokens - v_rk, 0), updated_at = v_now;
          INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens, reserved_tokens)
          VALUES (v_t, 'settle', v_x, CASE WHEN v_r0 IS NULL THEN 0 ELSE LEAST(v_r, v_r0) END, v_now, v_xk,
                  CASE WHEN v_rk0 IS NULL THEN 0 ELSE LEAST(v_rk, v_rk0) END);
        END LOOP;
      END IF;
    END IF;
    v_n := v_n + 1;
  END LOOP;
  RETURN v_n;
END $fn$""")
_APPLY_RECORDS = "SELECT tokenlane_apply_records(%s, %s, %s::jsonb) AS n"

# One level's settlement as one statement (no read on the client, so a batch of them is pipelined):
# frees the reservation (pico-USD %(r)s, tokens %(rk)s) only while the request's hold is in force
# (%(hold)s NULL: no hold); charges %(x)s pico-USD and %(xk)s tokens.
_HELD = "(%(hold)s::text IS NULL OR EXISTS (SELECT 1 FROM holds WHERE request_id = %(hold)s))"
_FREE = f"(CASE WHEN {_HELD} THEN %(r)s ELSE 0 END)"
_FREE_TOKENS = f"(CASE WHEN {_HELD} THEN %(rk)s ELSE 0 END)"
_SETTLE_LEVEL = (
    f"WITH old AS (SELECT reserved_pico_usd AS r0, reserved_tokens AS rk0 FROM budgets WHERE tenant = %(t)s "
    f"FOR UPDATE), "
    f"up AS (INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, reserved_pico_usd, "
    f"updated_at, spent_tokens) VALUES (%(t)s, NULL, 'total', 0, %(x)s, 0, %(now)s, %(xk)s) "
    f"ON CONFLICT (tenant) DO UPDATE SET "
    f"spent_pico_usd = {_SPENT} + %(x)s, spent_tokens = {_SPENT_TOKENS} + %(xk)s, "
    f"window_start = GREATEST(budgets.window_start, {_WS}), "
    f"reserved_pico_usd = GREATEST(budgets.reserved_pico_usd - {_FREE}, 0), "
    f"reserved_tokens = GREATEST(budgets.reserved_tokens - {_FREE_TOKENS}, 0), updated_at = %(now)s RETURNING 1) "
    f"INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens, reserved_tokens) "
    f"SELECT %(t)s, 'settle', %(x)s, COALESCE((SELECT LEAST({_FREE}, r0) FROM old), 0), %(now)s, %(xk)s, "
    f"COALESCE((SELECT LEAST({_FREE_TOKENS}, rk0) FROM old), 0)")

_MEASURES = """COUNT(*) AS requests,
 COUNT(*) FILTER (WHERE r.status = 'succeeded') AS succeeded,
 COUNT(*) FILTER (WHERE r.status = 'failed') AS failed,
 COUNT(*) FILTER (WHERE r.status = 'rejected') AS rejected,
 COALESCE(SUM(r.input_tokens), 0)::bigint AS input_tokens,
 COALESCE(SUM(r.output_tokens), 0)::bigint AS output_tokens,
 COALESCE(SUM(r.cached_input_tokens), 0)::bigint AS cached_input_tokens,
 COALESCE(SUM(r.reasoning_tokens), 0)::bigint AS reasoning_tokens,
 COALESCE(SUM(r.est_input_tokens), 0)::bigint AS est_input_tokens,
 COALESCE(SUM(r.est_output_p50), 0)::bigint AS est_output_p50,
 COALESCE(SUM(r.est_cost_pico_usd), 0)::bigint AS est_cost_pico_usd,
 COALESCE(SUM(r.cost_pico_usd), 0)::bigint AS cost_pico_usd,
 COALESCE(SUM(CASE WHEN r.output_tokens IS NOT NULL THEN r.est_output_p50 END), 0)::bigint AS est_output_p50_matched,
 COALESCE(SUM(CASE WHEN r.est_output_p50 IS NOT NULL THEN r.output_tokens END), 0)::bigint AS output_tokens_matched,
 COALESCE(SUM(CASE WHEN r.cost_pico_usd IS NOT NULL THEN r.est_cost_pico_usd END), 0)::bigint AS est_cost_pico_usd_matched,
 COALESCE(SUM(CASE WHEN r.est_cost_pico_usd IS NOT NULL THEN r.cost_pico_usd END), 0)::bigint AS cost_pico_usd_matched,
 SUM((r.cache = 'hit')::int)::bigint AS cache_hits,
 SUM((r.cache = 'miss')::int)::bigint AS cache_misses,
 COALESCE(SUM(r.cache_saved_pico_usd), 0)::bigint AS cache_saved_pico_usd,
 COALESCE(SUM(r.prompt_cache_saved_pico_usd), 0)::bigint AS prompt_cache_saved_pico_usd,
 AVG(r.queue_ms)::double precision AS avg_queue_ms,
 MAX(r.queue_ms) AS max_queue_ms"""


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant or len(tenant) > 200:
        raise InvalidArgumentError("tenant must be 1 to 200 characters")


def _check_amount(what: str, value: int, unit: str = "pico-USD") -> None:
    if not isinstance(value, int) or value < 0 or value > 1 << 61:
        raise InvalidArgumentError(f"{what} must be between 0 and 2^61 {unit}, got {value!r}")


_REAL_COLUMNS = {"deadline_s", "created_at", "started_at", "finished_at", "queue_ms"}
_TEXT_COLUMNS = {"id", "tenant", "route", "model", "status", "decision", "reason", "priority", "error",
                 "prompt_preview", "response_preview", "cache", "end_user", "requested_model", "route_rule", "owner"}


def _check_request_fields(fields: dict[str, Any]) -> None:
    """The checks the core's ledger makes, with its messages (one behaviour on both engines)."""
    for name, value in fields.items():
        if name not in _REQUEST_COLUMNS:
            raise InvalidArgumentError(f'unknown request field "{name}"')
        if value is None:
            if name in ("id", "status", "created_at"):
                raise InvalidArgumentError(f'request field "{name}" cannot be None')
            continue
        if not isinstance(value, (bool, int, float, str)):
            raise InvalidArgumentError(f'request field "{name}": value must be None, bool, int, float or str')
        if name in _TEXT_COLUMNS:
            if not isinstance(value, str):
                raise InvalidArgumentError(f'request field "{name}" must be a string')
        elif name in _REAL_COLUMNS:
            if isinstance(value, str) or not math.isfinite(value):
                raise InvalidArgumentError(f'request field "{name}" must be a finite number')
        elif not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgumentError(f'request field "{name}" must be an integer')
        elif value < 0:
            raise InvalidArgumentError(f'request field "{name}" must be >= 0')
        if name == "status" and value not in _STATUSES:
            raise InvalidArgumentError(f'unknown request status "{value}" (one of {", ".join(_STATUSES)})')
        if name == "cache" and value not in ("hit", "miss", "bypass"):
            raise InvalidArgumentError(f'unknown cache outcome "{value}" (one of hit, miss, bypass)')


class _Down(Exception):
    """PostgreSQL did not answer (connection refused, reset, pool timeout)."""


class _RolledBack(_Down):
    """PostgreSQL answered that it rolled the transaction back (a deadlock, a serialization
    failure): nothing of it committed, so it is run again at once. (An outage only after a few in
    a row.)"""


_ATTEMPTS = 5  # a transaction the server rolled back is run up to this many times


class Spool:
    """Ledger writes waiting for PostgreSQL: an append-only SQLite file, fsync'd on every append."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "op TEXT NOT NULL, args TEXT NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
        self.id: str = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]

    def append(self, op: str, args: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT INTO spool (op, args) VALUES (?, ?)", (op, json.dumps(args)))

    def head(self, n: int = 200) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, op, args FROM spool ORDER BY seq LIMIT ?", (n,)).fetchall()
        return [(seq, op, json.loads(args)) for seq, op, args in rows]

    def drop(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])


class PostgresLedger:
    """:class:`tokenlane.Ledger` on PostgreSQL (see the module docstring). ``spool`` is the file
    that keeps writes while the database is down (default: env ``TOKENLANE_SPOOL`` or
    ``tokenlane-spool.db`` in the working directory)."""

    # reserve_all is one statement (tokenlane_reserve_all) that needs no order with the writes the
    # runtime's ledger thread applies: callers may run it on threads of their own, beside them.
    reserves_concurrently = True

    def __init__(self, url: str, *, spool: str | None = None, pool_size: int = 8, timeout_s: float = 5.0,
                 open_timeout_s: float = 60.0, lease_s: float = 15.0, **_ignored: Any) -> None:
        if psycopg is None:
            raise StorageError("a postgresql:// ledger needs psycopg: pip install 'tokenlane[scale]'")
        self.url = url
        self._timeout = timeout_s
        self.lease_s = float(lease_s)  # of budget holds: see the module docstring
        # Two open from the start: the ledger thread's batches and the reservations beside them.
        self._pool = ConnectionPool(url, min_size=min(2, pool_size), max_size=pool_size, timeout=timeout_s, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))},
                                    name="tokenlane-ledger")
        try:
            self._pool.open(wait=True, timeout=open_timeout_s)  # a replica starting on a busy host
            self._migrate()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            self._pool.close()
            raise StorageError(f"cannot open ledger {redacted_url(url)}: {exc}") from None
        self._spool = Spool(spool or os.environ.get("TOKENLANE_SPOOL") or "tokenlane-spool.db")
        self._down = len(self._spool) > 0  # writes left from a previous run go first
        # Set by a runtime that writes behind (its ledger thread's flush), as on the SQLite ledger:
        # reads see every request this process answered or decided.
        self.before_read: Callable[[], Any] | None = None
        self._outage = threading.Lock()  # spooling vs. the replay's "spool empty: back to direct"
        self._done_marks: list[str] = []  # marks of writes no spool holds: deleted by the replay thread
        self._marks_lock = threading.Lock()
        self._stop = threading.Event()
        self._replayer = threading.Thread(target=self._replay_loop, name="tokenlane-spool", daemon=True)
        self._replayer.start()

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return redacted_url(self.url)

    def __repr__(self) -> str:
        return f"PostgresLedger({redacted_url(self.url)!r})"

    def close(self) -> None:
        self._stop.set()
        self._pool.close()

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _conn(self, *, transaction: bool = False, write: bool = False) -> Iterator[Any]:
        """A pooled connection (autocommit). ``transaction``: inside BEGIN ... COMMIT. ``write``
        (without ``transaction``): the caller writes in one statement or one pipeline, which is
        its own transaction. (Both mark a write for the tests that fail one.)"""
        try:
            with self._pool.connection() as conn:
                conn.row_factory = dict_row
                if transaction:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            if (getattr(exc, "sqlstate", None) or "").startswith("40"):  # class 40: transaction rollback
                raise _RolledBack(str(exc)) from None
            raise _Down(str(exc)) from None

    def _read(self, fn: Callable[[Any], Any], *, flush: bool = True) -> Any:
        if flush and self.before_read is not None:
            self.before_read()
        if self._down:
            raise StorageError(f"ledger {redacted_url(self.url)} is unreachable (writes are spooled until it returns)")
        for attempt in range(_ATTEMPTS):
            try:
                with self._conn() as conn:
                    return fn(conn)
            except _RolledBack as exc:
                if attempt + 1 < _ATTEMPTS:
                    continue
                raise StorageError(f"ledger {redacted_url(self.url)}: {exc}") from None
            except _Down as exc:
                raise StorageError(f"ledger {redacted_url(self.url)} is unreachable: {exc}") from None

    def _write(self, op: str, args: dict[str, Any]) -> Any:
        """A ledger write: straight to PostgreSQL, or to the spool while it is down (or has a
        backlog, so that order holds). A write whose connection fails is spooled with its mark:
        it may have committed all the same, and then its replay applies nothing."""
        mark = uuid.uuid4().hex
        for attempt in range(_ATTEMPTS if not self._down else 0):
            try:
                # A batch of statements is one pipeline, which is its own (implicit) transaction on
                # an autocommit connection: one round trip, the mark in it.
                with self._conn(transaction=op not in _ONE_STATEMENT, write=True) as conn:
                    if op in _ONE_STATEMENT:
                        result = getattr(self, "_apply_" + op)(conn, **args, mark=mark)
                    else:
                        conn.execute(_MARK, (mark, time.time()))
                        result = getattr(self, "_apply_" + op)(conn, **args)
                self._mark_done(mark)  # committed, and known to be: no replay will look for it
                return result
            except _RolledBack as exc:
                if attempt + 1 < _ATTEMPTS:
                    continue  # rolled back, so not committed: the same write again, same mark
                log.warning("tokenlane: PostgreSQL rolled a ledger write back %d times (%s); spooling writes to %s",
                            _ATTEMPTS, exc, self._spool.path)
            except _Down as exc:
                log.warning("tokenlane: PostgreSQL ledger unreachable (%s); spooling writes to %s",
                            exc, self._spool.path)
            break
        with self._outage:
            self._spool.append(op, {**args, "_mark": mark})
            self._down = True  # even if the replay just emptied the spool: this entry needs it
        return None

    def _mark_done(self, mark: str) -> None:
        with self._marks_lock:
            self._done_marks.append(mark)

    def _forget_marks(self) -> None:
        """Deletes the marks of writes that no spool holds (answered commits), and week-old ones."""
        with self._marks_lock:
            marks, self._done_marks = self._done_marks, []
        try:
            with self._conn() as conn:
                conn.execute("DELETE FROM tokenlane_writes WHERE id = ANY(%s) OR at < %s",
                             (marks, time.time() - MARKS_KEPT_S))
        except (_Down, psycopg.Error):
            with self._marks_lock:
                self._done_marks[:0] = marks  # next round

    def _replay_loop(self) -> None:
        leases_due = 0.0
        while not self._stop.wait(0.25):
            if self._down:
                try:
                    self.replay()
                except Exception:  # noqa: BLE001 - keep trying; the next round logs again
                    log.exception("tokenlane: spool replay failed")
            elif time.monotonic() >= leases_due:
                leases_due = time.monotonic() + self.lease_s / 3
                try:
                    self.expire_holds()
                except (StorageError, psycopg.Error) as exc:  # a deadlock, an outage: next round
                    log.warning("tokenlane: renewing budget holds failed (retried): %s", exc)
                self._forget_marks()

    def replay(self) -> int:
        """Applies spooled writes in order, each exactly once; returns how many were applied.
        Clears the outage once the spool is empty."""
        applied = 0
        while True:
            batch = self._spool.head()
            if not batch:
                with self._outage:
                    if len(self._spool):
                        continue  # spooled meanwhile
                    if self._down:
                        log.warning("tokenlane: PostgreSQL ledger is back; spool replayed")
                    self._down = False
                return applied
            for seq, op, args in batch:
                mark = args.pop("_mark", None) or f"{self._spool.id}:{seq}"  # spooled before marks
                try:
                    with self._conn(transaction=True) as conn:
                        # Not there: neither the first attempt nor an earlier replay committed it.
                        fresh = conn.execute(_MARK, (mark, time.time())).rowcount == 1
                        if fresh:
                            getattr(self, "_apply_" + op)(conn, replayed=True, **args)
                    if not fresh:
                        log.warning("tokenlane: spooled ledger write %s had committed before its connection "
                                    "failed; not applied again", op)
                except _Down:
                    return applied
                except InvalidArgumentError as exc:  # it would have failed without the outage too
                    log.error("tokenlane: spooled ledger write %s %s cannot be applied: %s", op, args, exc)
                    fresh = False
                self._spool.drop(seq)  # (its mark stays: another process may share the spool file)
                applied += fresh

    def sidecar(self) -> Any:
        """The tables tokenlane keeps beside the ledger's (alert records, request tags), in this
        database, on this ledger's pool (:class:`tokenlane.sidecar.PgSidecar`)."""
        from .sidecar import PgSidecar

        return PgSidecar(self._pool, redacted_url(self.url))

    def spooled(self) -> int:
        """How many writes wait in the spool."""
        return len(self._spool)

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7461636)")  # replicas starting together migrate once
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
                         "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS tokenlane_writes (id TEXT PRIMARY KEY, "
                         "at DOUBLE PRECISION NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS tokenlane_writes_at ON tokenlane_writes(at)")
            conn.execute("DO $$ BEGIN CREATE COLLATION tokenlane_nocase (provider = icu, "
                         "locale = 'und-u-ks-level2', deterministic = false); "
                         "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            steps = _CoreLedger.migrations()
            latest = steps[-1][0] if steps else 0
            if current > latest:
                raise StorageError(f"ledger {redacted_url(self.url)} has schema version {current}, newer than this "
                                   f"tokenlane supports ({latest}); upgrade tokenlane")
            for version, description, sql in steps:
                if version <= current:
                    continue
                conn.execute(postgres_dialect(sql))
                conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)", (version, description, time.time()))
            # PostgreSQL only: budget holds are leased (their expiry; see the module docstring).
            conn.execute("ALTER TABLE holds ADD COLUMN IF NOT EXISTS expires_at DOUBLE PRECISION")
            conn.execute("CREATE INDEX IF NOT EXISTS holds_expires ON holds(expires_at)")
            conn.execute("CREATE TABLE IF NOT EXISTS tokenlane_replicas (owner TEXT PRIMARY KEY, "
                         "expires_at DOUBLE PRECISION NOT NULL)")
            conn.execute(_RESERVE_ALL_FUNCTION)  # replaced by each version: it is code, not data
            conn.execute(_APPLY_RECORDS_FUNCTION)

    @property
    def schema_version(self) -> int:
        return int(self._read(lambda c: c.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
                              .fetchone()["v"]))

    # ---- users -------------------------------------------------------------------------------

    def create_user(self, email: str, password_hash: str | None = None, role: str = "client",
                    name: str | None = None, *, tenant: str | None = None) -> int:
        at = email.find("@") if isinstance(email, str) else -1
        if at <= 0 or at == len(email) - 1 or len(email) > 320 or any(c in email for c in " \t\r\n"):
            raise InvalidArgumentError(f'not an email address: "{email}"')
        if role not in ("client", "admin"):
            raise InvalidArgumentError(f'role must be "client" or "admin", got "{role}"')

        def run(c: Any) -> int:
            try:
                return int(c.execute("INSERT INTO users (email, name, role, tenant, password_hash, created_at) "
                                     "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                                     (email, name, role, tenant, password_hash, time.time())).fetchone()["id"])
            except psycopg.errors.UniqueViolation:
                raise InvalidArgumentError(f'a user with email "{email}" already exists') from None
        return self._read(run)

    def get_user(self, user_id: int) -> dict[str, Any] | None:
        return self._read(lambda c: c.execute(f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE id = %s",
                                              (user_id,)).fetchone())

    def get_user_by_email(self, email: str) -> dict[str, Any] | None:
        return self._read(lambda c: c.execute(f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email = %s",
                                              (email,)).fetchone())

    def list_users(self) -> list[dict[str, Any]]:
        return self._read(lambda c: c.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY id").fetchall())

    def update_user(self, user_id: int, **fields: Any) -> bool:
        allowed = ("name", "role", "tenant", "team", "org", "disabled", "password_hash")
        for name, value in fields.items():
            if name not in allowed:
                raise InvalidArgumentError(f'cannot update user field "{name}" (allowed: {", ".join(allowed)})')
            if name == "role" and value not in ("client", "admin"):
                raise InvalidArgumentError('role must be "client" or "admin"')
            if name == "disabled" and not isinstance(value, bool):
                raise InvalidArgumentError("disabled must be a bool")
        if not fields:
            return self.get_user(user_id) is not None
        values = {k: (int(v) if k == "disabled" else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = %({k})s" for k in values)
        return self._read(lambda c: c.execute(f"UPDATE users SET {sets} WHERE id = %(_id)s",
                                              {**values, "_id": user_id}).rowcount == 1)

    # ---- API keys ----------------------------------------------------------------------------

    def create_api_key(self, user_id: int, name: str = "default") -> tuple[int, str]:
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise InvalidArgumentError("API key name must be 1 to 200 characters")
        plaintext = "tl-" + base64.urlsafe_b64encode(os.urandom(30)).decode()

        def run(c: Any) -> int:
            try:
                return int(c.execute("INSERT INTO api_keys (user_id, name, prefix, secret_hash, created_at) "
                                     "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                                     (user_id, name, plaintext[:9], hashlib.sha256(plaintext.encode()).hexdigest(),
                                      time.time())).fetchone()["id"])
            except psycopg.errors.ForeignKeyViolation:
                raise InvalidArgumentError(f"no user with id {user_id}") from None
        return self._read(run), plaintext

    def verify_api_key(self, plaintext: str) -> dict[str, Any] | None:
        if not isinstance(plaintext, str) or not _KEY.fullmatch(plaintext):
            return None
        digest = hashlib.sha256(plaintext.encode()).hexdigest()

        def run(c: Any) -> dict[str, Any] | None:
            row = c.execute("SELECT k.id AS key_id, k.user_id, COALESCE(u.tenant, u.email) AS tenant, k.name, u.email, "
                            "u.role, u.team, u.org, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id "
                            "WHERE k.secret_hash = %s AND k.revoked_at IS NULL AND u.disabled = 0", (digest,)).fetchone()
            if row is None:
                return None
            now = time.time()
            if row["last_used_at"] is None or row["last_used_at"] < now - 60:
                c.execute("UPDATE api_keys SET last_used_at = %s WHERE id = %s", (now, row["key_id"]))
            del row["last_used_at"]
            return row
        return self._read(run)

    def revoke_api_key(self, key_id: int, user_id: int | None = None) -> bool:
        return self._read(lambda c: c.execute(
            "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL "
            "AND (%s::bigint IS NULL OR user_id = %s)", (time.time(), key_id, user_id, user_id)).rowcount == 1)

    def list_api_keys(self, user_id: int) -> list[dict[str, Any]]:
        return self._read(lambda c: c.execute(
            "SELECT id, user_id, name, prefix, created_at, last_used_at, revoked_at, revoked_at IS NULL AS active "
            "FROM api_keys WHERE user_id = %s ORDER BY id", (user_id,)).fetchall())

    # ---- requests ----------------------------------------------------------------------------

    def insert_request(self, row: dict[str, Any]) -> None:
        row = dict(row)
        if "id" not in row or "status" not in row:
            raise InvalidArgumentError('request row needs an "id" and a "status"')
        row.setdefault("created_at", time.time())
        _check_request_fields(row)
        self._write("insert_request", {"row": row})

    def _apply_insert_request(self, conn: Any, row: dict[str, Any], replayed: bool = False) -> None:
        names = ", ".join(row)
        marks = ", ".join(f"%({k})s" for k in row)
        conflict = " ON CONFLICT (id) DO NOTHING" if replayed else ""  # a replay never duplicates
        try:
            conn.execute(f"INSERT INTO requests ({names}) VALUES ({marks}){conflict}", row)
        except psycopg.errors.UniqueViolation:
            raise InvalidArgumentError(f'request id "{row["id"]}" already exists (use update_request)') from None
        except psycopg.errors.ForeignKeyViolation:
            raise InvalidArgumentError(f"request {row['id']}: user_id or key_id does not name an existing user "
                                       "or API key (use None)") from None

    def update_request(self, id: str, **fields: Any) -> bool:
        if "id" in fields:
            raise InvalidArgumentError("a request's id cannot be changed")
        _check_request_fields(fields)
        if not fields:
            return self.get_request(id) is not None
        result = self._write("update_request", {"id": id, "fields": fields})
        return True if result is None else bool(result)

    def _apply_update_request(self, conn: Any, id: str, fields: dict[str, Any], replayed: bool = False) -> bool:
        sets = ", ".join(f"{k} = %({k})s" for k in fields)
        return conn.execute(f"UPDATE requests SET {sets} WHERE id = %(_id)s", {**fields, "_id": id}).rowcount == 1

    def apply_journal(self, records: bytes) -> list[str]:
        """Applies a batch of the runtime's ledger records (JSON lines: a request's row, its final
        fields, the settlement of its levels) in one statement (``tokenlane_apply_records``: one
        round trip, one transaction, the records passed on as the JSON they are), spooled while the
        database is down. A batch the database refuses (a malformed record) is applied again record
        by record, checked in Python as the SQLite ledger checks them: the good ones are applied, the
        others skipped. Returns descriptions of records skipped as malformed."""
        data = records.strip()
        if not data:
            return []
        payload = "[" + data.decode("utf-8", "replace").replace("\n", ",") + "]"
        try:
            self._write("records", {"payload": payload})
            return []
        except psycopg.Error as exc:  # refused (not an outage: those are spooled); nothing committed
            log.warning("tokenlane: PostgreSQL refused a batch of ledger records (%s); applying them one by one",
                        exc)
        return self._apply_one_by_one(records)

    def _apply_records(self, conn: Any, payload: str, replayed: bool = False, mark: str | None = None) -> None:
        conn.execute(_APPLY_RECORDS, (mark, time.time(), payload))

    def _apply_one_by_one(self, records: bytes) -> list[str]:
        """Each record in its own transaction, checked first (see :meth:`apply_journal`)."""
        skipped: list[str] = []
        for line in records.splitlines():
            if not line.strip():
                continue
            try:
                _check_record(json.loads(line))
                self._write("records", {"payload": "[" + line.decode("utf-8") + "]"})
            except (InvalidArgumentError, ValueError, KeyError, TypeError) as exc:
                skipped.append(f"{exc}: {line[:200]!r}")
            except psycopg.Error as exc:  # e.g. a user_id that names no user
                skipped.append(f"{type(exc).__name__}: {exc}: {line[:200]!r}")
        return skipped

    def _apply_statements(self, conn: Any, statements: list[Any], replayed: bool = False,
                          mark: str | None = None) -> None:
        # Replays a spool written by a build before 2026-12-07, whose record-by-record writes were
        # statement lists (they are records now: "records").
        # (In a pipeline the server runs every statement up to the sync in one transaction, even
        # on an autocommit connection: all commit, or none.)
        with conn.pipeline():
            if mark is not None:
                conn.execute(_MARK, (mark, time.time()))
            for sql, params in statements:
                conn.execute(sql, params)

    def get_request(self, id: str) -> dict[str, Any] | None:
        return self._read(lambda c: c.execute(f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM requests WHERE id = %s",
                                              (id,)).fetchone())

    @staticmethod
    def _where(prefix: str, **filters: Any) -> tuple[str, dict[str, Any]]:
        ops = {"since": ("created_at", ">="), "until": ("created_at", "<")}
        clauses, params = [], {}
        for name, value in filters.items():
            if value is None:
                continue
            if name == "status" and value not in _STATUSES:
                raise InvalidArgumentError(f'unknown request status "{value}" (one of {", ".join(_STATUSES)})')
            column, op = ops.get(name, (name, "="))
            clauses.append(f"{prefix}{column} {op} %({name})s")
            params[name] = value
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def list_requests(self, tenant: str | None = None, status: str | None = None, model: str | None = None,
                      since: Any = None, until: Any = None, limit: int = 100, offset: int = 0, *,
                      user_id: int | None = None) -> list[dict[str, Any]]:
        if not 1 <= limit <= 10_000:
            raise InvalidArgumentError("limit must be between 1 and 10000")
        if offset < 0:
            raise InvalidArgumentError("offset must be >= 0")
        where, params = self._where("", tenant=tenant, status=status, model=model, user_id=user_id,
                                    since=_seconds(since), until=_seconds(until))
        return self._read(lambda c: c.execute(
            f"SELECT {', '.join(_REQUEST_COLUMNS)} FROM requests{where} ORDER BY created_at DESC, id DESC "
            f"LIMIT {int(limit)} OFFSET {int(offset)}", params).fetchall())

    def count_requests(self, tenant: str | None = None, status: str | None = None, model: str | None = None,
                       since: Any = None, until: Any = None, *, user_id: int | None = None) -> int:
        where, params = self._where("", tenant=tenant, status=status, model=model, user_id=user_id,
                                    since=_seconds(since), until=_seconds(until))
        return int(self._read(lambda c: c.execute(f"SELECT COUNT(*) AS n FROM requests{where}", params)
                              .fetchone()["n"]))

    # ---- budgets -----------------------------------------------------------------------------

    def set_budget(self, tenant: str, limit_pico_usd: int | None, window: str = "day",
                   now: float | None = None, *, limit_tokens: int | None = None) -> None:
        _check_tenant(tenant)
        if limit_pico_usd is not None:
            _check_amount("limit_pico_usd", limit_pico_usd)
        if limit_tokens is not None:
            _check_amount("limit_tokens", limit_tokens, "tokens")
        if window not in ("hour", "day", "month", "total"):
            raise InvalidArgumentError(f"unknown budget window '{window}'; expected one of hour, day, month, total")
        now = time.time() if now is None else float(now)
        ws = budget_window(window, now)[0]

        def run(c: Any) -> None:
            with c.transaction():
                old = c.execute("SELECT period FROM budgets WHERE tenant = %s FOR UPDATE", (tenant,)).fetchone()
                if old and old["period"] == window:
                    c.execute("UPDATE budgets SET limit_pico_usd = %s, limit_tokens = %s, updated_at = %s "
                              "WHERE tenant = %s", (limit_pico_usd, limit_tokens, now, tenant))
                else:
                    spent = c.execute("SELECT COALESCE(SUM(amount_pico_usd), 0)::bigint AS s, "
                                      "COALESCE(SUM(tokens), 0)::bigint AS k FROM budget_events "
                                      "WHERE tenant = %s AND kind = 'settle' AND at >= %s", (tenant, ws)).fetchone()
                    c.execute("INSERT INTO budgets (tenant, limit_pico_usd, period, window_start, spent_pico_usd, "
                              "reserved_pico_usd, updated_at, limit_tokens, spent_tokens) "
                              "VALUES (%(t)s, %(l)s, %(p)s, %(ws)s, %(s)s, 0, %(now)s, %(lk)s, %(k)s) "
                              "ON CONFLICT (tenant) DO UPDATE SET limit_pico_usd = %(l)s, period = %(p)s, "
                              "window_start = %(ws)s, spent_pico_usd = %(s)s, updated_at = %(now)s, "
                              "limit_tokens = %(lk)s, spent_tokens = %(k)s",
                              {"t": tenant, "l": limit_pico_usd, "p": window, "ws": ws, "s": spent["s"], "now": now,
                               "lk": limit_tokens, "k": spent["k"]})
                c.execute("INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens) "
                          "VALUES (%s, 'set_budget', %s, NULL, %s, %s)", (tenant, limit_pico_usd, now, limit_tokens))
        self._read(run)

    def get_budget(self, tenant: str) -> dict[str, Any] | None:
        return self._read(lambda c: c.execute(f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant = %s",
                                              (tenant,)).fetchone())

    def list_budgets(self) -> list[dict[str, Any]]:
        return self._read(lambda c: c.execute(f"SELECT {_BUDGET_COLUMNS} FROM budgets ORDER BY tenant").fetchall())

    def reserve(self, tenant: str, amount_pico_usd: int, now: float | None = None, *, tokens: int = 0) -> bool:
        _check_tenant(tenant)
        _check_amount("amount_pico_usd", amount_pico_usd)
        _check_amount("tokens", tokens, "tokens")
        now = time.time() if now is None else float(now)
        params = {"t": tenant, "a": amount_pico_usd, "k": tokens, "now": now, **window_starts(now)}
        return bool(self._read(lambda c: c.execute(_RESERVE, params).rowcount == 1))

    def reserve_all(self, tenants: list[str], amount_pico_usd: int, now: float | None = None, *,
                    hold: str | None = None, owner: str | None = None, tokens: int = 0) -> int:
        """Reserves ``amount_pico_usd`` and ``tokens`` at every tenant (the levels of one principal
        chain) or at none, in one transaction: -1 when all had room, else the index of the first
        without room (its usage() says which unit). With ``hold``
        (the request id) the reservation is recorded under a lease of ``lease_s`` held by ``owner``
        (default: this process), renewed while this process runs (see the module docstring)."""
        for t in tenants:
            _check_tenant(t)
        _check_amount("amount_pico_usd", amount_pico_usd)
        _check_amount("tokens", tokens, "tokens")
        now = time.time() if now is None else float(now)

        params = {"tenants": list(tenants), "a": amount_pico_usd, "k": tokens, "now": now, **window_starts(now),
                  "hold": hold or None, "owner": owner or owner_token(), "expires": time.time() + self.lease_s}

        def run(c: Any) -> int:
            try:
                return int(c.execute(_RESERVE_ALL, params).fetchone()["tokenlane_reserve_all"])
            except psycopg.Error as exc:
                if exc.sqlstate != _NO_ROOM:
                    raise
                return int(exc.diag.message_detail)  # rolled back: nothing reserved anywhere
        # (No flush: the reservation needs none of this process's queued records. A settlement a
        # response waited for is applied already; one still queued only leaves less room.)
        return int(self._read(run, flush=False))

    def settle_all(self, tenants: list[str], reserved_pico_usd: int, actual_pico_usd: int,
                   now: float | None = None, *, hold: str | None = None, reserved_tokens: int = 0,
                   actual_tokens: int = 0) -> None:
        """settle() at every tenant, in one transaction (spooled while the database is down)."""
        for t in tenants:
            _check_tenant(t)
        _check_amount("reserved_pico_usd", reserved_pico_usd)
        _check_amount("actual_pico_usd", actual_pico_usd)
        _check_amount("reserved_tokens", reserved_tokens, "tokens")
        _check_amount("actual_tokens", actual_tokens, "tokens")
        self._write("settle_all", {"tenants": list(tenants), "reserved": reserved_pico_usd, "actual": actual_pico_usd,
                                   "now": time.time() if now is None else float(now), "hold": hold,
                                   "reserved_tokens": reserved_tokens, "actual_tokens": actual_tokens})

    def _apply_settle_all(self, conn: Any, tenants: list[str], reserved: int, actual: int, now: float,
                          replayed: bool = False, hold: str | None = None, reserved_tokens: int = 0,
                          actual_tokens: int = 0) -> None:
        if hold and not _end_hold(conn, hold):
            # its lease expired and another replica released it: free nothing twice
            reserved = reserved_tokens = 0
        for tenant in tenants:
            self._apply_settle(conn, tenant, reserved, actual, now, reserved_tokens=reserved_tokens,
                               actual_tokens=actual_tokens)

    def release_all(self, tenants: list[str], reserved_pico_usd: int, now: float | None = None, *,
                    hold: str | None = None, reserved_tokens: int = 0) -> None:
        """release() at every tenant, in one transaction (spooled while the database is down)."""
        for t in tenants:
            _check_tenant(t)
        _check_amount("reserved_pico_usd", reserved_pico_usd)
        _check_amount("reserved_tokens", reserved_tokens, "tokens")
        self._write("release_all", {"tenants": list(tenants), "reserved": reserved_pico_usd,
                                    "now": time.time() if now is None else float(now), "hold": hold,
                                    "reserved_tokens": reserved_tokens})

    def _apply_release_all(self, conn: Any, tenants: list[str], reserved: int, now: float,
                           replayed: bool = False, hold: str | None = None, reserved_tokens: int = 0) -> None:
        if hold and not _end_hold(conn, hold):
            return  # already released when its lease expired
        for tenant in tenants:
            self._apply_release(conn, tenant, reserved, now, reserved_tokens=reserved_tokens)

    def settle(self, tenant: str, reserved_pico_usd: int, actual_pico_usd: int, now: float | None = None, *,
               reserved_tokens: int = 0, actual_tokens: int = 0) -> None:
        _check_tenant(tenant)
        _check_amount("reserved_pico_usd", reserved_pico_usd)
        _check_amount("actual_pico_usd", actual_pico_usd)
        _check_amount("reserved_tokens", reserved_tokens, "tokens")
        _check_amount("actual_tokens", actual_tokens, "tokens")
        self._write("settle", {"tenant": tenant, "reserved": reserved_pico_usd, "actual": actual_pico_usd,
                               "now": time.time() if now is None else float(now),
                               "reserved_tokens": reserved_tokens, "actual_tokens": actual_tokens})

    def _apply_settle(self, conn: Any, tenant: str, reserved: int, actual: int, now: float,
                      replayed: bool = False, reserved_tokens: int = 0, actual_tokens: int = 0) -> None:
        conn.execute(_SETTLE_LEVEL, {"t": tenant, "r": reserved, "x": actual, "rk": reserved_tokens,
                                     "xk": actual_tokens, "now": now, "hold": None, **window_starts(now)})

    def release(self, tenant: str, reserved_pico_usd: int, now: float | None = None, *,
                reserved_tokens: int = 0) -> None:
        _check_tenant(tenant)
        _check_amount("reserved_pico_usd", reserved_pico_usd)
        _check_amount("reserved_tokens", reserved_tokens, "tokens")
        self._write("release", {"tenant": tenant, "reserved": reserved_pico_usd,
                                "now": time.time() if now is None else float(now), "reserved_tokens": reserved_tokens})

    def _apply_release(self, conn: Any, tenant: str, reserved: int, now: float, replayed: bool = False,
                       reserved_tokens: int = 0) -> None:
        old = conn.execute("SELECT reserved_pico_usd, reserved_tokens FROM budgets WHERE tenant = %s FOR UPDATE",
                           (tenant,)).fetchone()
        if old is None:
            return
        conn.execute("UPDATE budgets SET reserved_pico_usd = GREATEST(reserved_pico_usd - %s, 0), "
                     "reserved_tokens = GREATEST(reserved_tokens - %s, 0), updated_at = %s WHERE tenant = %s",
                     (reserved, reserved_tokens, now, tenant))
        conn.execute("INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens) "
                     "VALUES (%s, 'release', %s, NULL, %s, %s)",
                     (tenant, min(reserved, old["reserved_pico_usd"]), now, min(reserved_tokens, old["reserved_tokens"])))

    def expire_holds(self, now: float | None = None) -> int:
        """Renews this process's budget holds and releases every other owner's expired ones, in
        one statement (see the module docstring; the runtime's replay thread calls it every
        ``lease_s / 3``). Returns how many holds it released."""
        now = time.time() if now is None else float(now)
        params = {"me": owner_token(), "now": now, "until": now + self.lease_s}
        # (no flush: the replay thread must not wait for the ledger thread, which may wait for it)
        return int(self._read(lambda c: c.execute(_EXPIRE_HOLDS, params).fetchone()["n"], flush=False))

    def holds(self) -> list[dict[str, Any]]:
        """Budget reservations in force: request_id, owner, budgets (the levels), amount_pico_usd,
        tokens, created_at, expires_at."""
        rows = self._read(lambda c: c.execute("SELECT request_id, owner, budgets, amount_pico_usd, tokens, "
                                              "created_at, expires_at FROM holds ORDER BY created_at").fetchall())
        for r in rows:
            r["budgets"] = json.loads(r["budgets"])
        return rows

    def usage(self, tenant: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else float(now)
        budget = self.get_budget(tenant)
        period = budget["window"] if budget else "total"
        start, resets_at = budget_window(period, now)
        out: dict[str, Any] = {"tenant": tenant}
        for unit in ("pico_usd", "tokens"):  # spent (as seen from `now`), reserved, limit, remaining
            spent = reserved = 0
            limit = remaining = None
            if budget:
                spent = 0 if start > budget["window_start"] else budget[f"spent_{unit}"]
                reserved = budget[f"reserved_{unit}"]
                if budget[f"limit_{unit}"] is not None:
                    limit = budget[f"limit_{unit}"]
                    remaining = max(limit - spent - reserved, 0)
            out.update({f"spent_{unit}": spent, f"reserved_{unit}": reserved, f"limit_{unit}": limit,
                        f"remaining_{unit}": remaining})
        requests = self._read(lambda c: c.execute("SELECT COUNT(*) AS n FROM requests WHERE tenant = %s AND "
                                                  "created_at >= %s", (tenant, start)).fetchone()["n"])
        return {**out, "requests": int(requests), "window": period, "window_start": start, "resets_at": resets_at}

    def budget_events(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if not 1 <= limit <= 10_000:
            raise InvalidArgumentError("limit must be between 1 and 10000")
        return self._read(lambda c: c.execute(
            "SELECT id, tenant, kind, amount_pico_usd, reserved_pico_usd, tokens, reserved_tokens, at FROM budget_events "
            "WHERE (%(t)s::text IS NULL OR tenant = %(t)s) ORDER BY id DESC LIMIT %(n)s",
            {"t": tenant, "n": limit}).fetchall())

    # ---- configuration -----------------------------------------------------------------------

    def get_config(self, key: str, default: Any = None) -> Any:
        row = self._read(lambda c: c.execute("SELECT value FROM config WHERE key = %s", (key,)).fetchone())
        return default if row is None else json.loads(row["value"])

    def set_config(self, key: str, value: Any, actor: str | None = None) -> None:
        if not isinstance(key, str) or not 1 <= len(key) <= 200:
            raise InvalidArgumentError("config key must be 1 to 200 characters")
        try:
            text = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"config value for {key!r} is not JSON-serialisable: {e}") from None
        stored = json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True, ensure_ascii=False)

        def run(c: Any) -> None:
            with c.transaction():
                old = c.execute("SELECT value FROM config WHERE key = %s FOR UPDATE", (key,)).fetchone()
                if old and old["value"] == stored:
                    return
                now = time.time()
                c.execute("INSERT INTO config (key, value, updated_at, updated_by) VALUES (%s, %s, %s, %s) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
                          "updated_by = excluded.updated_by", (key, stored, now, actor))
                c.execute("INSERT INTO config_history (key, old_value, new_value, actor, at) VALUES (%s, %s, %s, %s, %s)",
                          (key, old["value"] if old else None, stored, actor, now))
        self._read(run)

    def list_config(self) -> list[dict[str, Any]]:
        rows = self._read(lambda c: c.execute("SELECT key, value, updated_at, updated_by FROM config ORDER BY key")
                          .fetchall())
        for r in rows:
            r["value"] = json.loads(r["value"])
        return rows

    def config_history(self, limit: int = 50, key: str | None = None) -> list[dict[str, Any]]:
        if not 1 <= limit <= 10_000:
            raise InvalidArgumentError("limit must be between 1 and 10000")
        rows = self._read(lambda c: c.execute(
            "SELECT id, key, old_value, new_value, actor, at FROM config_history "
            "WHERE (%(k)s::text IS NULL OR key = %(k)s) ORDER BY id DESC LIMIT %(n)s", {"k": key, "n": limit}).fetchall())
        for r in rows:
            r["old_value"] = None if r["old_value"] is None else json.loads(r["old_value"])
            r["new_value"] = json.loads(r["new_value"])
        return rows

    # ---- reports -----------------------------------------------------------------------------

    def _report(self, keys: str, join: str, group: str, since: Any, tenant: str | None, until: Any,
                user_id: int | None) -> list[dict[str, Any]]:
        where, params = self._where("r.", tenant=tenant, user_id=user_id, since=_seconds(since), until=_seconds(until))
        return self._read(lambda c: c.execute(f"SELECT {keys}, {_MEASURES} FROM requests r{join}{where}{group}",
                                              params).fetchall())

    def report_by_day(self, since: Any = None, tenant: str | None = None, until: Any = None, *,
                      user_id: int | None = None) -> list[dict[str, Any]]:
        return self._report("to_char(to_timestamp(r.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day", "",
                            " GROUP BY day ORDER BY day", since, tenant, until, user_id)

    def report_by_model(self, since: Any = None, tenant: str | None = None, until: Any = None, *,
                        user_id: int | None = None) -> list[dict[str, Any]]:
        return self._report("r.model AS model", "", " GROUP BY r.model ORDER BY cost_pico_usd DESC, requests DESC, model",
                            since, tenant, until, user_id)

    def report_by_user(self, since: Any = None, tenant: str | None = None, until: Any = None, *,
                       user_id: int | None = None) -> list[dict[str, Any]]:
        return self._report("r.user_id AS user_id, MIN(u.email) AS email, r.tenant AS tenant",
                            " LEFT JOIN users u ON u.id = r.user_id",
                            " GROUP BY r.user_id, r.tenant ORDER BY cost_pico_usd DESC, requests DESC, r.tenant",
                            since, tenant, until, user_id)

    def status_counts(self, tenant: str | None = None, since: Any = None, until: Any = None, *,
                      user_id: int | None = None) -> dict[str, int]:
        where, params = self._where("r.", tenant=tenant, user_id=user_id, since=_seconds(since), until=_seconds(until))
        rows = self._read(lambda c: c.execute(f"SELECT r.status, COUNT(*) AS n FROM requests r{where} GROUP BY r.status",
                                              params).fetchall())
        out = dict.fromkeys(_STATUSES, 0)
        out.update({r["status"]: int(r["n"]) for r in rows})
        return out


# Renew this owner's lease and holds; release other owners' expired holds at every level they
# reserved (a hold is deleted once, so concurrent sweepers release it once); end the unfinished rows
# of expired holds and of owners whose lease expired (running: failed, queued: cancelled).
_EXPIRE_HOLDS = """WITH me AS (INSERT INTO tokenlane_replicas (owner, expires_at) VALUES (%(me)s, %(until)s)
        ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at RETURNING 1),
dead AS (DELETE FROM tokenlane_replicas WHERE expires_at < %(now)s AND owner <> %(me)s RETURNING owner),
renewed AS (UPDATE holds SET expires_at = %(until)s WHERE owner = %(me)s RETURNING 1),
gone AS (DELETE FROM holds WHERE expires_at < %(now)s AND owner <> %(me)s
         RETURNING request_id, budgets, amount_pico_usd, tokens),
lv AS (SELECT t.tenant, SUM(g.amount_pico_usd)::bigint AS a, SUM(g.tokens)::bigint AS k
       FROM gone g CROSS JOIN LATERAL jsonb_array_elements_text(g.budgets::jsonb) AS t(tenant) GROUP BY t.tenant),
upd AS (UPDATE budgets b SET reserved_pico_usd = GREATEST(b.reserved_pico_usd - lv.a, 0),
        reserved_tokens = GREATEST(b.reserved_tokens - lv.k, 0), updated_at = %(now)s
        FROM lv WHERE b.tenant = lv.tenant RETURNING b.tenant, lv.a, lv.k),
ev AS (INSERT INTO budget_events (tenant, kind, amount_pico_usd, reserved_pico_usd, at, tokens)
       SELECT tenant, 'release', a, NULL, %(now)s, k FROM upd),
rq AS (UPDATE requests SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE 'failed' END,
       finished_at = %(now)s, error = '""" + LOST + """'
       WHERE finished_at IS NULL AND status IN ('running', 'queued')
         AND (id IN (SELECT request_id FROM gone) OR owner IN (SELECT owner FROM dead)))
SELECT (SELECT COUNT(*) FROM gone) AS n, (SELECT COUNT(*) FROM renewed) AS renewed"""


def _check_record(r: dict[str, Any]) -> None:
    """The checks the core's ledger makes of one ledger record (see :meth:`PostgresLedger.apply_journal`),
    with its messages."""
    if "row" in r:
        row = dict(r["row"])
        row.setdefault("created_at", time.time())
        _check_request_fields(row)
    if "final" in r:
        fields = dict(r["final"])
        fields.pop("id", None)
        _check_request_fields(fields)
        for t in r.get("budgets") or []:
            _check_tenant(t)
        if r.get("budgets"):  # the settlement's numbers (ValueError or TypeError when not)
            float(r["now"])
            for k in ("reserved", "actual", "reserved_tokens", "tokens"):
                int(r.get(k) or 0)


def _end_hold(conn: Any, hold: str) -> bool:
    """Deletes a hold; False when there was none (its lease expired and it was released)."""
    return bool(conn.execute("DELETE FROM holds WHERE request_id = %s", (hold,)).rowcount)


__all__ = ["PostgresLedger", "Spool"]
