"""Stage: shared limits, with ``state="redis://..."``. After the local scheduler lets a request
run, it takes the request's budget reservation, concurrency slots and rate-limit room from the
state every replica shares (:mod:`tokenlane.state`), all at once; it waits there (bounded by
``max_wait_s``) while slots or rate are short, and refuses over budget. Reconcile settles it,
counting the tokens served for the fleet's fair share, which :class:`FleetService` feeds back into
the local scheduler's counters. Without ``state`` the runtime does not build this stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._core import StorageError
from ..config import Settings
from ..errors import RequestError, ledger_unavailable
from ..ledger import Ledger
from ..metrics import Metrics
from ..pricing import usd_text
from ..state.fairshare import FleetService
from ..state.redis import BudgetHold, Limits, Service, StateUnavailable, current_minute
from ..state.shared import SharedAdmission
from ..windows import budget_window
from .base import LedgerThread, Priced
from .budget import Budget


class SharedLimits:
    def __init__(self, settings: Settings, ledger: Ledger, thread: LedgerThread, budget: Budget,
                 metrics: Metrics | None, clock: Callable[[], float],
                 add_service: Callable[[str, int, int], None] = lambda tenant, i, o: None) -> None:
        """``add_service(tenant, input, output)``: where service done on other replicas goes (the
        scheduler's fair-share counters)."""
        s = settings
        self.settings = settings
        self.ledger = ledger
        self.thread = thread
        self.budget = budget
        self.clock = clock
        self.admission = SharedAdmission(
            s.state or "", limits=Limits(concurrency=s.max_concurrency, principal_concurrency=s.tenant_max_concurrency,
                                         rpm=s.rpm, tpm=s.tpm, principal_rpm=s.tenant_rpm, principal_tpm=s.tenant_tpm),
            failure=s.state_failure, replicas=s.state_replicas, lease_s=s.state_lease_s, metrics=metrics)
        self.fleet = FleetService(self.admission.redis, add_service)

    async def __call__(self, p: Priced, amount: int) -> None:
        """Sets ``p.state_mode``: "shared", or "local" when Redis is unreachable and
        state_failure="local" (the ledger then reserves the budget). Raises RequestError when refused."""
        tenant = p.identity.tenant
        # Budgets at every level of the principal chain are reserved by the budget stage in the
        # ledger (PostgreSQL: one transaction over the levels, global and atomic); Redis holds
        # the slots and buckets. (RedisState can hold the budgets too: BudgetHold.)
        holds: list[BudgetHold] = []
        limit = None

        async def ledger_spent(principal: str) -> int:
            return (await self.thread.write(self.ledger.usage, principal, self.clock()))["spent_pico_usd"]

        deadline = time.monotonic() + (self.settings.max_wait_s or 0.0)
        try:
            verdict = await self.admission.acquire(p.id, [tenant], holds, p.input_tokens + p.est_p90,
                                                   seed=ledger_spent, deadline=deadline)
        except StorageError as exc:  # the ledger could not seed a budget counter
            raise ledger_unavailable(exc) from None
        except StateUnavailable:
            raise RequestError(503, "tokenlane's shared state (Redis) is unreachable and this service is "
                               "configured to refuse rather than guess (state_failure=\"closed\"); retry shortly",
                               type="service_unavailable", code="state_unavailable", retry_after_s=1.0,
                               headers={"x-tokenlane-state": "unavailable"}) from None
        if verdict.ok:
            p.state_mode, p.rate_limits = verdict.mode, verdict.rate or None
            return
        if verdict.reason == "budget":
            assert limit is not None
            end = budget_window(limit[1], p.arrival)[1]
            raise RequestError(
                429, f"budget of tenant {tenant!r} is used up for this {limit[1]} (spent {usd_text(verdict.spent)} "
                f"USD, reserved {usd_text(verdict.reserved)} USD over all replicas); this request may cost up to "
                f"{usd_text(amount)} USD", type="insufficient_quota", code="insufficient_quota",
                retry_after_s=None if end is None else max(1.0, end - p.arrival))
        if verdict.reason == "too_large":
            raise RequestError(413, "this request asks for more tokens than the per-minute limit allows",
                               code="request_too_large")
        raise RequestError(429, f"no concurrency slot or rate-limit room over all replicas within "
                           f"{self.settings.max_wait_s} s", type="rate_limit_exceeded", code="queue_timeout",
                           retry_after_s=1.0)

    def settle(self, p: Priced, actual_pico_usd: int, input_tokens: int, output_tokens: int) -> None:
        """Charges the actual cost, counts the tokens served, gives the lease back (in the background)."""
        service = None
        if p.state_mode == "shared" and (input_tokens or output_tokens):
            service = Service(current_minute(), input_tokens, output_tokens)
            self.fleet.served_here([p.identity.tenant], service)  # before it can reach Redis
        self.admission.settle(p.id, actual_pico_usd, input_tokens + output_tokens, service)


__all__ = ["SharedLimits"]
