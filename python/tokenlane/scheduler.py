"""The scheduler: run now, queue, defer or refuse each priced request (C++ core; docs/scheduling.md).

    s = tokenlane.Scheduler(policy="default", max_concurrency=8, tpm=200_000)
    s.set_budget("alice", 5 * 10**12, window="day")          # $5 a UTC day
    d = s.submit({"id": "r1", "tenant": "alice", "model": "gpt-4o", "input_tokens": 812,
                  "est_output_p50": 150, "est_output_p90": 420,
                  "cost_p50_pico_usd": ..., "cost_p90_pico_usd": ..., "cost_max_pico_usd": ...}, now)
    d.kind            # "admit" | "queue" | "defer" | "reject"
    s.pop_ready(now)  # ids whose turn came; s.complete(id, now, cost, input_tokens, output_tokens)

The scheduler is passive and deterministic: it reads no clock (pass ``now``: Unix epoch seconds in
production, so budget windows are UTC hours/days/months) and owns no threads. Every method is
thread-safe and releases the GIL. Money is integer pico-dollars (1e-12 USD).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from . import _core

POLICIES = ("fifo", "cost_priority", "deadline", "fair", "default")
PRIORITIES = ("interactive", "standard", "batch")
WINDOWS = ("hour", "day", "month", "total")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Decision:
    """What the scheduler decided for one request.

    ``kind`` is "admit" (running now, ``reserved_pico_usd`` held against the budget), "queue"
    (waiting: ``position`` requests ahead, ``eta_s`` estimated seconds of wait), "defer" (in the
    deferred lane: runs when capacity and budget allow, or when an admin dispatches it) or "reject".
    ``reason`` is machine-readable ("ok", "queued", "deferred", "budget_deferred", "concurrency",
    "rate_limit_rpm", "rate_limit_tpm", "budget_exceeded", "queue_full", "max_wait", "too_large",
    "deadline", "admin", ...); ``message`` is a sentence for people; ``retry_after_s`` is the number of
    seconds until the blocking limit frees (exact for rate limits and budget windows, estimated from
    observed service times for concurrency), or None when retrying cannot help.
    """

    kind: str
    reason: str
    message: str
    retry_after_s: float | None = None
    position: int | None = None
    eta_s: float | None = None
    reserved_pico_usd: int = 0

    @classmethod
    def _from_core(cls, t: tuple[Any, ...]) -> Decision:
        return cls(*t)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _opt_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0) -> Any:
    if value is None:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < minimum:
        kind = "an int" if integer else "a number"
        raise _core.InvalidArgumentError(f"{name} must be None or {kind} >= {minimum:g}, got {value!r}")
    return value


def _records_cap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _core.InvalidArgumentError(f"max_tenant_records must be an int >= 1, got {value!r}")
    return value


def _count(req: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = req.get(key, default)
    if value is None:
        raise _core.InvalidArgumentError(f"request is missing '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _INT64_MAX:
        raise _core.InvalidArgumentError(f"request '{key}' must be a non-negative int, got {value!r}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _core.InvalidArgumentError(f"{what} must be a str, got {value!r}")
    return value


class Scheduler:
    """Admission, ordering and limits for priced LLM requests. See the module docstring.

    ``policy``: "fifo" (arrival order), "cost_priority" (cheap first, aged), "deadline" (least
    slack), "fair" (per-tenant virtual token counters, as VTC) or "default" (priority class, then
    fair share, then deadline slack or shortest predicted job, aged). Limits left at None are off.
    ``max_queue=0`` never queues: a blocked request is refused with the blocking cause.
    Tuning (rarely needed): ``shed_expired`` sheds queued requests whose deadline passed;
    ``ttft_s``/``tpot_s`` are the service-time prior (then learned per model); ``class_slo_s`` are
    the targets of requests without a deadline; ``cost_aging_s``/``sjf_aging`` bound how long a
    costly or long request can be overtaken (``tail_share``: under the default policy a
    request that waited (1 + tail_share) × the queue's expected wait at its arrival goes first); ``budget_defer_fraction`` is the share of a budget
    that batch requests may use; ``urgency_s`` (default policy) lets a request whose latest start
    time is that close go first; ``batch_max_defer_s`` is how long a request waits in the deferred
    lane for capacity before it joins the queue as a standard request (``math.inf``: never), so
    batch work cannot starve under sustained load. The record of a tenant with no work, budget or
    weight is forgotten after ``tenant_idle_forget_s`` idle seconds, or sooner while more than
    ``max_tenant_records`` exist, so unknown API keys cannot grow memory (docs/scheduling.md).
    """

    def __init__(
        self,
        policy: str = "default",
        max_concurrency: int | None = None,
        tenant_max_concurrency: int | None = None,
        tpm: float | None = None,
        rpm: float | None = None,
        tenant_tpm: float | None = None,
        tenant_rpm: float | None = None,
        max_queue: int | None = None,
        max_wait_s: float | None = None,
        *,
        shed_expired: bool = True,
        ttft_s: float = 0.5,
        tpot_s: float = 0.02,
        class_slo_s: tuple[float, float, float] = (10.0, 120.0, 86400.0),
        cost_aging_s: float = 60.0,
        sjf_aging: float = 4.0,
        budget_defer_fraction: float = 0.8,
        urgency_s: float = 2.0,
        batch_max_defer_s: float = 600.0,
        tail_share: float = 0.5,
        tenant_idle_forget_s: float = 600.0,
        max_tenant_records: int = 10_000,
    ) -> None:
        _check_policy(policy)
        self._core = _core.Scheduler(
            policy=policy,
            max_concurrency=_opt_number("max_concurrency", max_concurrency, integer=True, minimum=1),
            tenant_max_concurrency=_opt_number("tenant_max_concurrency", tenant_max_concurrency, integer=True, minimum=1),
            tpm=_opt_number("tpm", tpm, minimum=1e-9),
            rpm=_opt_number("rpm", rpm, minimum=1e-9),
            tenant_tpm=_opt_number("tenant_tpm", tenant_tpm, minimum=1e-9),
            tenant_rpm=_opt_number("tenant_rpm", tenant_rpm, minimum=1e-9),
            max_queue=_opt_number("max_queue", max_queue, integer=True),
            max_wait_s=_opt_number("max_wait_s", max_wait_s),
            shed_expired=bool(shed_expired),
            ttft_s=float(ttft_s),
            tpot_s=float(tpot_s),
            class_slo_s=tuple(float(x) for x in class_slo_s),
            cost_aging_s=float(cost_aging_s),
            sjf_aging=float(sjf_aging),
            budget_defer_fraction=float(budget_defer_fraction),
            urgency_s=float(urgency_s),
            batch_max_defer_s=float(batch_max_defer_s),
            tail_share=float(tail_share),
            tenant_idle_forget_s=float(tenant_idle_forget_s),
            max_tenant_records=_records_cap(max_tenant_records),
        )

    # -- budgets and weights -------------------------------------------------------------------------

    def set_budget(self, tenant: str, limit_pico_usd: int | None, window: str = "day") -> None:
        """Caps the tenant's spend per UTC ``window`` ("hour", "day", "month", "total"); None removes it."""
        tenant = _name(tenant, "tenant")
        if limit_pico_usd is None:
            self._core.clear_budget(tenant)
            return
        if window not in WINDOWS:
            raise _core.InvalidArgumentError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        self._core.set_budget(tenant, _money("limit_pico_usd", limit_pico_usd), window)

    def set_spent(self, tenant: str, spent_pico_usd: int, now: float) -> None:
        """Seeds the spend of the window containing ``now`` (e.g. from the ledger at start-up)."""
        self._core.set_spent(_name(tenant, "tenant"), _money("spent_pico_usd", spent_pico_usd), _now(now))

    def set_weight(self, tenant: str, weight: float) -> None:
        """Fair-share weight (default 1): a weight-2 tenant gets twice the service under contention."""
        self._core.set_weight(_name(tenant, "tenant"), float(weight))

    def add_service(self, tenant: str, input_tokens: int, output_tokens: int) -> None:
        """Service the tenant received on other replicas: added to its fair-share counter (weighted
        as a completion here), so ``fair`` and ``default`` order by the fleet's service."""
        if min(input_tokens, output_tokens) < 0:
            raise _core.InvalidArgumentError("token counts cannot be negative")
        self._core.add_service(_name(tenant, "tenant"), int(input_tokens), int(output_tokens))

    # -- the request lifecycle -----------------------------------------------------------------------

    def submit(self, request: Mapping[str, Any], now: float) -> Decision:
        """Decides for one request (a dict; see the contract in docs/scheduling.md)."""
        if not isinstance(request, Mapping):
            raise _core.InvalidArgumentError(f"request must be a dict, got {type(request).__name__}")
        rid = request.get("id")
        if not isinstance(rid, str) or not rid:
            raise _core.InvalidArgumentError("request 'id' must be a non-empty str")
        priority = request.get("priority") or "standard"
        if priority not in PRIORITIES:
            raise _core.InvalidArgumentError(f"request 'priority' must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        deadline = request.get("deadline_s")
        if deadline is not None:
            deadline = _now(deadline, "deadline_s")
        max_tokens = request.get("max_tokens")
        if max_tokens is not None:
            max_tokens = _count(request, "max_tokens")
        p50 = _count(request, "est_output_p50")
        p90 = _count(request, "est_output_p90", p50)
        cost_p50 = _count(request, "cost_p50_pico_usd")
        cost_p90 = _count(request, "cost_p90_pico_usd", cost_p50)
        cost_max = _count(request, "cost_max_pico_usd", cost_p90)
        t = self._core.submit(
            rid,
            _name(request.get("tenant", ""), "request 'tenant'"),
            _name(request.get("user") or "", "request 'user'"),
            _name(request.get("model", ""), "request 'model'"),
            priority,
            deadline,
            _count(request, "input_tokens"),
            p50,
            p90,
            max_tokens,
            cost_p50,
            cost_p90,
            cost_max,
            _now(now),
        )
        return Decision._from_core(t)

    def pop_ready(self, now: float) -> list[str]:
        """Ids moved to running since the last call (their reservations are taken): start them."""
        return self._core.pop_ready(_now(now))

    def pop_rejected(self, now: float) -> list[tuple[str, Decision]]:
        """Requests shed from the queue or the deferred lane since the last call, with the reason."""
        return [(rid, Decision._from_core(t)) for rid, t in self._core.pop_rejected(_now(now))]

    def complete(self, id: str, now: float, actual_cost_pico_usd: int, input_tokens: int, output_tokens: int) -> bool:
        """Charges the actual cost and tokens and releases the reservation; False unless running."""
        return self._core.complete(
            id,
            _now(now),
            _money("actual_cost_pico_usd", actual_cost_pico_usd),
            _count({"input_tokens": input_tokens}, "input_tokens"),
            _count({"output_tokens": output_tokens}, "output_tokens"),
        )

    def cancel(self, id: str, now: float) -> bool:
        """Ends a queued, deferred or running request, releasing everything; False for unknown ids."""
        return self._core.cancel(id, _now(now))

    def next_wakeup(self, now: float) -> float | None:
        """When pop_ready/pop_rejected may next return something without a new event (None: only
        a submit, complete or cancel can help)."""
        return self._core.next_wakeup(_now(now))

    def status(self, id: str) -> str | None:
        """"queued", "deferred", "running", or None (unknown or finished)."""
        return self._core.status(id)

    # -- reporting -----------------------------------------------------------------------------------

    def usage(self, tenant: str, now: float) -> dict[str, Any]:
        """{"spent_pico_usd", "reserved_pico_usd", "limit_pico_usd", "window", "resets_at"}."""
        return self._core.usage(_name(tenant, "tenant"), _now(now))

    def rate_limits(self, tenant: str, now: float) -> dict[str, float | None]:
        """OpenAI-style x-ratelimit values for a tenant (None where unlimited)."""
        return self._core.rate_limits(_name(tenant, "tenant"), _now(now))

    def snapshot(self, now: float, limit: int | None = None) -> dict[str, Any]:
        """Queue (policy order), deferred lane, running, reservations per tenant, counters, policy,
        paused. Money values are pico-dollar ints; ``limit`` caps each list."""
        cap = _INT64_MAX if limit is None else _opt_number("limit", limit, integer=True)
        return self._core.snapshot(_now(now), cap)

    # -- admin ---------------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stops starting queued requests (admin dispatch still works)."""
        self._core.pause()

    def resume(self) -> None:
        self._core.resume()

    @property
    def paused(self) -> bool:
        return self._core.paused

    def set_policy(self, name: str) -> None:
        """Switches the order; waiting requests are re-ordered at once."""
        _check_policy(name)
        self._core.set_policy(name)

    @property
    def policy(self) -> str:
        return self._core.policy

    def dispatch(self, id: str, now: float) -> bool:
        """Starts a queued or deferred request now if concurrency, rate limits and budget allow.
        The id is also returned by the next pop_ready (so the driver starts work in one place)."""
        return self._core.dispatch(id, _now(now))

    def reject(self, id: str, now: float, reason: str = "admin") -> bool:
        """Removes a queued or deferred request; pop_rejected reports it with ``reason``."""
        return self._core.reject(id, _now(now), _name(reason, "reason"))

    def defer(self, id: str, now: float) -> bool:
        """Moves a queued request to the deferred lane."""
        return self._core.defer(id, _now(now))

    def __repr__(self) -> str:
        q, d, r = self._core.counts()
        return f"<tokenlane.Scheduler policy={self.policy!r} queued={q} deferred={d} running={r}>"


def _check_policy(name: str) -> None:
    if name not in POLICIES:
        raise _core.InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")


def _now(value: Any, what: str = "now") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _core.InvalidArgumentError(f"{what} must be a finite number of seconds, got {value!r}")
    return float(value)


def _money(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _INT64_MAX:
        raise _core.InvalidArgumentError(f"{name} must be a non-negative int of pico-dollars, got {value!r}")
    return value
