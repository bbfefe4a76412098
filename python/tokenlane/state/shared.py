"""Admission through the state replicas share (Redis), and what happens when it is unreachable.

``state_failure="closed"``: refuse with 503 (OpenAI-shaped, ``code: state_unavailable``).
``state_failure="local"``: this replica enforces 1/N of every rate and concurrency limit on its own
(N = ``state_replicas``) and budgets through the ledger's atomic reservation (PostgreSQL's
conditional update is one global guard, so budgets stay hard caps); once Redis answers again, the
budget hashes of the principals charged meanwhile take their spend from the ledger
(``on_recovered``). Never a silent fallback to the
full limits: the ``tokenlane_state_unavailable_total`` counter, the ``tokenlane_state_degraded``
gauge, a warning in the log and the ``x-tokenlane-state`` response header say it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .redis import BudgetHold, Limits, RedisState, Service, StateUnavailable, Verdict

log = logging.getLogger("tokenlane")

STATE_HEADER = "x-tokenlane-state"


@dataclass
class _Bucket:
    limit: float
    level: float
    ts: float = field(default_factory=time.monotonic)

    def take(self, amount: float) -> float | None:
        """Takes `amount`; None when done, else seconds until it would fit."""
        now = time.monotonic()
        self.level = min(self.limit, self.level + (now - self.ts) * self.limit / 60.0)
        self.ts = now
        if amount <= self.level:
            self.level -= amount
            return None
        return (amount - self.level) * 60.0 / self.limit


class LocalShare:
    """1/N of every limit, enforced in this process while the shared state is unreachable."""

    def __init__(self, limits: Limits, replicas: int) -> None:
        def part(v: int | None) -> int | None:
            return None if v is None else max(1, v // replicas)

        self.limits = Limits(*(part(getattr(limits, f)) for f in Limits.__dataclass_fields__))
        self._running: dict[str, int] = {}
        self._held: dict[str, list[str]] = {}
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, lease_id: str, principals: list[str], tokens: int) -> tuple[str, float | None] | None:
        """None when admitted, else (reason, retry_after_s)."""
        L = self.limits
        scopes = ["*"] + principals
        caps = [L.concurrency] + [L.principal_concurrency] * len(principals)
        for scope, cap in zip(scopes, caps):
            if cap is not None and self._running.get(scope, 0) >= cap:
                return "concurrency", None
        for scope, rpm, tpm in [("*", L.rpm, L.tpm)] + [(p, L.principal_rpm, L.principal_tpm) for p in principals]:
            for kind, limit, amount in (("rpm", rpm, 1), ("tpm", tpm, tokens)):
                if limit is None:
                    continue
                if amount > limit:
                    return "too_large", None
                bucket = self._buckets.setdefault(f"{kind}:{scope}", _Bucket(limit, limit))
                wait = bucket.take(amount)
                if wait is not None:
                    return "rate", wait
        held = [s for s, cap in zip(scopes, caps) if cap is not None]
        for scope in held:
            self._running[scope] = self._running.get(scope, 0) + 1
        self._held[lease_id] = held
        return None

    def release(self, lease_id: str) -> None:
        for scope in self._held.pop(lease_id, ()):
            self._running[scope] -= 1


class SharedAdmission:
    """The runtime's door to the shared state (see the module docstring)."""

    def __init__(self, url: str, *, limits: Limits, failure: str, replicas: int, lease_s: float,
                 metrics: Any = None) -> None:
        self.redis = RedisState(url, lease_s=lease_s, limits=limits)
        self.failure = failure
        self.local = LocalShare(limits, replicas)
        self.metrics = metrics
        self.degraded = False
        self.on_recovered: Callable[[], None] = lambda: None  # Redis answers again (after a failure)
        self._local_leases: set[str] = set()
        self._pending: set[asyncio.Task[Any]] = set()

    async def acquire(self, lease_id: str, principals: list[str], budgets: list[BudgetHold], tokens: int, *,
                      seed: Callable[[list[str]], Awaitable[Any]], deadline: float, budgets_only: bool = False) -> Any:
        """Waits (polling with backoff) while slots or rate are short, until ``deadline``
        (monotonic). Returns the Verdict: admitted with ``mode`` "shared", or "local" (degraded: the
        caller reserves budgets in the ledger), or refused (``reason`` budget, too_large, timeout).
        Raises StateUnavailable in closed mode."""
        delay = 0.005
        while True:
            try:
                verdict = await self._acquire_once(lease_id, principals, budgets, tokens, seed, budgets_only)
                self._recovered()
                if verdict.ok or verdict.reason not in ("concurrency", "rate"):
                    return verdict
                wait = verdict.retry_after_s
            except StateUnavailable as exc:
                self.failed(exc)
                if self.failure == "closed":
                    raise
                refused = None if budgets_only else self.local.acquire(lease_id, principals, tokens)
                if refused is None:
                    self._local_leases.add(lease_id)
                    return Verdict(True, mode="local")
                if refused[0] == "too_large":
                    return Verdict(False, "too_large")
                wait = refused[1]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Verdict(False, "timeout")
            pause = min(remaining, max(delay, wait or 0.0)) * (0.75 + random.random() / 2)
            await asyncio.sleep(pause)
            delay = min(delay * 2, 0.25)

    async def _acquire_once(self, lease_id: str, principals: list[str], budgets: list[BudgetHold], tokens: int,
                            seed: Callable[[list[str]], Awaitable[Any]], budgets_only: bool) -> Verdict:
        """One acquire script. Interrupted while it runs (the request was refused elsewhere, or
        gone), it still completes, and what it took is given back at once rather than when the
        lease expires."""
        call = asyncio.ensure_future(self.redis.acquire(lease_id, principals, budgets, tokens, seed,
                                                        budgets_only=budgets_only))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: done.cancelled() or done.exception() is not None
                                   or not done.result().ok or self.settle(lease_id, 0, 0))
            raise

    def settle(self, lease_id: str, actual_pico_usd: int, tokens: int, service: Service | None = None,
               record: bytes | None = None) -> asyncio.Future[Any] | None:
        """Charges and gives back (and counts ``service`` for the fleet's fair share), in the
        background (retried while Redis is away; the lease returns the slots anyway once it expires).
        ``record``: the request's final ledger record, which Redis keeps until the ledger has it.
        Returns the settlement's task (its result: whether Redis took it; None for this replica's
        local share)."""
        if lease_id in self._local_leases:
            self._local_leases.discard(lease_id)
            self.local.release(lease_id)
            return None
        if record is not None:
            self.redis.keep(lease_id)  # before the ledger can report its commit
        task = asyncio.ensure_future(self._settle(lease_id, actual_pico_usd, tokens, service, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(self, lease_id: str, actual: int, tokens: int, service: Service | None,
                      record: bytes | None) -> bool:
        try:
            return await self._settle_retried(lease_id, actual, tokens, service, record)
        finally:
            if record is not None:
                self.redis.stored(lease_id)

    async def _settle_retried(self, lease_id: str, actual: int, tokens: int, service: Service | None,
                              record: bytes | None) -> bool:
        for attempt in range(20):
            try:
                return await self.redis.settle(lease_id, actual, tokens, service, record=record)
            except StateUnavailable as exc:
                self.failed(exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
        log.error("tokenlane: could not settle lease %s in Redis; it expires on its own", lease_id)
        return False

    async def drain(self) -> None:
        """Waits for background settlements (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def failed(self, exc: Exception) -> None:
        """Redis did not answer: degraded until an answer comes (then ``on_recovered``), said loudly."""
        if self.metrics is not None:
            self.metrics.state_unavailable.labels(self.failure).inc()
            self.metrics.state_degraded.set(1)
        if not self.degraded:
            self.degraded = True
            log.warning("tokenlane: shared state (Redis) unreachable: %s; state_failure=%s: %s", exc, self.failure,
                        "refusing LLM requests with 503" if self.failure == "closed"
                        else "this replica enforces 1/N of every limit")

    def _recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            if self.metrics is not None:
                self.metrics.state_degraded.set(0)
            log.warning("tokenlane: shared state (Redis) reachable again; limits are global again")
            self.on_recovered()


__all__ = ["STATE_HEADER", "LocalShare", "SharedAdmission"]
