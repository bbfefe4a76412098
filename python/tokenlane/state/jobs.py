"""The deferred lane replicas share, on Redis (``state="redis://…"``): any replica may run a
deferred job, exactly one does.

A replica that defers a request puts it here (the request as received: path, headers, body, and
the identity when it came from code) instead of keeping it in its own scheduler's lane. Every
replica's worker claims jobs when it has room: one Lua script moves the oldest pending job to
``running`` under a lease (owner, expiry), so two replicas can never claim the same job. The owner
renews its leases while it runs them; a replica that dies stops renewing, and the next claim of
any replica puts its expired jobs back in the lane, so another replica runs them, never while the
lease holds. The result is written to the job's record (kept ``RESULT_TTL_S`` after it ends), so
the job URL answers on every replica.

Why Redis and not PostgreSQL's ``FOR UPDATE SKIP LOCKED`` on the ledger: the lane must hold the
request's body (the ledger keeps only a redacted preview), it must work whatever the ledger is
(SQLite per host, PostgreSQL), and leases are what the Redis state already does for slots; one
script call claims and one ends a job, off the request path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import asdict
from typing import Any

from .redis import RedisState, StateUnavailable, _text, stopping

log = logging.getLogger("tokenlane")

RESULT_TTL_S = 86_400  # a finished job's status and response stay readable this long

# Puts the jobs of expired leases back in the lane (at their first place: their arrival).
_REAP_JOBS = """
local function reap_jobs(P, now)
  local expired = redis.call('ZRANGEBYSCORE', P..'jobs:running', '-inf', now, 'LIMIT', 0, 50)
  for _, id in ipairs(expired) do
    redis.call('ZREM', P..'jobs:running', id)
    local k = P..'job:'..id
    if redis.call('HGET', k, 'status') == 'running' then
      redis.call('HSET', k, 'status', 'pending', 'owner', '')
      redis.call('HINCRBY', k, 'lost_leases', 1)
      redis.call('ZADD', P..'jobs:pending', redis.call('HGET', k, 'created_ms'), id)
    end
  end
end
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: prefix, replica, lease_ms. Returns {id, request JSON} of the job claimed, or nil.
_CLAIM = _REAP_JOBS + """
local P, replica = ARGV[1], ARGV[2]
local now = server_ms()
reap_jobs(P, now)
for _ = 1, 20 do
  local first = redis.call('ZPOPMIN', P..'jobs:pending')
  if #first == 0 then return nil end
  local id = first[1]
  local k = P..'job:'..id
  if redis.call('HGET', k, 'status') == 'pending' then
    redis.call('HSET', k, 'status', 'running', 'owner', replica, 'claimed_ms', now)
    redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('ZADD', P..'jobs:running', now + tonumber(ARGV[3]), id)
    return {id, redis.call('HGET', k, 'request')}
  end
end
return nil
"""

# ARGV: prefix, replica, lease_ms, JSON list of job ids. Extends this replica's job leases; returns
# the ids it no longer owns (their lease expired and the job went back to the lane).
_RENEW_JOBS = _REAP_JOBS + """
local P, replica = ARGV[1], ARGV[2]
local now = server_ms()
local lost = {}
for _, id in ipairs(cjson.decode(ARGV[4])) do
  local owner = redis.call('HGET', P..'job:'..id, 'owner')
  if owner == replica and redis.call('ZSCORE', P..'jobs:running', id) then
    redis.call('ZADD', P..'jobs:running', 'XX', now + tonumber(ARGV[3]), id)
  else
    lost[#lost + 1] = id
  end
end
reap_jobs(P, now)
return lost
"""

# ARGV: prefix, replica, id, status, result JSON, ttl_s. Ends a job this replica owns: 1, else 0
# (its lease expired and another replica took it: that one's result stands).
_FINISH = """
local P, replica, id = ARGV[1], ARGV[2], ARGV[3]
local k = P..'job:'..id
if redis.call('HGET', k, 'owner') ~= replica or redis.call('HGET', k, 'status') ~= 'running' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', k, 'status', ARGV[4], 'result', ARGV[5], 'finished_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('ZREM', P..'jobs:running', id)
redis.call('EXPIRE', k, tonumber(ARGV[6]))
return 1
"""


class SharedJobs:
    """The shared deferred lane of one replica (see the module docstring)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.prefix = state.prefix
        self.replica = state.replica
        r = state._redis
        self._redis = r
        self._claim = r.register_script(_CLAIM)
        self._renew = r.register_script(_RENEW_JOBS)
        self._finish = r.register_script(_FINISH)
        self.mine: set[str] = set()  # jobs this replica claimed and has not finished
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    async def put(self, job_id: str, scope: dict[str, Any], body: bytes, identity: Any = None) -> None:
        """Puts a deferred request in the lane (one transaction: its record and its place)."""
        request = {
            "method": scope.get("method", "POST"), "path": scope["path"],
            "query_string": _text(scope.get("query_string") or b""),
            "headers": [[_text(k), v.decode("latin-1")] for k, v in scope.get("headers") or []],
            "body": base64.b64encode(body).decode(), "identity": asdict(identity) if identity is not None else None,
        }
        created = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._key(job_id), mapping={"request": json.dumps(request), "status": "pending",
                                              "created_ms": created, "attempts": 0, "lost_leases": 0})
        pipe.zadd(f"{self.prefix}jobs:pending", {job_id: created})
        await self.state._guard(pipe.execute())

    async def claim(self) -> tuple[str, dict[str, Any]] | None:
        """The oldest pending job, now this replica's under a lease; None when the lane is empty."""
        answer = await self.state._guard(self._claim(args=[self.prefix, self.replica,
                                                           int(self.state.lease_s * 1000)]))
        if not answer:
            return None
        job_id, request = _text(answer[0]), json.loads(_text(answer[1]))
        request["body"] = base64.b64decode(request["body"])
        self.mine.add(job_id)
        self._ensure_renewer()
        return job_id, request

    async def finish(self, job_id: str, status: str, result: dict[str, Any]) -> bool:
        """Records a claimed job's end; False when this replica no longer owned it."""
        self.mine.discard(job_id)
        done = await self.state._guard(self._finish(args=[self.prefix, self.replica, job_id, status,
                                                          json.dumps(result), RESULT_TTL_S]))
        return bool(done)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record (status, owner, attempts, result), None when it is not in the lane."""
        raw = await self.state._guard(self._redis.hgetall(self._key(job_id)))
        if not raw:
            return None
        record = {_text(k): _text(v) for k, v in raw.items() if _text(k) != "request"}
        if "result" in record:
            record["result"] = json.loads(record["result"])
        return record

    async def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest jobs waiting in the lane (admin page): id, path, waiting since."""
        entries = await self.state._guard(self._redis.zrange(f"{self.prefix}jobs:pending", 0, limit - 1,
                                                             withscores=True))
        return [{"id": _text(i), "since": score / 1000.0} for i, score in entries]

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="tokenlane-job-leases")

    async def _renew_loop(self) -> None:
        while self.mine and not stopping():
            await asyncio.sleep(self.state.lease_s / 3)
            try:
                lost = await self.state._guard(self._renew(args=[
                    self.prefix, self.replica, int(self.state.lease_s * 1000), json.dumps(sorted(self.mine))]))
            except StateUnavailable as exc:
                if stopping():
                    raise asyncio.CancelledError from None
                log.warning("tokenlane: cannot renew job leases in Redis: %s", exc)
                continue
            for job_id in map(_text, lost or []):
                if job_id in self.mine:
                    self.mine.discard(job_id)
                    log.warning("tokenlane: lost the lease of job %s (this replica stalled longer than the lease); "
                                "another replica may run it", job_id)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()


__all__ = ["RESULT_TTL_S", "SharedJobs"]
