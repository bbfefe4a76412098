"""The tokenlane runtime: the shared objects behind the middleware and the steps of one request.

A :class:`Tokenlane` holds the price table, the estimator, the scheduler (the C++ state machine,
driven here with the wall clock) and the ledger. For every LLM request the middleware asks it to

1. ``prepare``: count the prompt, estimate the output, price p50 / p90 / worst case;
2. ``admit``: submit to the scheduler, wait in the queue without blocking the event loop (woken by
   the dispatcher), and reserve the p90 cost in the ledger, which all worker processes share;
3. ``finish``: charge the actual cost, release the rest, write the ledger row, feed the estimator.

Deferred requests and requests submitted from code (:meth:`Tokenlane.submit`) are *jobs*: the same
three steps, with the wrapped app called in the background and its response kept for the job's
status URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .config import PRIORITIES, Settings, load_settings
from .errors import RequestError
from .estimators import Estimator
from .formats import LLMRequest, count_input_tokens, count_output_tokens
from .ledger import Ledger
from .metrics import Metrics
from .pricing import PICO_PER_USD, Pricing
from .providers import UsageReports
from .scheduler import Scheduler

log = logging.getLogger("tokenlane")

# Worst-case output when neither the request nor the price table bounds it.
DEFAULT_MAX_OUTPUT_TOKENS = 4096


def usd_text(pico: int) -> str:
    """Plain decimal USD (no exponent), as the cost headers carry it."""
    value = Decimal(pico).scaleb(-12)
    return format(value.normalize(), "f") if pico else "0"


# Scheduler reasons → how the refusal looks over HTTP (status, OpenAI error type, code).
_REFUSALS: dict[str, tuple[int, str, str]] = {
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "exceeds_budget": (429, "insufficient_quota", "insufficient_quota"),
    "rate_limit_rpm": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "rate_limit_tpm": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "concurrency": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "queue_full": (429, "rate_limit_exceeded", "queue_full"),
    "max_wait": (429, "rate_limit_exceeded", "queue_timeout"),
    "deadline": (429, "rate_limit_exceeded", "deadline_unreachable"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "admin": (409, "request_rejected", "admin"),
    "cancelled": (499, "request_cancelled", "cancelled"),
}


def refusal(decision: Any) -> RequestError:
    status, type_, code = _REFUSALS.get(decision.reason, (429, "rate_limit_exceeded", decision.reason))
    return RequestError(status, decision.message, type=type_, code=code, retry_after_s=decision.retry_after_s)


@dataclass
class Identity:
    tenant: str
    user_id: int | None = None
    key_id: int | None = None
    role: str | None = None


@dataclass
class Priced:
    """One request, counted, estimated and priced, as the scheduler sees it."""

    id: str
    route: str
    request: LLMRequest
    identity: Identity
    input_tokens: int
    input_exact: bool
    est_p50: int
    est_p90: int
    est_source: str
    max_output: int
    cost_p50: int
    cost_p90: int
    cost_max: int
    priority: str
    deadline_s: float | None
    arrival: float
    admitted_at: float | None = None
    reserved_ledger: int = 0  # pico-USD reserved in the ledger (cross-process budget)

    def scheduler_request(self) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": self.identity.tenant,
            "user": str(self.identity.user_id) if self.identity.user_id is not None else None,
            "priority": self.priority, "deadline_s": self.deadline_s, "model": self.request.model,
            "input_tokens": self.input_tokens, "est_output_p50": self.est_p50, "est_output_p90": self.est_p90,
            "max_tokens": self.max_output, "cost_p50_pico_usd": self.cost_p50,
            "cost_p90_pico_usd": self.cost_p90, "cost_max_pico_usd": self.cost_max,
        }

    @property
    def queue_ms(self) -> float:
        return 0.0 if self.admitted_at is None else (self.admitted_at - self.arrival) * 1000.0


@dataclass
class Outcome:
    """What happened downstream, as far as the middleware saw it."""

    status: int | None = None          # HTTP status the app answered with (None: nothing sent)
    usage: dict[str, Any] | None = None  # the response's own usage object
    text: str = ""                     # generated text seen in the response
    reports: UsageReports = field(default_factory=UsageReports)
    error: str | None = None
    started_output: bool = False       # any response body went out


@dataclass
class Job:
    """A deferred or code-submitted request, run in the background."""

    id: str
    scope: dict[str, Any]
    body: bytes
    priced: Priced | None = None
    status: str = "pending"            # pending | queued | deferred | running | succeeded | failed | rejected
    decision: dict[str, Any] | None = None
    response_status: int | None = None
    response_body: bytes = b""
    response_type: str = ""
    done: asyncio.Event | None = None

    def view(self) -> dict[str, Any]:
        result: Any = None
        if self.response_body:
            try:
                result = json.loads(self.response_body)
            except ValueError:
                result = self.response_body.decode("utf-8", "replace")
        return {"id": self.id, "status": self.status, "decision": self.decision,
                "response_status": self.response_status, "response": result}


class Tokenlane:
    """Everything one app's middleware shares; create one per process (or let the middleware)."""

    def __init__(self, *, config: str | None = None, ledger: Ledger | None = None,
                 scheduler: Scheduler | None = None, estimator: Estimator | None = None,
                 pricing: Pricing | None = None,
                 identify: Callable[[Mapping[str, Any], LLMRequest], Identity | str | None] | None = None,
                 clock: Callable[[], float] = time.time, **settings: Any) -> None:
        self.settings: Settings = load_settings(config, **settings)
        s = self.settings
        self.pricing = pricing or (Pricing.load(s.pricing) if s.pricing else Pricing.default())
        self.estimator = estimator or Estimator.default()
        self.ledger = ledger or Ledger(s.db)
        self.scheduler = scheduler or Scheduler(
            policy=s.policy, max_concurrency=s.max_concurrency, tenant_max_concurrency=s.tenant_max_concurrency,
            tpm=s.tpm, rpm=s.rpm, tenant_tpm=s.tenant_tpm, tenant_rpm=s.tenant_rpm,
            max_queue=s.max_queue, max_wait_s=s.max_wait_s)
        self.metrics = Metrics() if s.metrics else None
        self.identify = identify
        self.clock = clock
        self.app: Any = None  # the wrapped ASGI app, set by the middleware (jobs call it)
        self.extractors: list[tuple[Any, Callable[..., Any]]] = []  # (compiled route pattern, fn)
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._jobs: dict[str, Job] = {}
        self._tenants: dict[str, bool] = {}  # tenant → has a budget (set up once per process)
        self._keys: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._kick: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # One thread does every ledger call of this process, in submission order, off the event loop
        # (the ledger serialises on its connection anyway; order keeps a row's insert before its update).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenlane-ledger")

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Runs a blocking ledger call on the ledger thread; await the result when it matters."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._writer, lambda: fn(*args, **kwargs))

    # --- identity and tenants -------------------------------------------------------------------

    def cached_api_key(self, key: str) -> tuple[dict[str, Any] | None] | None:
        """The cached ledger record of an API key, as a 1-tuple; ``None`` when not cached."""
        hit = self._keys.get(hashlib.sha256(key.encode()).hexdigest())
        return (hit[1],) if hit and hit[0] > time.monotonic() else None

    def api_key_record(self, key: str) -> dict[str, Any] | None:
        """The ledger's record of an API key, cached for 30 s (blocking: call from a thread)."""
        record = self.ledger.verify_api_key(key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[hashlib.sha256(key.encode()).hexdigest()] = (time.monotonic() + 30.0, record)
        return record

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

    def set_budget(self, tenant: str, limit_usd: Decimal | float | str | None, window: str = "day") -> None:
        """Sets (or with ``None`` removes) a tenant's budget in the ledger and the scheduler."""
        now = self.clock()
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

    def usage(self, tenant: str) -> dict[str, Any]:
        """A tenant's spend in its budget window (blocking)."""
        u = self.ledger.usage(tenant, self.clock())
        limit = u.get("limit_pico_usd")
        remaining = u.get("remaining_pico_usd")

        def usd(p: int | None) -> float | None:
            return None if p is None else p / PICO_PER_USD

        return {"tenant": tenant, "spent_usd": usd(u["spent_pico_usd"]), "reserved_usd": usd(u["reserved_pico_usd"]),
                "remaining_usd": usd(remaining), "limit_usd": usd(limit), "requests": u["requests"],
                "window": u.get("window"), "resets_at": u.get("resets_at"),
                "spent_pico_usd": u["spent_pico_usd"], "reserved_pico_usd": u["reserved_pico_usd"]}

    # --- step 1: count, estimate, price ---------------------------------------------------------

    def prepare(self, request: LLMRequest, identity: Identity, route: str, headers: Mapping[str, str],
                now: float, request_id: str | None = None) -> Priced:
        """Counts, estimates and prices a parsed request (fast, CPU only). Raises RequestError."""
        s = self.settings
        priority = headers.get("x-tokenlane-priority") or request.priority or \
            s.tenant_priorities.get(identity.tenant, s.default_priority)
        if priority not in PRIORITIES:
            raise RequestError(400, f"X-Tokenlane-Priority must be one of {', '.join(PRIORITIES)}, got {priority!r}",
                               param="X-Tokenlane-Priority")
        deadline_ms = headers.get("x-tokenlane-deadline-ms", request.deadline_ms)
        deadline_s = None
        if deadline_ms is not None:
            try:
                deadline_ms = float(deadline_ms)
            except ValueError:
                deadline_ms = -1.0
            if not (deadline_ms > 0 and math.isfinite(deadline_ms)):
                raise RequestError(400, "X-Tokenlane-Deadline-Ms must be a positive number of milliseconds",
                                   param="X-Tokenlane-Deadline-Ms")
            deadline_s = now + deadline_ms / 1000.0
        known = request.model in self.pricing
        if not known and not self.pricing.has_fallback:
            raise RequestError(400, f"tokenlane has no price for model {request.model!r}: add it to a pricing "
                               "config (tokenlane.Pricing.load, the `pricing` setting) or configure a fallback "
                               "price", code="model_not_found", param="model")
        counted = count_input_tokens(request)
        max_input = self.pricing.max_input_tokens(request.model) if known else None
        cap = s.max_input_tokens
        if cap is not None and counted.tokens > cap:
            raise RequestError(413, f"the prompt has {counted.tokens} tokens; this service accepts at most {cap}",
                               code="request_too_large", param="messages")
        if max_input is not None and counted.exact and counted.tokens > max_input:
            raise RequestError(413, f"the prompt has {counted.tokens} tokens; {request.model} accepts at most "
                               f"{max_input}", code="context_length_exceeded", param="messages")
        model_max = (self.pricing.max_output_tokens(request.model) if known else None) or DEFAULT_MAX_OUTPUT_TOKENS
        max_output = min(request.max_tokens, model_max) if request.max_tokens else model_max
        if request.generates:
            est = self.estimator.estimate(request.estimator_input(), request.model, max_tokens=max_output,
                                          context={"route": route, "tenant": identity.tenant},
                                          input_tokens=counted.tokens, model_max_output=model_max)
            p50, p90, source = est.p50 * request.n, est.p90 * request.n, est.source
        else:
            p50 = p90 = max_output = 0
            source = "none"

        # The price tier depends on the prompt only, so cost is linear in output tokens: two exact
        # lookups price every output count.
        base = self.pricing.cost(request.model, input_tokens=counted.tokens).total_pico_usd
        per_output = self.pricing.cost(request.model, input_tokens=counted.tokens, output_tokens=1).total_pico_usd - base

        def price(out: int) -> int:
            return base + out * per_output

        return Priced(
            id=request_id or f"req_{uuid.uuid4().hex}", route=route, request=request, identity=identity,
            input_tokens=counted.tokens, input_exact=counted.exact, est_p50=p50, est_p90=p90, est_source=source,
            max_output=max_output * request.n, cost_p50=price(p50), cost_p90=price(p90),
            cost_max=price(max_output * request.n), priority=priority, deadline_s=deadline_s, arrival=now)

    # --- step 2: schedule -----------------------------------------------------------------------

    async def admit(self, p: Priced, disconnected: asyncio.Future[Any] | None = None,
                    on_decision: Callable[[Any], None] | None = None) -> Any:
        """Submits and waits until the request may run. Returns the scheduler's Decision; raises
        RequestError when refused (or deferred: callers handle ``kind == "defer"`` themselves)."""
        has_budget = self._tenants.get(p.identity.tenant)
        if has_budget is None:
            has_budget = await self.write(self._setup_tenant, p.identity.tenant, p.arrival)
        decision = self.scheduler.submit(p.scheduler_request(), self.clock())
        self._count_decision(p, decision)
        if on_decision:
            on_decision(decision)
        if decision.kind == "reject":
            raise refusal(decision)
        if decision.kind in ("queue", "defer"):
            self._ensure_dispatcher()  # it starts them when the scheduler lets them run
        if decision.kind == "defer":
            return decision
        if decision.kind == "queue":
            future = asyncio.get_running_loop().create_future()
            self._waiters[p.id] = future
            waiters: set[asyncio.Future[Any]] = {future}
            if disconnected is not None:
                waiters.add(disconnected)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not future.done():  # the client went away while queued
                self._waiters.pop(p.id, None)
                self.scheduler.cancel(p.id, self.clock())
                self._wake()
                raise RequestError(499, "client disconnected while queued", type="request_cancelled",
                                   code="client_closed_request")
            late = future.result()
            if late is not None:  # shed from the queue
                self._count_decision(p, late)
                raise refusal(late)
        p.admitted_at = self.clock()
        if self.metrics:
            self.metrics.queue_wait.observe(p.queue_ms / 1000.0)
        amount = p.cost_max if self.settings.budget_reserve == "max" else p.cost_p90
        if has_budget and amount > 0:
            # The scheduler's budget is this process's view; the ledger's conditional update is the
            # guard all processes share.
            ok = await self.write(self.ledger.reserve, p.identity.tenant, amount, p.admitted_at)
            if not ok:
                self.scheduler.cancel(p.id, self.clock())
                self._wake()
                usage = await self.write(self.ledger.usage, p.identity.tenant, p.admitted_at)
                resets = usage.get("resets_at")
                raise RequestError(
                    429, f"budget of tenant {p.identity.tenant!r} is used up for this {usage.get('window')} "
                    f"(spent {usd_text(usage['spent_pico_usd'])} USD, reserved {usd_text(usage['reserved_pico_usd'])} "
                    f"USD); this request may cost up to {usd_text(amount)} USD",
                    type="insufficient_quota", code="insufficient_quota",
                    retry_after_s=None if resets is None else max(1.0, resets - p.admitted_at))
            p.reserved_ledger = amount
        return decision

    def _count_decision(self, p: Priced, decision: Any) -> None:
        if self.metrics:
            self.metrics.requests.labels(decision.kind, decision.reason, p.request.model).inc()

    def _ensure_dispatcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._dispatcher is None or self._dispatcher.done():
            self._loop = loop
            self._kick = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch_loop(), name="tokenlane-dispatcher")

    def _wake(self) -> None:
        if self._kick is not None and self._loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._kick.set()
            elif not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._kick.set)

    async def _dispatch_loop(self) -> None:
        """Wakes queued requests when the scheduler lets them run; sleeps until its next wake-up."""
        assert self._kick is not None
        while True:
            now = self.clock()
            for request_id in self.scheduler.pop_ready(now):
                self._resolve(request_id, None)
            for request_id, decision in self.scheduler.pop_rejected(now):
                self._resolve(request_id, decision)
            if self.metrics:
                self.metrics.queue_length.set(len(self._waiters))
            wake = self.scheduler.next_wakeup(now)
            timeout = 1.0 if wake is None else min(1.0, max(0.0005, wake - now))
            try:
                await asyncio.wait_for(self._kick.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()

    def _resolve(self, request_id: str, rejection: Any) -> None:
        future = self._waiters.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(rejection)
            return
        job = self._jobs.get(request_id)
        if job is not None and job.status in ("deferred", "queued") and job.priced is not None:
            if rejection is None:
                self._spawn(self._run_job(job))
            else:
                job.status = "rejected"
                job.decision = _decision_dict(rejection)
                self.write(self.ledger.update_request, job.id, status="rejected",
                           reason=rejection.reason, finished_at=self.clock())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- step 3: reconcile ----------------------------------------------------------------------

    def finish(self, p: Priced, outcome: Outcome) -> tuple[dict[str, Any], Future[None]]:
        """Charges the actual cost, releases the rest, records, learns. Call it on the event loop:
        the ledger writes go to the ledger thread; wait for the returned future before the response
        completes. Returns the fields of the ledger row and that future."""
        now = self.clock()
        model = p.request.model
        cost = None
        if outcome.reports.calls:  # the handler reported its upstream calls: they are the truth
            for call_model, usage in outcome.reports.calls:
                c = self.pricing.cost_of_usage(call_model or model, usage)
                cost = c if cost is None else cost + c
            source = "reported"
        elif outcome.usage is not None:
            cost = self.pricing.cost_of_usage(model, outcome.usage)
            source = "response"
        if cost is None:
            # No usage anywhere: count what was generated. A call that produced output was billed
            # for its prompt too, so a stream cut short is never priced at zero.
            out = count_output_tokens(outcome.text, model) if outcome.text else 0
            billed_input = p.input_tokens if (outcome.started_output and (outcome.status or 500) < 400) or out else 0
            cost = self.pricing.cost(model, input_tokens=billed_input, output_tokens=out)
            source = "counted" if out else "none"
        actual = cost.total_pico_usd
        self.scheduler.complete(p.id, now, actual, cost.input_tokens, cost.output_tokens)
        self._wake()
        reserved_ledger, p.reserved_ledger = p.reserved_ledger, 0
        succeeded = outcome.error is None and outcome.status is not None and outcome.status < 400
        fields = dict(
            status="succeeded" if succeeded else "failed", finished_at=now,
            input_tokens=cost.input_tokens, output_tokens=cost.output_tokens,
            cached_input_tokens=cost.cached_input_tokens, reasoning_tokens=cost.reasoning_tokens,
            cost_pico_usd=actual, error=outcome.error or (None if succeeded else f"HTTP {outcome.status}"),
            started_at=p.admitted_at, queue_ms=p.queue_ms, reserved_pico_usd=reserved_ledger or p.cost_p90)
        if not self.settings.redact_prompts and outcome.text:
            fields["response_preview"] = outcome.text[:2000]
        written = self._writer.submit(self._record, p.identity.tenant, p.id, reserved_ledger, actual, now, dict(fields))
        fields["usage_source"] = source
        if succeeded and p.request.generates and source != "none":
            self.estimator.observe(p.request.estimator_input(), model, max(1, cost.output_tokens // p.request.n),
                                   context={"route": p.route, "tenant": p.identity.tenant},
                                   input_tokens=p.input_tokens)
        if self.metrics:
            m = self.metrics
            for kind, n in (("input", cost.input_tokens), ("output", cost.output_tokens),
                            ("cache_read", cost.cached_input_tokens), ("reasoning", cost.reasoning_tokens)):
                if n:
                    m.tokens.labels(kind, model).inc(n)
            m.token_usage.labels("input", model).observe(cost.input_tokens)
            m.token_usage.labels("output", model).observe(cost.output_tokens)
            m.cost.labels(model).inc(actual / PICO_PER_USD)
            if succeeded and p.est_p50 and cost.output_tokens:
                m.estimate_error.labels(model).observe(math.log2(cost.output_tokens / p.est_p50))
                if cost.output_tokens <= p.est_p90:
                    m.p90_covered.labels(model).inc()
        log.info("tokenlane request done", extra={"tokenlane": {
            "id": p.id, "tenant": p.identity.tenant, "model": model, "status": fields["status"],
            "input_tokens": cost.input_tokens, "output_tokens": cost.output_tokens,
            "cost_usd": usd_text(actual), "estimated_cost_usd": usd_text(p.cost_p50), "queue_ms": round(p.queue_ms, 3),
            **({} if self.settings.redact_prompts else {"prompt": p.request.text()[:2000]})}})
        return fields, written

    def _record(self, tenant: str, request_id: str, reserved: int, actual: int, now: float,
                fields: dict[str, Any]) -> None:
        """The ledger side of finish (ledger thread). Settled even without a budget, so every
        tenant's spend is on the ledger."""
        self.ledger.settle(tenant, reserved, actual, now)
        self.ledger.update_request(request_id, **fields)

    def ledger_row(self, p: Priced, status: str, decision: Any = None) -> dict[str, Any]:
        return {
            "id": p.id, "tenant": p.identity.tenant, "user_id": p.identity.user_id, "key_id": p.identity.key_id,
            "route": p.route, "model": p.request.model, "status": status,
            "decision": getattr(decision, "kind", None), "reason": getattr(decision, "reason", None),
            "priority": p.priority, "deadline_s": p.deadline_s, "created_at": p.arrival, "max_tokens": p.max_output,
            "est_input_tokens": p.input_tokens, "est_output_p50": p.est_p50, "est_output_p90": p.est_p90,
            "est_cost_pico_usd": p.cost_p50,
            "prompt_preview": None if self.settings.redact_prompts else p.request.text()[:2000],
        }

    # --- jobs: deferred requests and requests submitted from code --------------------------------

    async def submit(self, path: str, body: Mapping[str, Any], *, tenant: str, user_id: int | None = None,
                     priority: str = "standard", deadline_ms: float | None = None,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Runs a request through the same path as an HTTP request, in the background.

        Returns once the scheduler has decided: ``{"id", "decision", "reason", "message", "position",
        "status_url"}``; the response lands in the job (:meth:`job`) and the ledger row.
        """
        if self.app is None:
            raise RuntimeError("Tokenlane.submit needs the middleware installed (app.add_middleware(...))")
        raw = json.dumps(body).encode()
        hdrs = {"content-type": "application/json", "x-tokenlane-priority": priority, **(headers or {})}
        if deadline_ms is not None:
            hdrs["x-tokenlane-deadline-ms"] = str(deadline_ms)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), str(v).encode()) for k, v in hdrs.items()],
            "client": ("tokenlane-job", 0), "server": ("tokenlane", 0),
            "tokenlane.identity": Identity(tenant=tenant, user_id=user_id),
        }
        job = Job(id=f"req_{uuid.uuid4().hex}", scope=scope, body=raw, done=asyncio.Event())
        self._jobs[job.id] = job
        decided: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._spawn(self._start_job(job, decided))
        return await decided

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's status, with its response when done (``None`` if unknown here and in the ledger)."""
        job = self._jobs.get(job_id)
        row = self.ledger.get_request(job_id)
        if job is None and row is None:
            return None
        view = job.view() if job else {"id": job_id, "status": row["status"] if row else None}
        if row is not None:
            view["request"] = row
        if self.scheduler.status(job_id) == "queued":
            for entry in self.scheduler.snapshot(self.clock()).get("queue", []):
                if entry.get("id") == job_id:
                    view["position"] = entry.get("position")
        return view

    async def _start_job(self, job: Job, decided: asyncio.Future[dict[str, Any]]) -> None:
        from .asgi import handle_llm_request  # the one request path, shared with HTTP

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": job.body, "more_body": False}

        send = _job_send(job)

        def on_decision(info: dict[str, Any]) -> None:
            job.decision = info
            job.status = {"admit": "running", "queue": "queued", "defer": "deferred"}.get(info["decision"], "rejected")
            if not decided.done():
                decided.set_result({"id": job.id, **info, "status_url": self.status_url(job.id)})

        try:
            await handle_llm_request(self, job.scope, receive, send, job=job, on_decision=on_decision)
        except Exception as exc:  # a job has no client to tell: keep the error on the job
            job.status = "failed"
            job.response_body = json.dumps({"error": {"message": str(exc), "type": "server_error"}}).encode()
            log.exception("tokenlane job %s failed", job.id)
        finally:
            if job.status not in ("deferred", "queued"):
                self._finish_job(job)
            if not decided.done():
                decided.set_result({"id": job.id, "decision": "reject", "reason": "error",
                                    "message": job.view().get("response"), "status_url": self.status_url(job.id)})

    def _finish_job(self, job: Job) -> None:
        if job.status == "running":
            ok = job.response_status is not None and job.response_status < 400
            job.status = "succeeded" if ok else "failed"
        if job.done is not None:
            job.done.set()

    async def _run_job(self, job: Job) -> None:
        """A deferred/queued job the scheduler just let run."""
        from .asgi import run_admitted

        assert job.priced is not None
        job.status = "running"
        job.priced.admitted_at = self.clock()
        try:
            await run_admitted(self, job.priced, job.scope, job.body, _job_send(job))
        except Exception as exc:
            job.status = "failed"
            log.exception("tokenlane job %s failed: %s", job.id, exc)
        self._finish_job(job)

    def status_url(self, job_id: str) -> str:
        return f"{self.settings.route_prefix}/jobs/{job_id}"

    # --- admin ----------------------------------------------------------------------------------

    async def dispatch(self, request_id: str) -> bool:
        """Runs a queued or deferred request now (admin, manual mode)."""
        if not self.scheduler.dispatch(request_id, self.clock()):
            return False
        for ready in self.scheduler.pop_ready(self.clock()):  # the dispatched one among them
            self._resolve(ready, None)
        return True

    async def reject(self, request_id: str, reason: str = "admin") -> bool:
        """Refuses a queued or deferred request (admin)."""
        status = self.scheduler.status(request_id)
        if status not in ("queued", "deferred"):
            return False
        self.scheduler.reject(request_id, self.clock(), reason)
        for rejected, decision in self.scheduler.pop_rejected(self.clock()):  # the ledger row follows
            self._resolve(rejected, decision)
        return True

    def pause(self) -> None:
        self.scheduler.pause()

    def resume(self) -> None:
        self.scheduler.resume()
        self._wake()

    def set_policy(self, name: str) -> None:
        self.scheduler.set_policy(name)
        self._wake()


def _decision_dict(decision: Any) -> dict[str, Any]:
    return {"decision": decision.kind, "reason": decision.reason, "message": decision.message,
            "position": getattr(decision, "position", None), "eta_s": getattr(decision, "eta_s", None),
            "retry_after_s": decision.retry_after_s}


def _job_send(job: Job) -> Callable[[dict[str, Any]], Any]:
    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            job.response_status = message["status"]
            job.response_type = dict(message.get("headers") or []).get(b"content-type", b"").decode()
        elif message["type"] == "http.response.body":
            job.response_body += message.get("body", b"")
    return send
