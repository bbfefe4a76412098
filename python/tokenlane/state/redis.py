"""Shared hot state on Redis, for several replicas: ``state="redis://host:6379/0"``.

What replicas must agree on lives here, changed only by Lua scripts (atomic on the server, no
read-modify-write from Python):

- budget reservations and window spend at every principal level (all levels or none),
- requests-per-minute and tokens-per-minute buckets (global and per principal),
- concurrency slots (global and per principal),
- fair-share counters (input and output tokens served per principal and minute, one hash per
  minute, read by every replica's fair-share sync: :mod:`tokenlane.state.fairshare`),
- each replica's queue, published for the admin page.

Every admitted request holds a *lease*: its reservations and slots are recorded under the lease id
with an expiry; the replica renews its live leases in the background (one call for all of them).
A replica that dies (``kill -9``) stops renewing, and the next call of any replica gives its
reservations and slots back once the lease has expired. The hot path costs two round trips:
``acquire`` (one script) and ``settle`` (one script).

Amounts cross to Lua as decimal strings and are compared as doubles: exact up to 2^53 pico-USD
(about 9,000 USD per counter); above that a check may be off by a few pico-USD.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tokenlane")

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the `scale` extra is not installed
    aioredis = None  # type: ignore[assignment]

    class RedisError(Exception):  # type: ignore[no-redef]
        pass


# Gives back the reservations and slots of expired leases (at most 50 per call). Shared by the
# scripts below through string concatenation, so each script stays one atomic call.
_REAP = """
local function reap(P, now)
  local expired = redis.call('ZRANGEBYSCORE', P..'leases', '-inf', now, 'LIMIT', 0, 50)
  for _, id in ipairs(expired) do
    local raw = redis.call('GET', P..'lease:'..id)
    if raw then
      local rec = cjson.decode(raw)
      for _, b in ipairs(rec.budgets) do
        if redis.call('DECRBY', b.reserved_key, b.amount) < 0 then redis.call('SET', b.reserved_key, 0) end
      end
      for _, s in ipairs(rec.slots) do redis.call('ZREM', s.key, id) end
      redis.call('DEL', P..'lease:'..id)
    end
    redis.call('ZREM', P..'leases', id)
  end
  return #expired
end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: none (single Redis; the prefix keeps tokenlane's keys together). ARGV[1]: the request as
# JSON. Returns {'ok', lease_expiry_ms} or {reason, level index, detail...} without changing
# anything when one level has no room.
_ACQUIRE = _REAP + """
local req = cjson.decode(ARGV[1])
local P = req.prefix
local now = server_ms()
reap(P, now)
local missing = {'seed'}
for i, b in ipairs(req.budgets) do
  if redis.call('EXISTS', b.spent_key) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
for i, b in ipairs(req.budgets) do
  local spent = redis.call('GET', b.spent_key)
  local reserved = tonumber(redis.call('GET', b.reserved_key) or '0')
  if tonumber(spent) + reserved + tonumber(b.amount) > tonumber(b.limit) then
    return {'budget', i, spent, tostring(reserved)}
  end
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
for _, b in ipairs(req.budgets) do redis.call('INCRBY', b.reserved_key, b.amount) end
for _, s in ipairs(req.slots) do redis.call('ZADD', s.key, expiry, req.lease) end
for i, r in ipairs(req.buckets) do
  redis.call('HSET', r.key, 'level', tostring(levels[i] - r.amount), 'ts', tostring(now))
  redis.call('PEXPIRE', r.key, 120000)
end
redis.call('SET', P..'lease:'..req.lease, ARGV[1])
redis.call('ZADD', P..'leases', expiry, req.lease)
local answer = {'ok', tostring(expiry)}
for i, r in ipairs(req.buckets) do answer[#answer + 1] = tostring(levels[i] - r.amount) end
return answer
"""

# ARGV[1]: {prefix, lease, charges: [{spent_key, amount, ttl_s}], buckets: [{key, limit, delta}],
# served: {key, principals, input, output} or absent}. Charges the actual spend; gives back what
# the lease held unless it has expired already (then the reaper gave it back: never twice); counts
# the tokens served to each principal in the minute's service hash (fields i:<p> and o:<p>).
_SETTLE = _REAP + """
local req = cjson.decode(ARGV[1])
local P = req.prefix
local raw = redis.call('GET', P..'lease:'..req.lease)
if raw then
  local rec = cjson.decode(raw)
  for _, b in ipairs(rec.budgets) do
    if redis.call('DECRBY', b.reserved_key, b.amount) < 0 then redis.call('SET', b.reserved_key, 0) end
  end
  for _, s in ipairs(rec.slots) do redis.call('ZREM', s.key, req.lease) end
  redis.call('DEL', P..'lease:'..req.lease)
  redis.call('ZREM', P..'leases', req.lease)
end
for _, c in ipairs(req.charges) do
  if redis.call('EXISTS', c.spent_key) == 1 then
    redis.call('INCRBY', c.spent_key, c.amount)
  end
end
local now = server_ms()
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

# ARGV[1]: {prefix, lease_ms, leases: [ids]}. Extends this replica's live leases; reaps others'.
_RENEW = _REAP + """
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
reap(P, now)
return kept
"""


class StateUnavailable(Exception):
    """Redis did not answer (or answered with an error): the failure mode decides what follows."""


@dataclass
class BudgetHold:
    """One principal level's budget: what to reserve and the limit it must stay under."""

    principal: str
    limit: int | None         # pico-USD in the window; None: track spend only
    window_start: int         # Unix seconds (0 for a "total" budget)
    window_ttl_s: int         # how long the window's spend counter must live
    amount: int               # pico-USD to reserve


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
    spent: int = 0
    reserved: int = 0
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
        self._leases: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.round_trips = 0  # hot-path calls made (acquire + settle + seed), for the benchmark

    # --- keys ---------------------------------------------------------------------------------

    def _spent_key(self, b: BudgetHold) -> str:
        return f"{self.prefix}spent:{b.principal}:{b.window_start}"

    def _reserved_key(self, principal: str) -> str:
        return f"{self.prefix}reserved:{principal}"

    # --- the hot path -------------------------------------------------------------------------

    async def acquire(self, lease_id: str, principals: list[str], budgets: list[BudgetHold], tokens: int,
                      seed: Any = None) -> Verdict:
        """Reserves at every budget level, takes a concurrency slot at every level, draws one
        request and ``tokens`` from every bucket: all or nothing. ``seed(principal) -> spent``
        (async) gives a level's window spend from the ledger when Redis has none yet (first use,
        or after Redis lost its data): one more round trip, then the acquire again."""
        L = self.limits
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
        request = {
            "prefix": self.prefix, "lease": lease_id, "lease_ms": int(self.lease_s * 1000),
            "budgets": [{"spent_key": self._spent_key(b), "reserved_key": self._reserved_key(b.principal),
                         "limit": None if b.limit is None else str(b.limit), "amount": str(b.amount)}
                        for b in budgets if b.limit is not None],
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
                # First use of these windows (or Redis lost them): their spend comes from the ledger,
                # all in one pipelined call; NX keeps a counter another replica seeded first.
                if seed is None:
                    raise StateUnavailable("budget counters are missing in Redis and no ledger to seed them")
                limited = [b for b in budgets if b.limit is not None]
                holds = [limited[int(i) - 1] for i in answer[1:]]
                spent = await asyncio.gather(*(seed(b.principal) for b in holds))
                pipe = self._redis.pipeline(transaction=False)
                for b, value in zip(holds, spent):
                    pipe.set(self._spent_key(b), int(value), nx=True, ex=b.window_ttl_s)
                self.round_trips += 1
                await self._guard(pipe.execute())
                continue
            if kind == "budget":
                return Verdict(False, "budget", level, spent=int(_text(answer[2])), reserved=int(float(_text(answer[3]))))
            if kind == "rate":
                return Verdict(False, "rate", level, retry_after_s=int(_text(answer[2])) / 1000.0)
            return Verdict(False, kind, level)
        raise StateUnavailable("Redis kept losing the budget counters while seeding them")

    async def settle(self, lease_id: str, actual_pico_usd: int, actual_tokens: int,
                     service: Service | None = None) -> None:
        """Charges the actual cost at every level, corrects the token buckets by ``actual_tokens``
        (input + output), counts ``service`` for the fair share, gives the lease back."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        L = self.limits
        buckets = []
        delta = actual_tokens - lease.tokens
        for scope, tpm in [("*", L.tpm)] + [(p, L.principal_tpm) for p in lease.principals]:
            if tpm and delta:
                buckets.append({"key": f"{self.prefix}tpm:{scope}", "limit": tpm, "delta": delta})
        request = {
            "prefix": self.prefix, "lease": lease_id,
            "charges": [{"spent_key": self._spent_key(b), "amount": str(actual_pico_usd)}
                        for b in lease.budgets if b.limit is not None and actual_pico_usd],
            "buckets": buckets,
        }
        if service is not None and (service.input_tokens or service.output_tokens):
            request["served"] = {"key": self._service_key(service.minute), "principals": lease.principals,
                                 "input": service.input_tokens, "output": service.output_tokens}
        await self._call(self._settle, json.dumps(request))

    async def release(self, lease_id: str) -> None:
        """Gives a lease back without charging (refused or cancelled before the call)."""
        await self.settle(lease_id, 0, self._leases[lease_id].tokens if lease_id in self._leases else 0)

    # --- background and admin -----------------------------------------------------------------

    def _ensure_renewer(self) -> None:
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
        """Extends every live lease of this replica (one call) and reaps expired ones of others."""
        payload = json.dumps({"prefix": self.prefix, "lease_ms": int(self.lease_s * 1000),
                              "leases": list(self._leases)})
        return int(await self._guard(self._renew(args=[payload])))

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
        async for k in r.scan_iter(f"{self.prefix}reserved:*"):
            reserved[_text(k)[len(self.prefix) + 9:]] = int(await r.get(k) or 0)
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["BudgetHold", "Limits", "RedisState", "Service", "StateUnavailable", "Verdict", "current_minute"]
