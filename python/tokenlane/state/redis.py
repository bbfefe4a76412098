"""Shared hot state on Redis, for several replicas: ``state="redis://host:6379/0"``.

What replicas must agree on lives here, changed only by Lua scripts (atomic on the server, no
read-modify-write from Python):

- budget reservations and window spend at every principal level (all levels or none),
- requests-per-minute and tokens-per-minute buckets (global and per principal),
- concurrency slots (global and per principal),
- fair-share counters (input and output tokens served per principal and minute, one hash per
  minute, read by every replica's fair-share sync: :mod:`tokenlane.state.fairshare`),
- each replica's queue, published for the admin page,
- requests' final ledger records, kept from the answer until the replica's ledger commits them
  (with a PostgreSQL ledger the response waits for Redis, not for the database); a dead replica's
  are claimed by another once their claim expires.

Every admitted request holds a *lease*: its reservations and slots are recorded under the lease id
with an expiry; the replica renews its live leases in the background (one call for all of them).
A replica that dies (``kill -9``) stops renewing, and the next call of any replica gives its
reservations and slots back once the lease has expired. The hot path costs two round trips:
``acquire`` (one script) and ``settle`` (one script; it also stores the final record and forgets
the committed ones).

Amounts cross to Lua as decimal strings and are compared as doubles: exact up to 2^53 pico-USD
(about 9,000 USD per counter); above that a check may be off by a few pico-USD.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..windows import budget_window

log = logging.getLogger("tokenlane")

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the `scale` extra is not installed
    aioredis = None  # type: ignore[assignment]

    class RedisError(Exception):  # type: ignore[no-redef]
        pass


# Shared by the scripts below through string concatenation, so each script stays one atomic call.
# A principal's budget is one hash, {prefix}budget:<principal>: its limits (lim pico-USD, limk
# tokens; absent: none), window (win: hour | day | month | total) and the window's start (ws), the
# spend in that window (sp pico-USD, spk tokens) and what running requests hold (rs, rsk). Amounts
# travel as decimal strings (HINCRBY is exact on 64 bits) and are compared as doubles.
_COMMON = """
local function budget(key, windows)
  -- the hash's fields, its window rolled over to the current one first (spend starts at 0 again)
  local h = redis.call('HMGET', key, 'lim', 'limk', 'win', 'ws', 'sp', 'spk', 'rs', 'rsk')
  local ws = windows[h[3]] or '0'
  if h[4] ~= ws then
    redis.call('HSET', key, 'ws', ws, 'sp', '0', 'spk', '0')
    h[5], h[6] = '0', '0'
  end
  return h
end
local function unhold(rec)
  for _, b in ipairs(rec.budgets) do
    for field, amount in pairs({rs = b.amount, rsk = b.tokens}) do
      if amount ~= '0' and redis.call('HINCRBY', b.key, field, '-'..amount) < 0 then
        redis.call('HSET', b.key, field, '0')
      end
    end
  end
end
-- Gives back the reservations and slots of expired leases (at most 50 per call).
local function reap(P, now)
  local expired = redis.call('ZRANGEBYSCORE', P..'leases', '-inf', now, 'LIMIT', 0, 50)
  for _, id in ipairs(expired) do
    local raw = redis.call('GET', P..'lease:'..id)
    if raw then
      local rec = cjson.decode(raw)
      unhold(rec)
      for _, s in ipairs(rec.slots) do redis.call('ZREM', s.key, id) end
      redis.call('DEL', P..'lease:'..id)
    end
    redis.call('ZREM', P..'leases', id)
  end
  return #expired
end
-- Final ledger records the ledger has committed: Redis need not keep them any more.
local function forget(P, done)
  for _, id in ipairs(done) do
    redis.call('HDEL', P..'records', id)
    redis.call('ZREM', P..'records:at', id)
  end
end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: none (single Redis; the prefix keeps tokenlane's keys together). ARGV[1]: the request as
# JSON. Returns {'ok', lease_expiry_ms, bucket levels...}, {'seed', level indexes...} when budget
# hashes are missing (the caller seeds them from the ledger), or {reason, index, detail...} without
# changing anything when one level has no room.
_ACQUIRE = _COMMON + """
local req = cjson.decode(ARGV[1])
local P = req.prefix
local now = server_ms()
reap(P, now)
local missing = {'seed'}
for i, b in ipairs(req.budgets) do
  if redis.call('EXISTS', b.key) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
local held = {}
for i, b in ipairs(req.budgets) do
  local h = budget(b.key, req.windows)
  local lim, limk = tonumber(h[1]), tonumber(h[2])
  if (lim and tonumber(h[5]) + tonumber(h[7] or '0') + tonumber(b.amount) > lim)
      or (limk and tonumber(h[6]) + tonumber(h[8] or '0') + tonumber(b.tokens) > limk) then
    return {'budget', i, h[1] or '', h[2] or '', h[3] or '', h[5], h[6], h[7] or '0', h[8] or '0'}
  end
  if lim or limk then held[#held + 1] = b end
end
for i, s in ipairs(req.slots) do
  redis.call('ZREMRANGEBYSCORE', s.key, '-inf', now)
  if redis.call('ZCARD', s.key) >= s.limit then return {'concurrency', i} end
end
local levels = {}
for i, r in ipairs(req.buckets) do
  local st = redis.call('HMGET', r.key, 'level', 'ts')
  local level = tonumber(st[1] or r.limit)
  local ts = tonumber(st[2] or now)
  level = math.min(r.limit, level + (now - ts) * r.limit / 60000)
  if r.amount > r.limit then return {'too_large', i} end
  if level < r.amount then
    return {'rate', i, tostring(math.ceil((r.amount - level) * 60000 / r.limit))}
  end
  levels[i] = level
end
local expiry = now + req.lease_ms
for _, b in ipairs(held) do
  redis.call('HINCRBY', b.key, 'rs', b.amount)
  redis.call('HINCRBY', b.key, 'rsk', b.tokens)
end
for _, b in ipairs(req.budgets) do redis.call('EXPIRE', b.key, req.budget_ttl_s) end
for _, s in ipairs(req.slots) do redis.call('ZADD', s.key, expiry, req.lease) end
for i, r in ipairs(req.buckets) do
  redis.call('HSET', r.key, 'level', tostring(levels[i] - r.amount), 'ts', tostring(now))
  redis.call('PEXPIRE', r.key, 120000)
end
local rec = {budgets = held, slots = req.slots}
redis.call('SET', P..'lease:'..req.lease, cjson.encode(rec))
redis.call('ZADD', P..'leases', expiry, req.lease)
local answer = {'ok', tostring(expiry)}
for i, r in ipairs(req.buckets) do answer[#answer + 1] = tostring(levels[i] - r.amount) end
return answer
"""

# ARGV[1]: {budget_ttl_s, budgets: [{key, fields}]}. Creates the budget hashes that are still
# missing (NX: another replica may have seeded one first), from what the ledger says.
_SEED = """
local req = cjson.decode(ARGV[1])
for _, b in ipairs(req.budgets) do
  if redis.call('EXISTS', b.key) == 0 then
    for name, value in pairs(b.fields) do redis.call('HSET', b.key, name, value) end
    redis.call('HSET', b.key, 'rs', '0', 'rsk', '0')
    redis.call('EXPIRE', b.key, req.budget_ttl_s)
  end
end
return 1
"""

# ARGV[1]: {key, fields, respend}. A budget changed in the ledger (any replica's admin): its limits
# here too; its window's spend from the ledger when the window changed, or when ``respend`` (spend
# that went to the ledger alone while Redis was unreachable). Reservations stay.
_SYNC = """
local req = cjson.decode(ARGV[1])
if redis.call('EXISTS', req.key) == 0 then return 0 end
local f = req.fields
redis.call('HDEL', req.key, 'lim', 'limk')
if f.lim then redis.call('HSET', req.key, 'lim', f.lim) end
if f.limk then redis.call('HSET', req.key, 'limk', f.limk) end
if req.respend or redis.call('HGET', req.key, 'win') ~= f.win then
  redis.call('HSET', req.key, 'win', f.win, 'ws', f.ws, 'sp', f.sp, 'spk', f.spk)
end
return 1
"""

# ARGV[1]: {prefix, lease, lease_ms, charges: {keys, amount, tokens, windows}, buckets: [{key, limit,
# delta}], served: {key, principals, input, output} or absent, record: the request's final ledger
# record or absent, done: [ids]}. Keeps the record (claimed by this replica for a lease, see _RENEW)
# until the ledger has it, forgets the ``done`` ones the ledger has committed. Charges the actual spend at every level;
# gives back what the lease held unless it has expired already (then the reaper gave it back: never
# twice); counts the tokens served to each principal in the minute's service hash (fields i:<p>
# and o:<p>).
_SETTLE = _COMMON + """
local req = cjson.decode(ARGV[1])
local P = req.prefix
local raw = redis.call('GET', P..'lease:'..req.lease)
if raw then
  local rec = cjson.decode(raw)
  unhold(rec)
  for _, s in ipairs(rec.slots) do redis.call('ZREM', s.key, req.lease) end
  redis.call('DEL', P..'lease:'..req.lease)
  redis.call('ZREM', P..'leases', req.lease)
end
local c = req.charges
for _, key in ipairs(c.keys) do
  if redis.call('EXISTS', key) == 1 then
    budget(key, c.windows)
    redis.call('HINCRBY', key, 'sp', c.amount)
    redis.call('HINCRBY', key, 'spk', c.tokens)
  end
end
local now = server_ms()
if req.record then
  redis.call('HSET', P..'records', req.lease, req.record)
  redis.call('ZADD', P..'records:at', now + req.lease_ms, req.lease)
end
forget(P, req.done)
for _, r in ipairs(req.buckets) do
  local st = redis.call('HMGET', r.key, 'level', 'ts')
  if st[1] then
    local level = math.min(r.limit, tonumber(st[1]) + (now - tonumber(st[2])) * r.limit / 60000)
    redis.call('HSET', r.key, 'level', tostring(math.max(-r.limit, level - r.delta)), 'ts', tostring(now))
  end
end
if req.served then
  local s = req.served
  for _, p in ipairs(s.principals) do
    if s.input > 0 then redis.call('HINCRBY', s.key, 'i:'..p, s.input) end
    if s.output > 0 then redis.call('HINCRBY', s.key, 'o:'..p, s.output) end
  end
  redis.call('EXPIRE', s.key, 180)
end
reap(P, now)
return raw and 1 or 0
"""

# ARGV[1]: {prefix, lease_ms, leases: [ids], records: [ids], done: [ids]}. Extends this replica's
# live leases and the claim on its final records not committed yet; forgets those committed; reaps
# others' expired leases; claims (for one lease) final records whose claim expired (their replica
# died before its ledger committed them) and returns them: {kept, id, record, id, record...}.
_RENEW = _COMMON + """
local req = cjson.decode(ARGV[1])
local P = req.prefix
local now = server_ms()
local expiry = now + req.lease_ms
local kept = 0
for _, id in ipairs(req.leases) do
  if redis.call('ZSCORE', P..'leases', id) then
    redis.call('ZADD', P..'leases', 'XX', expiry, id)
    local rec = cjson.decode(redis.call('GET', P..'lease:'..id) or '{"slots":[]}')
    for _, s in ipairs(rec.slots) do redis.call('ZADD', s.key, 'XX', expiry, id) end
    kept = kept + 1
  end
end
for _, id in ipairs(req.records) do redis.call('ZADD', P..'records:at', 'XX', expiry, id) end
forget(P, req.done)
reap(P, now)
local answer = {kept}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P..'records:at', '-inf', now, 'LIMIT', 0, 100)) do
  local record = redis.call('HGET', P..'records', id)
  if record then
    redis.call('ZADD', P..'records:at', expiry, id)
    answer[#answer + 1] = id
    answer[#answer + 1] = record
  else
    redis.call('ZREM', P..'records:at', id)
  end
end
return answer
"""

BUDGET_TTL_S = 2 * 86400  # a budget hash idle this long goes (seeded again from the ledger on next use)


class StateUnavailable(Exception):
    """Redis did not answer (or answered with an error): the failure mode decides what follows."""


@dataclass(frozen=True)
class BudgetHold:
    """One level of a request's principal chain: what to reserve there while it runs."""

    principal: str
    amount: int               # pico-USD
    tokens: int = 0           # input + output tokens


@dataclass(frozen=True)
class BudgetSeed:
    """A principal's budget as the ledger has it: what a missing budget hash starts from."""

    limit: int | None         # pico-USD per window (None: no limit)
    limit_tokens: int | None
    window: str               # hour | day | month | total
    spent: int                # in the current window
    spent_tokens: int


_windows: tuple[int, dict[str, str]] = (-1, {})


def window_starts(now: float) -> dict[str, str]:
    """The start of the current hour, day and month (what budget hashes roll over by); computed
    once an hour (every window starts on an hour), not twice per request."""
    global _windows
    hour = int(now // 3600)
    if _windows[0] != hour:
        _windows = (hour, {w: str(budget_window(w, now)[0]) for w in ("hour", "day", "month")})
    return _windows[1]


def budget_usage(fields: list[Any]) -> dict[str, Any]:
    """A budget refusal's detail (lim, limk, win, sp, spk, rs, rsk) as the ledger's usage keys."""
    lim, limk, win, sp, spk, rs, rsk = (_text(f) for f in fields)
    return {"limit_pico_usd": int(lim) if lim else None, "limit_tokens": int(limk) if limk else None,
            "window": win or None, "spent_pico_usd": int(sp), "spent_tokens": int(spk),
            "reserved_pico_usd": int(rs), "reserved_tokens": int(rsk)}


@dataclass(frozen=True)
class Service:
    """Tokens a request was served, counted for its principals in the UTC minute ``minute``
    (Unix seconds // 60): the fair-share counts every replica reads."""

    minute: int
    input_tokens: int
    output_tokens: int


def current_minute() -> int:
    return int(time.time() // 60)


@dataclass
class Limits:
    """Global and per-principal limits (None: unlimited)."""

    concurrency: int | None = None
    principal_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    principal_rpm: int | None = None
    principal_tpm: int | None = None


@dataclass
class Verdict:
    ok: bool
    reason: str = ""            # budget | concurrency | rate | too_large | timeout
    level: int = -1             # index of the level that refused (budgets, slots or buckets)
    retry_after_s: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # the refusing budget level (budget_usage)
    mode: str = "shared"        # admitted through Redis ("shared") or this replica's share ("local")
    rate: dict[str, float] = field(default_factory=dict)  # OpenAI x-ratelimit values after this request


@dataclass
class Lease:
    id: str
    principals: list[str]
    budgets: list[BudgetHold]
    tokens: int
    live: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class RedisState:
    """See the module docstring. One per process; async methods, safe to call from the event loop."""

    def __init__(self, url: str, *, prefix: str = "tokenlane:", lease_s: float = 15.0, limits: Limits | None = None,
                 timeout_s: float = 5.0) -> None:
        if aioredis is None:
            raise RuntimeError("state='redis://...' needs redis-py: pip install 'tokenlane[scale]'")
        self.url = url
        self.prefix = prefix
        self.lease_s = lease_s
        self.limits = limits or Limits()
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # A bounded pool that makes callers wait for a connection: a burst of requests shares a few
        # connections (pipelined by Redis) instead of opening hundreds at once.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, timeout=30,
                                                        socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self._renew = self._redis.register_script(_RENEW)
        self._seed = self._redis.register_script(_SEED)
        self._sync_url, self._sync_timeout_s = url, timeout_s
        self._sync_client: Any = None  # for blocking admin calls from other threads (budget changes, usage)
        self._leases: dict[str, Lease] = {}
        # Final ledger records Redis keeps for this replica until its ledger has committed them
        # (a dead replica's are claimed by another: on_orphans), and those committed since the
        # last call (appended from the ledger thread).
        self._records: set[str] = set()
        self._committed: list[str] = []
        # Records whose settle call is still on its way (True: committed meanwhile). Forgetting one
        # before Redis stored it would leave it there for good: its forget waits for the call.
        self._storing: dict[str, bool] = {}
        self._records_lock = threading.Lock()  # the ledger thread reports commits
        self.on_orphans: Any = None  # (list of (id, record)) -> None: records of a dead replica to apply
        self._renewer: asyncio.Task[None] | None = None
        self.round_trips = 0  # hot-path calls made (acquire + settle + seed), for the benchmark

    # --- keys ---------------------------------------------------------------------------------

    def budget_key(self, principal: str) -> str:
        return f"{self.prefix}budget:{principal}"

    # --- the hot path -------------------------------------------------------------------------

    async def acquire(self, lease_id: str, principals: list[str], budgets: list[BudgetHold], tokens: int,
                      seed: Any = None, now: float | None = None, *, budgets_only: bool = False) -> Verdict:
        """Reserves at every budget level that has a limit, takes a concurrency slot at every level,
        draws one request and ``tokens`` from every bucket: all or nothing. ``seed(principals) ->
        [BudgetSeed]`` (async) reads what the ledger says of budgets Redis does not have yet (first
        use, idle for BUDGET_TTL_S, or Redis lost its data): one more round trip, then the acquire
        again. ``now``: Unix seconds (budget windows; default: the clock). ``budgets_only``: no
        slot and no rate (the batch lane: hours in the provider's queue, no load here)."""
        L = Limits() if budgets_only else self.limits
        slots = []
        if L.concurrency:
            slots.append({"key": f"{self.prefix}conc:*", "limit": L.concurrency})
        if L.principal_concurrency:
            slots += [{"key": f"{self.prefix}conc:{p}", "limit": L.principal_concurrency} for p in principals]
        buckets = []
        for scope, rpm, tpm in [("*", L.rpm, L.tpm)] + [(p, L.principal_rpm, L.principal_tpm) for p in principals]:
            if rpm:
                buckets.append({"key": f"{self.prefix}rpm:{scope}", "limit": rpm, "amount": 1})
            if tpm:
                buckets.append({"key": f"{self.prefix}tpm:{scope}", "limit": tpm, "amount": tokens})
        now = time.time() if now is None else now
        request = {
            "prefix": self.prefix, "lease": lease_id, "lease_ms": int(self.lease_s * 1000),
            "windows": window_starts(now), "budget_ttl_s": BUDGET_TTL_S,
            "budgets": [{"key": self.budget_key(b.principal), "amount": str(b.amount), "tokens": str(b.tokens)}
                        for b in budgets],
            "slots": slots, "buckets": buckets,
        }
        payload = json.dumps(request)
        for _ in range(3):
            answer = await self._call(self._acquire, payload)
            kind = _text(answer[0])
            if kind == "ok":
                lease = Lease(lease_id, principals, budgets, tokens)
                self._leases[lease_id] = lease
                self._ensure_renewer()
                return Verdict(True, rate=_tightest(buckets, [float(_text(x)) for x in answer[2:]]))
            level = int(answer[1]) - 1
            if kind == "seed":
                if seed is None:
                    raise StateUnavailable("budget counters are missing in Redis and no ledger to seed them")
                await self.seed([budgets[int(i) - 1].principal for i in answer[1:]], seed, now)
                continue
            if kind == "budget":
                return Verdict(False, "budget", level, usage=budget_usage(answer[2:9]))
            if kind == "rate":
                return Verdict(False, "rate", level, retry_after_s=int(_text(answer[2])) / 1000.0)
            return Verdict(False, kind, level)
        raise StateUnavailable("Redis kept losing the budget counters while seeding them")

    async def seed(self, principals: list[str], read: Any, now: float) -> None:
        """Creates the budget hashes of ``principals`` from ``read(principals) -> [BudgetSeed]``
        (the ledger), unless another replica did first."""
        seeds = await read(principals)
        payload = json.dumps({"budget_ttl_s": BUDGET_TTL_S, "budgets": [
            {"key": self.budget_key(p), "fields": _budget_fields(b, now)} for p, b in zip(principals, seeds)]})
        await self._call(self._seed, payload)

    async def settle(self, lease_id: str, actual_pico_usd: int, actual_tokens: int,
                     service: Service | None = None, now: float | None = None, *, charge: bool = True,
                     record: bytes | None = None) -> bool:
        """Charges the actual cost and tokens (input + output) at every budget level (unless not
        ``charge``), corrects the token buckets by ``actual_tokens``, counts ``service`` for the
        fair share, gives the lease back; keeps ``record`` (the request's final ledger record) until
        :meth:`committed` says the ledger has it. True when done (False: no such lease)."""
        own = record is not None and lease_id not in self._storing  # else the caller kept it (and retries)
        if own:
            self.keep(lease_id)
        try:
            return await self._settle_lease(lease_id, actual_pico_usd, actual_tokens, service, now, charge, record)
        finally:
            if own:
                self.stored(lease_id)

    async def _settle_lease(self, lease_id: str, actual_pico_usd: int, actual_tokens: int, service: Service | None,
                            now: float | None, charge: bool, record: bytes | None) -> bool:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        L = self.limits
        buckets = []
        delta = actual_tokens - lease.tokens
        for scope, tpm in [("*", L.tpm)] + [(p, L.principal_tpm) for p in lease.principals]:
            if tpm and delta:
                buckets.append({"key": f"{self.prefix}tpm:{scope}", "limit": tpm, "delta": delta})
        charged = charge and (actual_pico_usd > 0 or actual_tokens > 0)
        request = {
            "prefix": self.prefix, "lease": lease_id, "lease_ms": int(self.lease_s * 1000), "done": self._take_committed(),
            "charges": {"keys": [self.budget_key(b.principal) for b in lease.budgets] if charged else [],
                        "amount": str(actual_pico_usd), "tokens": str(actual_tokens),
                        "windows": window_starts(time.time() if now is None else now)},
            "buckets": buckets,
        }
        if service is not None and (service.input_tokens or service.output_tokens):
            request["served"] = {"key": self._service_key(service.minute), "principals": lease.principals,
                                 "input": service.input_tokens, "output": service.output_tokens}
        if record is not None:
            request["record"] = record.decode()
        try:
            await self._call(self._settle, json.dumps(request))
        except StateUnavailable:
            self._leases.setdefault(lease_id, lease)  # not settled: a retry finds it
            with self._records_lock:
                self._committed += request["done"]
            raise
        return True

    def keep(self, request_id: str) -> None:
        """(The event loop.) Settle calls will store this request's final record: a commit reported
        before :meth:`stored` waits for it (see committed). Call it before the record can reach the
        ledger."""
        with self._records_lock:
            self._records.add(request_id)
            self._storing[request_id] = False

    def stored(self, request_id: str) -> None:
        """The settle calls of a kept record are over (done, or given up)."""
        with self._records_lock:
            if self._storing.pop(request_id, False):
                self._committed.append(request_id)

    def committed(self, request_id: str) -> None:
        """(Any thread.) The ledger has committed this request's final record: Redis forgets it on
        the next call (after its own settle call has stored it)."""
        with self._records_lock:
            if request_id in self._storing:
                self._storing[request_id] = True
            else:
                self._committed.append(request_id)

    def _take_committed(self) -> list[str]:
        with self._records_lock:
            done, self._committed = self._committed, []
            self._records.difference_update(done)
        return done

    async def forget_committed(self) -> None:
        """Forgets the records the ledger has committed now (at shutdown, after the ledger's flush)."""
        if self._committed:
            await self.renew()

    async def release(self, lease_id: str) -> None:
        """Gives a lease back without charging (refused or cancelled before the call)."""
        await self.settle(lease_id, 0, self._leases[lease_id].tokens if lease_id in self._leases else 0, charge=False)

    # --- budgets, from blocking admin calls (any thread) ------------------------------------------

    def _sync(self) -> Any:
        if self._sync_client is None:
            import redis

            self._sync_client = redis.Redis.from_url(self._sync_url, socket_timeout=self._sync_timeout_s,
                                                     socket_connect_timeout=self._sync_timeout_s)
        return self._sync_client

    def sync_budget(self, principal: str, seed: BudgetSeed, now: float, *, respend: bool = False) -> None:
        """A budget changed in the ledger: its limits here too (and its window's spend when the
        window changed, or with ``respend``). Nothing to do when Redis has no hash for it yet."""
        payload = json.dumps({"key": self.budget_key(principal), "fields": _budget_fields(seed, now),
                              "respend": respend})
        try:
            self._sync().eval(_SYNC, 0, payload)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"{type(exc).__name__}: {exc}") from None

    def held(self, principal: str) -> tuple[int, int]:
        """(pico-USD, tokens) that running requests of every replica hold at ``principal``."""
        try:
            rs, rsk = self._sync().hmget(self.budget_key(principal), "rs", "rsk")
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"{type(exc).__name__}: {exc}") from None
        return int(rs or 0), int(rsk or 0)

    # --- background and admin -----------------------------------------------------------------

    def start(self) -> None:
        """Starts the background renewal (needs a running loop; idempotent)."""
        self._ensure_renewer()

    def _ensure_renewer(self) -> None:
        """The background renewal (every lease_s / 3): this replica's leases and records, and the
        claim of dead replicas' records; started by the first acquire (or start())."""
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="tokenlane-leases")

    async def _renew_loop(self) -> None:
        while not stopping():
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except StateUnavailable as exc:
                if stopping():
                    raise asyncio.CancelledError from None
                log.warning("tokenlane: cannot renew leases in Redis: %s", exc)

    async def renew(self) -> int:
        """Extends every live lease and kept record of this replica (one call), forgets the records
        committed, reaps expired leases of others and hands records of dead replicas to
        ``on_orphans``. Returns the number of leases kept."""
        done = self._take_committed()
        payload = json.dumps({"prefix": self.prefix, "lease_ms": int(self.lease_s * 1000),
                              "leases": list(self._leases), "records": list(self._records), "done": done})
        try:
            answer = await self._guard(self._renew(args=[payload]))
        except StateUnavailable:
            with self._records_lock:
                self._committed += done
            raise
        orphans = [(_text(answer[i]), answer[i + 1]) for i in range(1, len(answer) - 1, 2)]
        if orphans and self.on_orphans is not None:
            self.on_orphans(orphans)
        return int(answer[0])

    async def publish_queue(self, snapshot: dict[str, Any]) -> None:
        """This replica's queue, for the admin page of any replica (kept 10 s)."""
        await self._guard(self._redis.set(f"{self.prefix}queue:{self.replica}", json.dumps(snapshot), ex=10))

    async def queues(self) -> dict[str, Any]:
        """Every live replica's published queue."""
        keys = [k async for k in self._redis.scan_iter(f"{self.prefix}queue:*")]
        values = await self._guard(self._redis.mget(keys)) if keys else []
        return {_text(k)[len(self.prefix) + 6:]: json.loads(v) for k, v in zip(keys, values) if v}

    async def snapshot(self) -> dict[str, Any]:
        """Live leases, slots in use and reserved amounts (admin page, tests)."""
        r = self._redis
        leases = await self._guard(r.zcard(f"{self.prefix}leases"))
        slots = {_text(k)[len(self.prefix) + 5:]: await r.zcard(k)
                 async for k in r.scan_iter(f"{self.prefix}conc:*")}
        reserved = {}
        async for k in r.scan_iter(f"{self.prefix}budget:*"):
            rs, rsk = await r.hmget(k, "rs", "rsk")
            reserved[_text(k)[len(self.prefix) + 7:]] = (int(rs or 0), int(rsk or 0))
        return {"leases": int(leases), "slots": slots, "reserved": reserved}

    def _service_key(self, minute: int) -> str:
        return f"{self.prefix}service:{minute}"

    async def served(self, principal: str) -> int:
        """Tokens served to a principal in the current minute, over all replicas (fair share)."""
        values = await self._guard(self._redis.hmget(self._service_key(current_minute()), f"i:{principal}",
                                                     f"o:{principal}"))
        return sum(int(v or 0) for v in values)

    async def service(self, minutes: list[int]) -> dict[int, dict[str, tuple[int, int]]]:
        """The fleet's service in each of ``minutes``: principal → (input, output) tokens, over all
        replicas. One round trip (pipelined), for the fair-share sync off the request path."""
        pipe = self._redis.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self._service_key(minute))
        out: dict[int, dict[str, tuple[int, int]]] = {}
        for minute, fields in zip(minutes, await self._guard(pipe.execute())):
            counts: dict[str, list[int]] = {}
            for field, value in fields.items():
                kind, _, principal = _text(field).partition(":")
                counts.setdefault(principal, [0, 0])[kind == "o"] += int(value)
            out[minute] = {p: (c[0], c[1]) for p, c in counts.items()}
        return out

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._sync_client is not None:
            self._sync_client.close()
        await self._redis.aclose()

    # --- plumbing -----------------------------------------------------------------------------

    async def _call(self, script: Any, payload: str) -> Any:
        self.round_trips += 1
        return await self._guard(script(args=[payload]))

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise StateUnavailable(f"{type(exc).__name__}: {exc}") from None


def stopping() -> bool:
    """Whether the current task is being cancelled. redis-py may turn a cancellation that lands
    mid-call into a connection error (StateUnavailable here): background loops that go on after
    that error must check this, or they would outlive their event loop's shutdown (Python 3.11+;
    on 3.10 they stop at their next sleep)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


def _tightest(buckets: list[dict[str, Any]], levels: list[float]) -> dict[str, float]:
    """OpenAI's x-ratelimit values from the buckets just drawn: per unit, the one with least room."""
    out: dict[str, float] = {}
    for bucket, level in zip(buckets, levels):
        unit = "requests" if ":rpm:" in bucket["key"] else "tokens"
        if f"remaining_{unit}" not in out or level < out[f"remaining_{unit}"]:
            out[f"limit_{unit}"] = bucket["limit"]
            out[f"remaining_{unit}"] = max(0.0, level)
            out[f"reset_{unit}_s"] = max(0.0, bucket["limit"] - level) * 60.0 / bucket["limit"]
    return out


def _budget_fields(seed: BudgetSeed, now: float) -> dict[str, str]:
    fields = {"win": seed.window, "ws": str(budget_window(seed.window, now)[0]), "sp": str(seed.spent),
              "spk": str(seed.spent_tokens)}
    if seed.limit is not None:
        fields["lim"] = str(seed.limit)
    if seed.limit_tokens is not None:
        fields["limk"] = str(seed.limit_tokens)
    return fields


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["BUDGET_TTL_S", "BudgetHold", "BudgetSeed", "Limits", "RedisState", "Service", "StateUnavailable", "Verdict", "current_minute"]
