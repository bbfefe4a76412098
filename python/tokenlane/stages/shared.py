"""Stage: shared limits, with ``state="redis://..."``. After the local scheduler lets a request
run, it takes the request's budget reservation at every level of its principal chain, its
concurrency slots and its rate-limit room from the state every replica shares
(:mod:`tokenlane.state.redis`), all at once, in one script; it waits there (bounded by
``max_wait_s``) while slots or rate are short, and refuses over budget. Reconcile settles it,
charging the actual cost at every level and counting the tokens served for the fleet's fair
share, which :class:`FleetService` feeds back into the local scheduler's counters. The ledger
keeps the spend of record (each request's final record charges every level there too) and seeds
Redis's budget counters. Without ``state`` the runtime does not build this stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .._core import StorageError
from ..config import Settings
from ..errors import RequestError, ledger_unavailable
from ..ledger import Ledger
from ..metrics import Metrics
from ..pgledger import LOST
from ..state.fairshare import FleetService
from ..state.redis import BudgetHold, BudgetSeed, Limits, Service, StateUnavailable, current_minute
from ..state.shared import SharedAdmission
from ..windows import budget_window
from .base import LedgerThread, Priced
from .budget import Budget, over_budget_message

log = logging.getLogger("tokenlane")

UNFINISHED = ("running", "queued", "deferred")


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
        self._stale: set[str] = set()  # principals whose spend Redis may lack (charged while it was away)
        self.admission.on_recovered = self._resync
        self.admission.redis.on_orphans = self._orphans

    async def __call__(self, p: Priced, *, budgets_only: bool = False) -> None:
        """Sets ``p.state_mode``: "shared", or "local" when Redis is unreachable and
        state_failure="local" (the budget stage then reserves in the ledger). Raises RequestError
        when refused. ``budgets_only``: no slot, no rate (the batch lane)."""
        tenant = p.identity.tenant
        amount, tokens = self.budget.amount(p), self.budget.token_amount(p)
        holds = [BudgetHold(level, amount, tokens) for level in p.identity.chain()]
        deadline = time.monotonic() + (self.settings.max_wait_s or 0.0)
        try:
            verdict = await self.admission.acquire(p.id, [tenant], holds, p.input_tokens + p.est_p90,
                                                   seed=self._read_budgets, deadline=deadline,
                                                   budgets_only=budgets_only)
        except StorageError as exc:  # the ledger could not seed a budget counter
            raise ledger_unavailable(exc) from None
        except StateUnavailable:
            raise RequestError(503, "tokenlane's shared state (Redis) is unreachable and this service is "
                               "configured to refuse rather than guess (state_failure=\"closed\"); retry shortly",
                               type="service_unavailable", code="state_unavailable", retry_after_s=1.0,
                               headers={"x-tokenlane-state": "unavailable"}) from None
        if verdict.ok:
            p.state_mode, p.rate_limits = verdict.mode, verdict.rate or None
            if verdict.mode == "local":
                self._stale.update(p.identity.chain())  # charged in the ledger only, until Redis is back
            return
        if verdict.reason == "budget":
            refused = holds[verdict.level].principal
            usage = verdict.usage
            end = budget_window(usage.get("window") or "total", p.arrival)[1]
            raise RequestError(429, over_budget_message(refused, usage, self.budget.hold(p)),
                               type="insufficient_quota", code="insufficient_quota",
                               retry_after_s=None if end is None else max(1.0, end - p.arrival))
        if verdict.reason == "too_large":
            raise RequestError(413, "this request asks for more tokens than the per-minute limit allows",
                               code="request_too_large")
        raise RequestError(429, f"no concurrency slot or rate-limit room over all replicas within "
                           f"{self.settings.max_wait_s} s", type="rate_limit_exceeded", code="queue_timeout",
                           retry_after_s=1.0)

    async def _read_budgets(self, principals: list[str]) -> list[BudgetSeed]:
        """What the ledger says of these principals' budgets (one ledger call), to seed Redis."""
        return await self.thread.write(self.budget_seeds, principals, self.clock())

    def budget_seeds(self, principals: list[str], now: float) -> list[BudgetSeed]:
        """(Blocking.) Each principal's limits, window and spend in it, from the ledger."""
        out = []
        for principal in principals:
            u = self.ledger.usage(principal, now)
            out.append(BudgetSeed(u.get("limit_pico_usd"), u.get("limit_tokens"),
                                  u.get("window") or self.settings.budget_window,
                                  u["spent_pico_usd"], u.get("spent_tokens", 0)))
        return out

    def budget_changed(self, principal: str, now: float, *, respend: bool = False) -> None:
        """(Blocking, after the ledger changed.) The principal's budget in Redis follows the ledger;
        with Redis unreachable, once it answers again (the change is in the ledger already)."""
        try:
            self.admission.redis.sync_budget(principal, self.budget_seeds([principal], now)[0], now, respend=respend)
        except StateUnavailable as exc:
            self.admission.failed(exc)  # degraded: its recovery resyncs the principal
            self._stale.add(principal)

    def held(self, principal: str) -> tuple[int, int]:
        """(Blocking.) What running requests of every replica hold at ``principal``; (0, 0) when
        Redis does not answer (the ledger's reservations, made while it was away, still count)."""
        try:
            return self.admission.redis.held(principal)
        except StateUnavailable:
            return 0, 0

    def _resync(self) -> None:
        """Redis answers again: the budgets charged only in the ledger meanwhile take their spend
        from it (in the background, on the ledger thread)."""
        stale, self._stale = self._stale, set()
        if not stale:
            return

        def resync() -> None:
            for principal in stale:
                self.budget_changed(principal, self.clock(), respend=True)  # (gone again: next time)

        self.thread.submit(resync)

    def settle(self, p: Priced, actual_pico_usd: int, input_tokens: int, output_tokens: int,
               record: bytes | None = None) -> None:
        """Charges the actual cost, counts the tokens served, gives the lease back (in the
        background: ``p.settling``); ``record``, the request's final ledger record, is kept in Redis
        until the ledger has committed it (:meth:`committed`), so the response need not wait for the
        ledger: a replica killed before it commits leaves it to another (:meth:`_adopt`)."""
        service = None
        if p.state_mode == "shared" and (input_tokens or output_tokens):
            service = Service(current_minute(), input_tokens, output_tokens)
            self.fleet.served_here([p.identity.tenant], service)  # before it can reach Redis
        if self.admission.degraded:
            self._stale.update(p.identity.chain())  # its settlement may not reach Redis
        p.settling = self.admission.settle(p.id, actual_pico_usd, input_tokens + output_tokens, service, record)

    def committed(self, request_id: str) -> None:
        """(The ledger thread.) The request's final record is in the ledger."""
        self.admission.redis.committed(request_id)

    def _orphans(self, records: list[tuple[str, bytes]]) -> None:
        self.thread.submit(self._adopt, records)

    def _adopt(self, records: list[tuple[str, bytes]]) -> None:
        """(The ledger thread.) Final records a dead replica left in Redis, applied once each: a
        record whose row is final already (its replica committed it before it died) is skipped,
        unless the row is final only because the lease sweep gave the request up."""
        for request_id, record in records:
            row = self.ledger.get_request(request_id)
            if row is None or row["status"] in UNFINISHED or row.get("error") == LOST:
                for problem in self.ledger.apply_journal(record + b"\n"):
                    log.error("tokenlane: ledger record skipped: %s", problem)
            self.committed(request_id)


__all__ = ["SharedLimits"]
