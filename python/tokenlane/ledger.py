"""The ledger: users, API keys, requests, budgets and configuration in one SQLite file.

    led = Ledger("tokenlane.db")                     # or "sqlite:///tokenlane.db"
    uid = led.create_user("ada@example.com")
    key_id, key = led.create_api_key(uid)            # show `key` once; only its hash is stored
    led.set_budget("ada@example.com", 5 * 10**12, window="day")   # 5 USD a day, in pico-USD
    if led.reserve("ada@example.com", p90_cost, now):
        ...
        led.settle("ada@example.com", p90_cost, actual_cost, now)

``Ledger("postgresql://user@host/db")`` gives the same ledger on PostgreSQL (several replicas).

Every method blocks on the database (without holding the GIL) and is thread-safe; from async
code call them through a thread (``await asyncio.to_thread(led.reserve, ...)``). Several processes
may open the same file: budget reservations are atomic across them. Rows come back as plain dicts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from typing import Any

from . import _core
from ._core import InvalidArgumentError, StorageError
from .pgsql import is_postgres_url
from .windows import unix_seconds as _seconds

__all__ = ["Ledger"]


def _sqlite_path(url: str | os.PathLike[str]) -> str:
    """A filesystem path (or ":memory:") from a path or a sqlite:/// URL."""
    if isinstance(url, os.PathLike):
        return os.fspath(url)
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"ledger location must be a path or a sqlite:/// URL, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme.lower() != "sqlite":
        raise InvalidArgumentError(
            f"ledger URL scheme {scheme!r} is not supported: pass a file path, sqlite:///path/to/file.db "
            "or postgresql://user@host/database"
        )
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db, sqlite:// for memory.
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise InvalidArgumentError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
    path = rest[1:].split("?", 1)[0]
    if not path:
        raise InvalidArgumentError(f"SQLite URL {url!r} names no file")
    return path


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


class _Closed:
    def __getattr__(self, name: str) -> Any:
        raise StorageError("this Ledger is closed")


class Ledger:
    """The durable record of a tokenlane deployment (see the module docstring).

    ``Ledger("postgresql://...")`` opens the same ledger on PostgreSQL instead
    (:class:`tokenlane.pgledger.PostgresLedger`: same methods, for several replicas)."""

    def __new__(cls, url: str | os.PathLike[str] = "tokenlane.db", **kwargs: Any) -> Any:
        if is_postgres_url(url):
            from .pgledger import PostgresLedger

            return PostgresLedger(str(url), **kwargs)
        return super().__new__(cls)

    def __init__(self, url: str | os.PathLike[str] = "tokenlane.db", *, busy_timeout_ms: int = 10_000) -> None:
        self._busy_timeout_ms = busy_timeout_ms
        self._led = _core.Ledger(_sqlite_path(url), busy_timeout_ms)
        # Set by a runtime that writes behind (its ledger thread's flush): request and budget
        # reads through this object first wait for the records queued so far, so they see every
        # request this process answered.
        self.before_read: Any = None

    def _sync(self) -> Any:
        if self.before_read is not None:
            self.before_read()
        return self._led

    def reconnect(self) -> None:
        """Opens a new connection in place of this one (the old one closes once no call runs on it).
        SQLite keeps a connection that opened a read-only file read-only, even after the file is
        made writable: the runtime reconnects when a write fails for that reason."""
        self._led = _core.Ledger(self._led.path, self._busy_timeout_ms)

    @property
    def path(self) -> str:
        return self._led.path

    @property
    def schema_version(self) -> int:
        return self._led.schema_version

    def __repr__(self) -> str:
        return f"Ledger({self._led.path!r})" if not isinstance(self._led, _Closed) else "Ledger(<closed>)"

    def close(self) -> None:
        """Closes the connection (once no call is running on it); later calls raise StorageError."""
        self._led = _Closed()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- users -------------------------------------------------------------------------------

    def create_user(
        self,
        email: str,
        password_hash: str | None = None,
        role: str = "client",
        name: str | None = None,
        *,
        tenant: str | None = None,
    ) -> int:
        """Adds a user and returns its id. `tenant` (budgets, reports) defaults to the email."""
        return self._led.create_user(email, password_hash, role, name, tenant)

    def get_user(self, user_id: int) -> dict[str, Any] | None:
        """id, email, name, role, tenant, team, org, disabled, created_at, password_hash (never render the hash)."""
        return self._led.get_user(user_id)

    def get_user_by_email(self, email: str) -> dict[str, Any] | None:
        return self._led.get_user_by_email(email)

    def list_users(self) -> list[dict[str, Any]]:
        """All users, oldest first, without password hashes."""
        return self._led.list_users()

    def update_user(self, user_id: int, **fields: Any) -> bool:
        """Sets any of name, role, tenant, team, org, disabled, password_hash. False for an unknown user."""
        return self._led.update_user(user_id, fields)

    # ---- API keys ----------------------------------------------------------------------------

    def create_api_key(self, user_id: int, name: str = "default") -> tuple[int, str]:
        """(key_id, plaintext): the plaintext is returned this once and never stored."""
        key_id, plaintext, _prefix = self._led.create_api_key(user_id, name)
        return key_id, plaintext

    def verify_api_key(self, plaintext: str) -> dict[str, Any] | None:
        """{"key_id","user_id","tenant","name","email","role","team","org"} for an active key, else None."""
        if not isinstance(plaintext, str):
            return None
        return self._led.verify_api_key(plaintext)

    def revoke_api_key(self, key_id: int, user_id: int | None = None) -> bool:
        """Revokes an active key (only `user_id`'s own when given). False if nothing changed."""
        return self._led.revoke_api_key(key_id, user_id)

    def list_api_keys(self, user_id: int) -> list[dict[str, Any]]:
        """id, user_id, name, prefix, created_at, last_used_at, revoked_at, active; no secrets."""
        return self._led.list_api_keys(user_id)

    # ---- requests ----------------------------------------------------------------------------

    def insert_request(self, row: dict[str, Any]) -> None:
        """Records a request; `id` and `status` are required, `created_at` defaults to now."""
        self._led.insert_request(dict(row))

    def update_request(self, id: str, **fields: Any) -> bool:
        """Sets the given columns of request `id`; False for an unknown id."""
        return self._led.update_request(id, fields)

    def get_request(self, id: str) -> dict[str, Any] | None:
        return self._sync().get_request(id)

    def list_requests(
        self,
        tenant: str | None = None,
        status: str | None = None,
        model: str | None = None,
        since: float | _dt.datetime | None = None,
        until: float | _dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        user_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Requests newest first; `since` inclusive, `until` exclusive (on created_at)."""
        return self._sync().list_requests(
            tenant, status, model, user_id, _seconds(since), _seconds(until), limit, offset
        )

    def count_requests(
        self,
        tenant: str | None = None,
        status: str | None = None,
        model: str | None = None,
        since: float | _dt.datetime | None = None,
        until: float | _dt.datetime | None = None,
        *,
        user_id: int | None = None,
    ) -> int:
        """How many rows list_requests would page through with the same filters."""
        return self._sync().count_requests(tenant, status, model, user_id, _seconds(since), _seconds(until))

    # ---- budgets -----------------------------------------------------------------------------

    def set_budget(
        self, tenant: str, limit_pico_usd: int | None, window: str = "day", now: float | None = None, *,
        limit_tokens: int | None = None,
    ) -> None:
        """Sets a tenant's whole budget per UTC "hour" | "day" | "month" | "total": its USD limit
        and its token limit (input + output tokens), each None for no limit of that unit."""
        self._led.set_budget(tenant, limit_pico_usd, window, _now(now), limit_tokens)

    def get_budget(self, tenant: str) -> dict[str, Any] | None:
        """The stored row: tenant, limit_pico_usd, limit_tokens, window, window_start,
        spent/reserved_pico_usd, spent/reserved_tokens."""
        return self._sync().get_budget(tenant)

    def list_budgets(self) -> list[dict[str, Any]]:
        return self._sync().list_budgets()

    def reserve(self, tenant: str, amount_pico_usd: int, now: float | None = None, *, tokens: int = 0) -> bool:
        """Atomically reserves `amount` (and `tokens`) if spent + reserved + amount <= limit for
        each unit that has a limit."""
        return self._led.reserve(tenant, amount_pico_usd, _now(now), tokens)

    def settle(self, tenant: str, reserved_pico_usd: int, actual_pico_usd: int, now: float | None = None, *,
               reserved_tokens: int = 0, actual_tokens: int = 0) -> None:
        """Releases the reservation and charges the actual cost (and tokens) in the window of `now`."""
        self._led.settle(tenant, reserved_pico_usd, actual_pico_usd, _now(now), reserved_tokens, actual_tokens)

    def release(self, tenant: str, reserved_pico_usd: int, now: float | None = None, *,
                reserved_tokens: int = 0) -> None:
        """Releases a reservation without charging (refused, cancelled, failed before the call)."""
        self._led.release(tenant, reserved_pico_usd, _now(now), reserved_tokens)

    def reserve_all(self, tenants: list[str], amount_pico_usd: int, now: float | None = None, *,
                    hold: str | None = None, owner: str | None = None, tokens: int = 0) -> int:
        """Reserves `amount` and `tokens` at every tenant (the levels of one principal chain) or at
        none, in one transaction: -1 when all had room, else the index of the first without room
        (its usage() says which unit). With `hold` (the request id) and `owner` (the worker's token,
        :mod:`tokenlane.recovery`) the reservation is recorded, so a dead worker's share can be
        reclaimed."""
        return self._led.reserve_all(list(tenants), amount_pico_usd, _now(now), hold or "", owner or "", tokens)

    def settle_all(self, tenants: list[str], reserved_pico_usd: int, actual_pico_usd: int,
                   now: float | None = None, *, hold: str | None = None, reserved_tokens: int = 0,
                   actual_tokens: int = 0) -> None:
        """settle() at every tenant, in one transaction (ending `hold` if given)."""
        self._led.settle_all(list(tenants), reserved_pico_usd, actual_pico_usd, _now(now), hold or "",
                             reserved_tokens, actual_tokens)

    def release_all(self, tenants: list[str], reserved_pico_usd: int, now: float | None = None, *,
                    hold: str | None = None, reserved_tokens: int = 0) -> None:
        """release() at every tenant, in one transaction (ending `hold` if given)."""
        self._led.release_all(list(tenants), reserved_pico_usd, _now(now), hold or "", reserved_tokens)

    def budget_version(self) -> int:
        """Changes whenever any process sets a budget's limit; -1 when unknown right now. Cheap
        (its own connection, no wait): call it on every request."""
        return self._led.budget_version()

    # ---- write-behind and crashed workers ------------------------------------------------------

    def apply_journal(self, records: bytes) -> list[str]:
        """Applies journal records (JSON lines; see the C++ ledger's ``apply_journal``) in one
        transaction, each exactly once; returns descriptions of records skipped as malformed."""
        return self._led.apply_journal(records)

    def owners(self) -> list[str]:
        """Owner tokens of budget holds and unfinished request rows."""
        return self._led.owners()

    def reclaim(self, owner: str, now: float | None = None) -> dict[str, int]:
        """Frees a dead owner's holds and fails its unfinished rows: {holds, requests,
        released_pico_usd, released_tokens}."""
        return self._led.reclaim(owner, _now(now))

    def usage(self, tenant: str, now: float | None = None) -> dict[str, Any]:
        """spent/reserved/limit/remaining_pico_usd, the same in tokens (spent/reserved/limit/
        remaining_tokens), requests, window, window_start, resets_at."""
        return self._sync().usage(tenant, _now(now))

    def budget_events(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The budget audit trail, newest first (reserve, settle, release, set_budget)."""
        return self._sync().budget_events(tenant, limit)

    # ---- configuration -----------------------------------------------------------------------

    def get_config(self, key: str, default: Any = None) -> Any:
        """The value stored under `key` (decoded from JSON), or `default`."""
        text = self._led.get_config(key)
        return default if text is None else json.loads(text)

    def set_config(self, key: str, value: Any, actor: str | None = None) -> None:
        """Stores a JSON-serialisable value; the change (old, new, actor, time) goes to the history."""
        try:
            text = json.dumps(value, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"config value for {key!r} is not JSON-serialisable: {e}") from None
        self._led.set_config(key, text, actor)

    def list_config(self) -> list[dict[str, Any]]:
        """Every key with its decoded value, updated_at and updated_by."""
        rows = self._led.list_config()
        for r in rows:
            r["value"] = json.loads(r["value"])
        return rows

    def config_history(self, limit: int = 50, key: str | None = None) -> list[dict[str, Any]]:
        """Changes newest first: id, key, old_value (None when new), new_value, actor, at."""
        rows = self._led.config_history(limit, key)
        for r in rows:
            r["old_value"] = None if r["old_value"] is None else json.loads(r["old_value"])
            r["new_value"] = json.loads(r["new_value"])
        return rows

    # ---- reports -----------------------------------------------------------------------------

    def report_by_day(
        self,
        since: float | _dt.datetime | None = None,
        tenant: str | None = None,
        until: float | _dt.datetime | None = None,
        *,
        user_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """One row per UTC day ("day": "YYYY-MM-DD") with counts, tokens, costs, queue wait."""
        return self._sync().report_by_day(tenant, user_id, _seconds(since), _seconds(until))

    def report_by_model(
        self,
        since: float | _dt.datetime | None = None,
        tenant: str | None = None,
        until: float | _dt.datetime | None = None,
        *,
        user_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """One row per model, most expensive first."""
        return self._sync().report_by_model(tenant, user_id, _seconds(since), _seconds(until))

    def report_by_user(
        self,
        since: float | _dt.datetime | None = None,
        tenant: str | None = None,
        until: float | _dt.datetime | None = None,
        *,
        user_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """One row per (user_id, tenant) with the user's email, most expensive first."""
        return self._sync().report_by_user(tenant, user_id, _seconds(since), _seconds(until))

    def status_counts(
        self,
        tenant: str | None = None,
        since: float | _dt.datetime | None = None,
        until: float | _dt.datetime | None = None,
        *,
        user_id: int | None = None,
    ) -> dict[str, int]:
        """{status: count} with every known status present."""
        return self._sync().status_counts(tenant, user_id, _seconds(since), _seconds(until))
