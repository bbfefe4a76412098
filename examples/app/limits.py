"""Per-user request limits an admin sets on /admin/users (requests per minute and per day).

The scheduler's limits are global or the same for every tenant; these are one user's own. They are
checked before a request is scheduled: for API-key calls in the runtime's ``identify`` hook (so a
refusal is the middleware's own 429 with Retry-After and nothing is reserved), for the web form
before ``Tokenlane.submit``. Counts are kept in memory, per worker process."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from . import state

WINDOWS = {"rpm": 60.0, "rpd": 86400.0}


class UserLimits:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._config: dict[str, dict[str, Any]] = {}

    def configure(self, tenant: str, limits: dict[str, Any]) -> None:
        self._config[tenant] = {k: v for k, v in limits.items() if k in WINDOWS and v}

    def load(self, led: Any) -> None:
        for u in led.list_users():
            tenant = u.get("tenant") or u["email"]
            saved = state.get_cfg(led, state.user_limits_key(tenant))
            if saved:
                self.configure(tenant, saved)

    def limits(self, tenant: str) -> dict[str, Any]:
        return self._config.get(tenant, {})

    def take(self, tenant: str, now: float | None = None) -> tuple[str, float] | None:
        """Counts one request; returns (which limit, seconds until it frees) when over a limit."""
        config = self._config.get(tenant)
        if not config:
            return None
        now = time.time() if now is None else now
        for name, limit in config.items():
            q = self._seen.setdefault((tenant, name), deque())
            while q and q[0] <= now - WINDOWS[name]:
                q.popleft()
            if len(q) >= int(limit):
                return name, max(1.0, q[0] + WINDOWS[name] - now)
        for name in config:
            self._seen[(tenant, name)].append(now)
        return None


def refusal_message(tenant: str, which: str, limit: Any, retry_after: float) -> str:
    unit = "minute" if which == "rpm" else "day"
    return (f"{tenant} may send {limit} requests per {unit}; that limit is reached. "
            f"Retry in {retry_after:.0f} s, or ask an administrator to raise it.")


def identify_hook(limits: UserLimits) -> Any:
    """The runtime's identify hook: the API key's user, after their own request limits."""
    from tokenlane import Identity, RequestError

    async def identify(scope: dict[str, Any], request: Any) -> Any:
        if scope.get("tokenlane.identity") is not None:
            return None  # a job from the web form: already checked and identified
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        if not key:
            return None  # the middleware refuses it (require_api_key)
        rt = identify.runtime
        cached = rt.cached_api_key(key)
        record = cached[0] if cached is not None else await asyncio.to_thread(rt.api_key_record, key)
        if record is None:
            return None
        over = limits.take(record["tenant"])
        if over is not None:
            which, retry = over
            raise RequestError(429, refusal_message(record["tenant"], which, limits.limits(record["tenant"])[which], retry),
                               type="rate_limit_exceeded", code="user_rate_limit", retry_after_s=retry)
        return Identity(tenant=record["tenant"], user_id=record.get("user_id"), key_id=record.get("key_id"),
                        role=record.get("role"), org=record.get("org"), team=record.get("team"))

    identify.runtime = None  # set once the runtime exists
    return identify
