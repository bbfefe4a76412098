"""Where response-cache entries live: the SQLite file (default) or Redis (shared by replicas).

One interface, :class:`CacheStore`; every method blocks (call it from a thread). Entries are opaque
bytes under a key, with an expiry, bounded in number and bytes with least-recently-used eviction.
An entry may carry an embedding under a *scope* (principal, model, namespace, conversation), which
is what the semantic index of that scope is built from.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Protocol


class CacheStore(Protocol):
    def get(self, key: str, now: float) -> bytes | None:
        """The live entry under ``key`` (and marks it recently used), or None."""

    def put(self, key: str, value: bytes, expires_at: float, now: float, *,
            scope: str | None = None, vector: bytes | None = None) -> None:
        """Stores an entry, then evicts expired and least recently used ones beyond the bounds."""

    def vectors(self, scope: str, now: float) -> list[tuple[str, bytes]]:
        """(key, embedding) of the live entries of a scope."""

    def vector_count(self, scope: str) -> int:
        """How many entries a scope holds (cheap: tells a local index when to reload)."""

    def stats(self) -> dict[str, int]:
        """``{"entries": …, "bytes": …}``."""

    def clear(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokenlane_cache (
  key        TEXT PRIMARY KEY,
  value      BLOB NOT NULL,
  size       INTEGER NOT NULL,
  expires_at REAL NOT NULL,
  used_at    REAL NOT NULL,
  scope      TEXT,
  vector     BLOB
);
CREATE INDEX IF NOT EXISTS tokenlane_cache_used ON tokenlane_cache(used_at);
CREATE INDEX IF NOT EXISTS tokenlane_cache_scope ON tokenlane_cache(scope) WHERE scope IS NOT NULL;
-- Running totals kept by triggers, so bounds are checked without scanning (and across processes).
CREATE TABLE IF NOT EXISTS tokenlane_cache_totals (id INTEGER PRIMARY KEY CHECK (id = 1),
  entries INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO tokenlane_cache_totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS tokenlane_cache_ins AFTER INSERT ON tokenlane_cache BEGIN
  UPDATE tokenlane_cache_totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS tokenlane_cache_del AFTER DELETE ON tokenlane_cache BEGIN
  UPDATE tokenlane_cache_totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 1; END;
"""


class SQLiteCacheStore:
    """Entries in a table of a SQLite file (the ledger's by default; WAL, so worker processes on
    one host share it)."""

    def __init__(self, path: str, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def get(self, key: str, now: float) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM tokenlane_cache WHERE key = ? AND expires_at > ?",
                                   (key, now)).fetchone()
            if row is not None:
                self._db.execute("UPDATE tokenlane_cache SET used_at = ? WHERE key = ?", (now, key))
            return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes, expires_at: float, now: float, *,
            scope: str | None = None, vector: bytes | None = None) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM tokenlane_cache WHERE key = ?", (key,))
                db.execute("INSERT INTO tokenlane_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (key, value, len(value), expires_at, now, scope, vector))
                entries, size = db.execute("SELECT entries, bytes FROM tokenlane_cache_totals").fetchone()
                if entries > self.max_entries or size > self.max_bytes:
                    db.execute("DELETE FROM tokenlane_cache WHERE expires_at <= ?", (now,))
                    entries, size = db.execute("SELECT entries, bytes FROM tokenlane_cache_totals").fetchone()
                while entries > self.max_entries or size > self.max_bytes:
                    # least recently used first, a batch at a time; never the entry just stored
                    over = max(entries - self.max_entries, 1)
                    db.execute("DELETE FROM tokenlane_cache WHERE key IN (SELECT key FROM tokenlane_cache "
                               "WHERE key != ? ORDER BY used_at LIMIT ?)", (key, over))
                    after = db.execute("SELECT entries, bytes FROM tokenlane_cache_totals").fetchone()
                    if after == (entries, size):
                        break  # only the new entry is left
                    entries, size = after
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def vectors(self, scope: str, now: float) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(k, bytes(v)) for k, v in self._db.execute(
                "SELECT key, vector FROM tokenlane_cache WHERE scope = ? AND expires_at > ? AND vector IS NOT NULL",
                (scope, now))]

    def vector_count(self, scope: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM tokenlane_cache WHERE scope = ?",
                                        (scope,)).fetchone()[0])

    def stats(self) -> dict[str, int]:
        with self._lock:
            entries, size = self._db.execute("SELECT entries, bytes FROM tokenlane_cache_totals").fetchone()
        return {"entries": int(entries), "bytes": int(size)}

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tokenlane_cache")

    def close(self) -> None:
        with self._lock:
            self._db.close()


# Stores an entry and evicts beyond the bounds, atomically on the server.
# KEYS: entry hash, LRU sorted set, byte counter. ARGV: key, value, time to live ms, now ms, max entries,
# max bytes, scope (or ""), vector (or ""), key prefix, expires-at (the caller's clock).
_PUT = """
local old = redis.call('HGET', KEYS[1], 'size')
if old then redis.call('DECRBY', KEYS[3], old) end
redis.call('DEL', KEYS[1])
local size = string.len(ARGV[2])
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'size', size, 'scope', ARGV[7], 'expires', ARGV[10])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local total = redis.call('INCRBY', KEYS[3], size)
if ARGV[7] ~= '' then
  redis.call('HSET', ARGV[9] .. 'v:' .. ARGV[7], ARGV[1], ARGV[8])
  if redis.call('PTTL', ARGV[9] .. 'v:' .. ARGV[7]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', ARGV[9] .. 'v:' .. ARGV[7], ARGV[3])
  end
end
local max_entries, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
while redis.call('ZCARD', KEYS[2]) > max_entries or total > max_bytes do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if oldest == nil or oldest == ARGV[1] then break end
  redis.call('ZREM', KEYS[2], oldest)
  local entry = ARGV[9] .. 'e:' .. oldest
  local fields = redis.call('HMGET', entry, 'size', 'scope')
  if fields[1] then total = redis.call('DECRBY', KEYS[3], fields[1]) end
  if fields[2] and fields[2] ~= '' then redis.call('HDEL', ARGV[9] .. 'v:' .. fields[2], oldest) end
  redis.call('DEL', entry)
end
return total
"""


class RedisCacheStore:
    """Entries in Redis, shared by every replica: one hash per entry (with a server-side expiry), a
    sorted set for least-recently-used order, one hash of embeddings per scope. The bounds hold
    across replicas because storing and evicting is one server-side script."""

    def __init__(self, url: str, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024,
                 prefix: str = "tokenlane:cache:") -> None:
        import redis  # the optional `redis` extra

        self.max_entries, self.max_bytes, self.prefix = max_entries, max_bytes, prefix
        self._r = redis.Redis.from_url(url)
        self._put = self._r.register_script(_PUT)

    def _entry(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def get(self, key: str, now: float) -> bytes | None:
        # Expiry by the caller's clock, as in SQLite; Redis's own expiry only cleans up.
        value, expires = self._r.hmget(self._entry(key), ["value", "expires"])
        if value is None or float(expires or 0) <= now:
            self._r.zrem(self.prefix + "lru", key)
            return None
        self._r.zadd(self.prefix + "lru", {key: int(now * 1000)}, xx=True)
        return bytes(value)

    def put(self, key: str, value: bytes, expires_at: float, now: float, *,
            scope: str | None = None, vector: bytes | None = None) -> None:
        self._put(keys=[self._entry(key), self.prefix + "lru", self.prefix + "bytes"],
                  args=[key, value, max(1, int((expires_at - now) * 1000)), int(now * 1000), self.max_entries,
                        self.max_bytes, scope or "", vector or b"", self.prefix, repr(float(expires_at))])

    def vectors(self, scope: str, now: float) -> list[tuple[str, bytes]]:
        name = f"{self.prefix}v:{scope}"
        found = self._r.hgetall(name)
        keys = list(found)
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.exists(self._entry(k.decode()))
        alive = pipe.execute() if keys else []
        dead = [k for k, a in zip(keys, alive) if not a]
        if dead:  # Redis expired the entry's hash, not its field in the scope's hash
            self._r.hdel(name, *dead)
        return [(k.decode(), bytes(found[k])) for k, a in zip(keys, alive) if a]

    def vector_count(self, scope: str) -> int:
        return int(self._r.hlen(f"{self.prefix}v:{scope}"))

    def stats(self) -> dict[str, int]:
        return {"entries": int(self._r.zcard(self.prefix + "lru")), "bytes": int(self._r.get(self.prefix + "bytes") or 0)}

    def clear(self) -> None:
        for name in self._r.scan_iter(match=self.prefix + "*", count=1000):
            self._r.delete(name)

    def close(self) -> None:
        self._r.close()


def open_cache_store(db: str, state: str | None = None, **bounds: Any) -> CacheStore:
    """Redis when ``state`` is a redis:// URL (shared by replicas), else the SQLite file ``db``; a
    ledger that is not SQLite (PostgreSQL) without Redis gets a per-process in-memory table."""
    if state and state.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return RedisCacheStore(state, **bounds)
    if "://" in db and not db.startswith("sqlite:"):
        return SQLiteCacheStore(":memory:", **bounds)
    from ..ledger import _sqlite_path

    return SQLiteCacheStore(_sqlite_path(db), **bounds)


__all__ = ["CacheStore", "RedisCacheStore", "SQLiteCacheStore", "open_cache_store"]
