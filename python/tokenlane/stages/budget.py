"""Stage: budgets over the principal hierarchy. A request is charged to every level of its
identity's chain (organisation → team → tenant → API key → end user) and admitted only if all of
them have room, in USD and, where a level has a token budget, in tokens (input + output, the same
window): one hold reserves both units at every level, all or nothing, through the shared state
(:mod:`tokenlane.state`), the guard every worker process and replica shares. Loads (or creates from
the settings) a tenant's budget once per process and keeps the scheduler's view of it; end users
get ``end_user_budget_usd`` (inside their key's budget, never beside it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

from .._core import StorageError
from ..config import Settings
from ..errors import RequestError, ledger_unavailable
from ..ledger import Ledger
from ..pricing import PICO_PER_USD, usd_text
from ..scheduler import Scheduler
from ..state import Hold, LocalState, Rate, Slots, State
from .base import Identity, LedgerThread, Priced, end_user_principal, level_of


LIMITS_KEY = "principal_limits"  # ledger configuration key of the per-principal limits
MAX_KNOWN_TENANTS = 100_000      # tenants whose budget this process has set up (a cache)


class Budget:
    def __init__(self, settings: Settings, ledger: Ledger, scheduler: Scheduler, thread: LedgerThread,
                 state: State) -> None:
        self.settings = settings
        self.ledger = ledger
        self.state = state
        self.scheduler = scheduler
        self.thread = thread
        self._tenants: dict[str, bool] = {}  # tenant → has a budget (set up once per process)
        self._end_users: set[str] = set()    # end-user principals given their default budget
        # principal → {"tpm", "rpm", "concurrency"}: limits at any level of the hierarchy
        self._limits: dict[str, dict[str, int]] = dict(ledger.get_config(LIMITS_KEY, {}) or {})
        self._limits_version: int | None = None  # the ledger's budget version _limited_principals is of
        self._limited_principals: set[str] = set()
        # With state="redis://...": the SharedLimits stage, where reservations live (every replica's)
        # and budget changes go after the ledger.
        self.shared: Any = None

    def has_budget(self, tenant: str) -> bool:
        """Whether this process knows the tenant to have a budget (set up on its first request)."""
        return bool(self._tenants.get(tenant))

    def known(self, tenant: str) -> bool:
        """Whether the tenant's budget is set up in this process (:meth:`ensure` has nothing to do)."""
        return tenant in self._tenants

    async def ensure(self, tenant: str, now: float) -> bool:
        """Whether the tenant has a budget, setting it up on first sight."""
        known = self._tenants.get(tenant)
        if known is not None:
            return known
        try:
            return bool(await self.thread.write(self._setup_tenant, tenant, now))
        except StorageError as exc:
            raise ledger_unavailable(exc) from None

    def _setup_tenant(self, tenant: str, now: float) -> bool:
        """Loads (or creates from the settings) the tenant's budget; blocking. Returns has-budget."""
        known = self._tenants.get(tenant)
        if known is not None:
            return known
        s = self.settings
        budget = self.ledger.get_budget(tenant)
        if budget is None:
            usd = s.tenant_budgets_usd.get(tenant, s.budget_usd)
            tokens = s.tenant_budgets_tokens.get(tenant, s.budget_tokens)
            if usd is not None or tokens is not None:
                self.ledger.set_budget(tenant, None if usd is None else int(usd * PICO_PER_USD), s.budget_window,
                                       limit_tokens=tokens)
                budget = self.ledger.get_budget(tenant)
        # A row without a limit is no budget: reservations along a principal chain (maybe by another
        # worker or replica) write one for every level.
        limited = budget is not None and has_limit(budget)
        if budget is not None and budget["limit_pico_usd"] is not None:
            # The scheduler's own view (ordering, queueing until budget frees up) is in USD only; a
            # token budget is enforced by the ledger's reservation alone.
            self.scheduler.set_budget(tenant, budget["limit_pico_usd"], budget["window"])
            self.scheduler.set_spent(tenant, self.ledger.usage(tenant, now)["spent_pico_usd"], now)
        if len(self._tenants) >= MAX_KNOWN_TENANTS:
            # Every unknown API key is a tenant: forget them all (each is set up again on its next
            # request, one ledger read) rather than grow with a client that invents keys.
            self._tenants.clear()
        self._tenants[tenant] = limited
        return limited

    def set_budget(self, tenant: str, limit_usd: Decimal | float | str | None, window: str, now: float,
                   limit_tokens: int | None = None) -> None:
        """Sets a tenant's whole budget in the ledger and the scheduler (blocking): its USD limit
        and its token limit (input + output tokens) over ``window``; ``None`` for no limit of that
        unit (both ``None``: no budget, spend still tracked)."""
        if limit_tokens is not None and (isinstance(limit_tokens, bool) or not isinstance(limit_tokens, int)
                                         or limit_tokens < 0):
            raise ValueError(f"limit_tokens must be a non-negative integer or None, got {limit_tokens!r}")
        pico = None if limit_usd is None else int(Decimal(str(limit_usd)) * PICO_PER_USD)
        self.ledger.set_budget(tenant, pico, window, limit_tokens=limit_tokens)
        if self.shared is not None:
            self.shared.budget_changed(tenant, now)
        self.scheduler.set_budget(tenant, pico, window)
        if pico is not None:
            self.scheduler.set_spent(tenant, self.ledger.usage(tenant, now)["spent_pico_usd"], now)
        self._tenants[tenant] = pico is not None or limit_tokens is not None

    def usage(self, tenant: str, now: float) -> dict[str, Any]:
        """A tenant's spend in its budget window (blocking)."""
        u = self.ledger.usage(tenant, now)
        if self.shared is not None:  # what requests running on every replica hold
            held = self.shared.held(tenant)
            for unit, amount in zip(("pico_usd", "tokens"), held):
                u[f"reserved_{unit}"] = u.get(f"reserved_{unit}", 0) + amount
                if u.get(f"limit_{unit}") is not None:
                    u[f"remaining_{unit}"] = max(0, u[f"limit_{unit}"] - u[f"spent_{unit}"] - u[f"reserved_{unit}"])
        limit = u.get("limit_pico_usd")
        remaining = u.get("remaining_pico_usd")

        def usd(p: int | None) -> float | None:
            return None if p is None else p / PICO_PER_USD

        return {"tenant": tenant, "principal": tenant, "level": level_of(tenant), "spent_usd": usd(u["spent_pico_usd"]), "reserved_usd": usd(u["reserved_pico_usd"]),
                "remaining_usd": usd(remaining), "limit_usd": usd(limit), "requests": u["requests"],
                "window": u.get("window"), "resets_at": u.get("resets_at"),
                "spent_pico_usd": u["spent_pico_usd"], "reserved_pico_usd": u["reserved_pico_usd"],
                "limit_pico_usd": limit, "remaining_pico_usd": remaining,
                "spent_tokens": u.get("spent_tokens", 0), "reserved_tokens": u.get("reserved_tokens", 0),
                "limit_tokens": u.get("limit_tokens"), "remaining_tokens": u.get("remaining_tokens")}

    def amount(self, p: Priced) -> int:
        """What the ledger reserves for a request: its worst case (a hard cap) or its p90 cost."""
        return p.cost_max if self.settings.budget_reserve == "max" else p.cost_p90

    def token_amount(self, p: Priced) -> int:
        """The tokens the ledger reserves, the same way: the prompt plus ``max_tokens`` (the worst
        case) or plus the p90 estimate of the output."""
        return p.input_tokens + (p.max_output if self.settings.budget_reserve == "max" else p.est_p90)

    def hold(self, p: Priced) -> Hold:
        """What the request takes from the shared state: its amount at every level it is charged to,
        and a place in the TPM/RPM buckets and concurrency slots of every level that has limits."""
        chain = p.identity.chain()
        if not self._limits:  # no TPM / RPM / concurrency limit anywhere (the usual case)
            return Hold(id=p.id, budgets=chain, amount_pico_usd=self.amount(p), amount_tokens=self.token_amount(p),
                        tokens=p.input_tokens + p.est_p50)
        limits = [(level, self._limits[level]) for level in chain if level in self._limits]
        return Hold(id=p.id, budgets=chain, amount_pico_usd=self.amount(p), amount_tokens=self.token_amount(p),
                    rates=tuple(Rate(level, lim.get("tpm"), lim.get("rpm")) for level, lim in limits
                                if lim.get("tpm") or lim.get("rpm")),
                    slots=tuple(Slots(level, lim["concurrency"]) for level, lim in limits if lim.get("concurrency")),
                    tokens=p.input_tokens + p.est_p50)

    def set_limits(self, principal: str, *, tpm: int | None = None, rpm: int | None = None,
                   concurrency: int | None = None) -> None:
        """Sets (all None: removes) a principal's TPM / RPM / concurrency limits (blocking; kept in
        the ledger's configuration, read by every process at start)."""
        for name, value in (("tpm", tpm), ("rpm", rpm), ("concurrency", concurrency)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        limits = {k: v for k, v in (("tpm", tpm), ("rpm", rpm), ("concurrency", concurrency)) if v is not None}
        if limits:
            self._limits[principal] = limits
        else:
            self._limits.pop(principal, None)
        self.ledger.set_config(LIMITS_KEY, self._limits)

    def limits(self, principal: str) -> dict[str, int]:
        return dict(self._limits.get(principal, {}))

    async def prepare(self, p: Priced, now: float) -> None:
        """Before any reservation: an end user's default budget, on first sight."""
        end_user = p.identity.end_user
        if end_user and (self.settings.end_user_budget_usd is not None
                         or self.settings.end_user_budget_tokens is not None):
            principal = end_user_principal(p.identity.owner, end_user)
            if principal not in self._end_users:
                await self.thread.write(self._setup_end_user, principal, now)

    async def reserve(self, p: Priced, now: float) -> None:
        """Reserves the request's amount at every level of its chain (organisation, team, tenant,
        key, end user), all or nothing; raises a 429 naming the first level without room. The
        scheduler's budget is this process's view of the tenant level; the shared state (on one
        host, one SQLite transaction) is the guard all processes share. A request admitted through
        Redis (``p.state_mode == "shared"``) holds its budgets there already."""
        hold = self.hold(p)
        if hold.amount_pico_usd <= 0 and hold.amount_tokens <= 0 and not hold.rates and not hold.slots:
            return
        await self.prepare(p, now)
        if (hold.amount_pico_usd > 0 or hold.amount_tokens > 0) and (
                p.state_mode == "shared" or not await self._limited(hold.budgets)):
            # Nothing to reserve here (no level has a limit, in any process; or Redis holds it):
            # spend is still settled at every level, with no ledger transaction to wait for.
            hold = Hold(id=hold.id, budgets=hold.budgets, rates=hold.rates, slots=hold.slots, tokens=hold.tokens)
            if not hold.rates and not hold.slots:
                p.hold = hold
                return
        acquiring = asyncio.ensure_future(self.state.acquire(hold, now))
        try:
            denied = await asyncio.shield(acquiring)
        except asyncio.CancelledError:  # interrupted (shutdown) while reserving: give back what it takes
            acquiring.add_done_callback(lambda done: done.cancelled() or done.exception() is not None
                                        or done.result() is not None or self.state.release(hold, now))
            raise
        if denied is not None and denied.kind != "budget":
            what = "concurrency" if denied.kind == "slots" else " / ".join(f"{v} {k}" for k, v in denied.detail.items())
            raise RequestError(
                429, f"{level_of(denied.key).replace('_', ' ')} {denied.key!r} is at its {what} limit",
                type="rate_limit_exceeded", code="rate_limit_exceeded", retry_after_s=denied.retry_after_s)
        if denied is not None:
            raise RequestError(429, over_budget_message(denied.key, denied.detail, hold),
                               type="insufficient_quota", code="insufficient_quota", retry_after_s=denied.retry_after_s)
        p.reserved_ledger = hold.amount_pico_usd
        p.reserved_tokens = hold.amount_tokens
        p.hold = hold

    async def _limited(self, levels: tuple[str, ...]) -> bool:
        """Whether any of ``levels`` has a budget limit. The ledger's budget version (bumped by
        every set_budget, in any process; a few microseconds to read) says when this process's
        set of limited principals is stale; a ledger without one (PostgreSQL) or an unreadable
        version always counts as limited."""
        version_of = getattr(self.ledger, "budget_version", None)
        version = version_of() if version_of is not None else -1
        if version < 0:
            return True
        if version != self._limits_version:
            budgets = await self.thread.write(self.ledger.list_budgets)
            self._limited_principals = {b["tenant"] for b in budgets if has_limit(b)}
            self._limits_version = version
        return any(level in self._limited_principals for level in levels)

    def _setup_end_user(self, principal: str, now: float) -> None:
        """Gives an end user the default end-user budget unless one is set (blocking)."""
        if principal in self._end_users:
            return
        usd, tokens = self.settings.end_user_budget_usd, self.settings.end_user_budget_tokens
        if (usd is not None or tokens is not None) and self.ledger.get_budget(principal) is None:
            self.ledger.set_budget(principal, None if usd is None else int(usd * PICO_PER_USD),
                                   self.settings.budget_window, now, limit_tokens=tokens)
        if len(self._end_users) > 100_000:
            self._end_users.clear()
        self._end_users.add(principal)

    def report(self, identity: Identity, now: float, end_users: int = 100) -> dict[str, Any]:
        """The usage of every level of an identity's chain, top first, and of the end users of its
        key (or tenant), most spent first (blocking)."""
        levels = [self.usage(level, now) for level in identity.chain()]
        prefix = end_user_principal(identity.owner, "")
        users = [self.usage(b["tenant"], now) for b in self.ledger.list_budgets() if b["tenant"].startswith(prefix)]
        for u in users:
            u["end_user"] = u["principal"][len(prefix):]
        users.sort(key=lambda u: -u["spent_pico_usd"])
        return {"levels": levels, "end_users": users[:end_users]}

    @property
    def settles_in_record(self) -> bool:
        """True on one host (budgets in this host's ledger): the request's final ledger record
        settles them (see :meth:`give_back`), else :meth:`settle` does."""
        return isinstance(self.state, LocalState)

    def give_back(self, p: Priced, tokens: int, now: float) -> tuple[str, ...]:
        """Frees the request's in-process rate and slot share; returns the levels its final ledger
        record settles (the hold's, or the whole chain: every level's spend is on the ledger)."""
        held, p.hold = p.hold or Hold(id=p.id, budgets=p.identity.chain()), None
        assert isinstance(self.state, LocalState)
        self.state.give_back(held, tokens, now)
        return tuple(held.budgets)

    def settle(self, p: Priced, reserved: int, actual: int, tokens: int, now: float, *,
               reserved_tokens: int = 0) -> Awaitable[None]:
        """Charges the actual cost and tokens at every level and frees the rest (started at once;
        await the result). Settled even without a budget (or a reservation), so every level's spend
        is on the ledger."""
        held, p.hold = p.hold or Hold(id=p.id, budgets=p.identity.chain()), None
        return self.state.settle(Hold(id=held.id, budgets=held.budgets, amount_pico_usd=reserved,
                                      amount_tokens=reserved_tokens, rates=held.rates, slots=held.slots,
                                      tokens=held.tokens), actual, tokens, now)


def has_limit(budget: dict[str, Any]) -> bool:
    """Whether a budget row limits anything (USD or tokens)."""
    return budget["limit_pico_usd"] is not None or budget.get("limit_tokens") is not None


def over_budget_message(principal: str, usage: dict[str, Any], hold: Hold) -> str:
    """The refusal's message: which level ran out, and of which unit. ``usage`` is read after the
    refusal, so other requests may have moved it meanwhile: the unit named is the one with a limit,
    and with both, the one left with less room (as a share of its limit) for this request."""
    level = f"{level_of(principal).replace('_', ' ')} {principal!r}"
    window = usage.get("window")

    def room(unit: str, amount: int) -> float | None:  # share of the limit left after this request
        limit = usage.get(f"limit_{unit}")
        if limit is None:
            return None
        left = limit - usage.get(f"spent_{unit}", 0) - usage.get(f"reserved_{unit}", 0) - amount
        return left / limit if limit else -1.0

    usd, tokens = room("pico_usd", hold.amount_pico_usd), room("tokens", hold.amount_tokens)
    if tokens is not None and (usd is None or tokens < usd):
        return (f"token budget of {level} is used up for this {window} (used {usage.get('spent_tokens', 0):,} "
                f"tokens, reserved {usage.get('reserved_tokens', 0):,}, limit {usage.get('limit_tokens'):,}); this "
                f"request may use up to {hold.amount_tokens:,} tokens (prompt and output)")
    return (f"budget of {level} is used up for this {window} (spent {usd_text(usage.get('spent_pico_usd', 0))} "
            f"USD, reserved {usd_text(usage.get('reserved_pico_usd', 0))} USD); this request may cost up to "
            f"{usd_text(hold.amount_pico_usd)} USD")


__all__ = ["Budget", "has_limit", "over_budget_message"]
