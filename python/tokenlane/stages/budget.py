"""Stage: budgets. Loads (or creates from the settings) a tenant's budget once per process, keeps
the scheduler's view of it, and reserves / settles in the ledger, the guard every worker process
shares."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..config import Settings
from ..errors import RequestError
from ..ledger import Ledger
from ..pricing import PICO_PER_USD, usd_text
from ..scheduler import Scheduler
from .base import LedgerThread, Priced


class Budget:
    def __init__(self, settings: Settings, ledger: Ledger, scheduler: Scheduler, thread: LedgerThread) -> None:
        self.settings = settings
        self.ledger = ledger
        self.scheduler = scheduler
        self.thread = thread
        self._tenants: dict[str, bool] = {}  # tenant → has a budget (set up once per process)

    def has_budget(self, tenant: str) -> bool:
        """Whether this process knows the tenant to have a budget (set up on its first request)."""
        return bool(self._tenants.get(tenant))

    async def ensure(self, tenant: str, now: float) -> bool:
        """Whether the tenant has a budget, setting it up on first sight."""
        known = self._tenants.get(tenant)
        if known is not None:
            return known
        return bool(await self.thread.write(self._setup_tenant, tenant, now))

    def _setup_tenant(self, tenant: str, now: float) -> bool:
        """Loads (or creates from the settings) the tenant's budget; blocking. Returns has-budget."""
        known = self._tenants.get(tenant)
        if known is not None:
            return known
        s = self.settings
        budget = self.ledger.get_budget(tenant)
        if budget is None:
            usd = s.tenant_budgets_usd.get(tenant, s.budget_usd)
            if usd is not None:
                self.ledger.set_budget(tenant, int(usd * PICO_PER_USD), s.budget_window)
                budget = self.ledger.get_budget(tenant)
        if budget is not None:
            self.scheduler.set_budget(tenant, budget["limit_pico_usd"], budget["window"])
            self.scheduler.set_spent(tenant, self.ledger.usage(tenant, now)["spent_pico_usd"], now)
        self._tenants[tenant] = budget is not None
        return budget is not None

    def set_budget(self, tenant: str, limit_usd: Decimal | float | str | None, window: str, now: float) -> None:
        """Sets (or with ``None`` removes) a tenant's budget in the ledger and the scheduler (blocking)."""
        if limit_usd is None:
            self.ledger.set_budget(tenant, None, window)
            self.scheduler.set_budget(tenant, None, window)
            self._tenants[tenant] = False
            return
        pico = int(Decimal(str(limit_usd)) * PICO_PER_USD)
        self.ledger.set_budget(tenant, pico, window)
        self.scheduler.set_budget(tenant, pico, window)
        self.scheduler.set_spent(tenant, self.ledger.usage(tenant, now)["spent_pico_usd"], now)
        self._tenants[tenant] = True

    def usage(self, tenant: str, now: float) -> dict[str, Any]:
        """A tenant's spend in its budget window (blocking)."""
        u = self.ledger.usage(tenant, now)
        limit = u.get("limit_pico_usd")
        remaining = u.get("remaining_pico_usd")

        def usd(p: int | None) -> float | None:
            return None if p is None else p / PICO_PER_USD

        return {"tenant": tenant, "spent_usd": usd(u["spent_pico_usd"]), "reserved_usd": usd(u["reserved_pico_usd"]),
                "remaining_usd": usd(remaining), "limit_usd": usd(limit), "requests": u["requests"],
                "window": u.get("window"), "resets_at": u.get("resets_at"),
                "spent_pico_usd": u["spent_pico_usd"], "reserved_pico_usd": u["reserved_pico_usd"]}

    def amount(self, p: Priced) -> int:
        """What the ledger reserves for a request: its worst case (a hard cap) or its p90 cost."""
        return p.cost_max if self.settings.budget_reserve == "max" else p.cost_p90

    async def reserve(self, p: Priced, now: float) -> None:
        """Reserves the request's amount in the ledger; raises a 429 when the budget has no room.
        The scheduler's budget is this process's view; the ledger's conditional update is the guard
        all processes share."""
        amount = self.amount(p)
        if amount <= 0:
            return
        ok = await self.thread.write(self.ledger.reserve, p.identity.tenant, amount, now)
        if not ok:
            usage = await self.thread.write(self.ledger.usage, p.identity.tenant, now)
            resets = usage.get("resets_at")
            raise RequestError(
                429, f"budget of tenant {p.identity.tenant!r} is used up for this {usage.get('window')} "
                f"(spent {usd_text(usage['spent_pico_usd'])} USD, reserved {usd_text(usage['reserved_pico_usd'])} "
                f"USD); this request may cost up to {usd_text(amount)} USD",
                type="insufficient_quota", code="insufficient_quota",
                retry_after_s=None if resets is None else max(1.0, resets - now))
        p.reserved_ledger = amount

    def settle(self, tenant: str, reserved: int, actual: int, now: float) -> None:
        """Releases the reservation and charges the actual cost (blocking: the ledger thread).
        Settled even without a budget, so every tenant's spend is on the ledger."""
        self.ledger.settle(tenant, reserved, actual, now)


__all__ = ["Budget"]
