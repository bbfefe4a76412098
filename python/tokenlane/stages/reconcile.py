"""Stage: reconcile. Charges the actual cost (from the handler's reported calls, the response's
usage, or by counting the generated text), releases the rest of the reservation, writes the
ledger row, feeds the estimator, updates the metrics and logs one line."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from .. import _core
from ..config import Settings
from ..estimators import Estimator
from ..formats import count_output_tokens
from ..ledger import Ledger
from ..metrics import Metrics
from ..pricing import PICO_PER_USD, Pricing, usd_text
from ..records import truncated
from ..recovery import owner_token
from .base import LedgerThread, Outcome, Priced
from .prompt_cache import prompt_cache_saving
from .budget import Budget
from .observe import Observe
from .schedule import Schedule

log = logging.getLogger("tokenlane")


def fallbacks(attempts: list[dict[str, Any]]) -> int:
    """How many times a call moved on to another model."""
    models: list[str] = []
    for a in attempts:
        if a.get("model") not in models:
            models.append(a.get("model"))
    return max(0, len(models) - 1)


class Reconcile:
    def __init__(self, settings: Settings, pricing: Pricing, estimator: Estimator, ledger: Ledger,
                 thread: LedgerThread, budget: Budget, schedule: Schedule, metrics: Metrics | None,
                 clock: Callable[[], float], observe: Observe | None = None) -> None:
        self.settings = settings
        self.pricing = pricing
        self.estimator = estimator
        self.ledger = ledger
        self.thread = thread
        self.budget = budget
        self.schedule = schedule
        self.metrics = metrics
        self.clock = clock
        self._settling: set[asyncio.Task[None]] = set()
        self._series: dict[str, SimpleNamespace] = {}  # model → its metric series
        self.observe = observe  # alerts, anomalies, OpenTelemetry (None: all off)
        # Requests the fast path prepared teach the estimator on a native thread, after the
        # response (tokenlane/prepare.hpp); the others here, on the event loop.
        own = isinstance(estimator, Estimator) and type(estimator).observe is Estimator.observe
        self.learner = _core.BackgroundObserver(estimator._core) if own else None

    def ledger_row(self, p: Priced, status: str, decision: Any = None) -> dict[str, Any]:
        """The ledger row of a request as the scheduler decided it (before it runs)."""
        return {
            "owner": owner_token(),
            "id": p.id, "tenant": p.identity.tenant, "user_id": p.identity.user_id, "key_id": p.identity.key_id,
            "end_user": p.identity.end_user,
            "route": p.route, "model": p.request.model, "status": status,
            "decision": getattr(decision, "kind", None), "reason": getattr(decision, "reason", None),
            "priority": p.priority, "deadline_s": p.deadline_s, "created_at": p.arrival, "max_tokens": p.max_output,
            "est_input_tokens": p.input_tokens, "est_output_p50": p.est_p50, "est_output_p90": p.est_p90,
            "est_cost_pico_usd": p.cost_p50,
            "prompt_preview": None if self.settings.redact_prompts else p.request.text()[:2000],
            "requested_model": p.requested_model, "route_rule": p.route_rule, "batch": int(p.batch),
            "cache": p.cache, "untrimmed_input_tokens": p.untrimmed_input_tokens,
        }

    def decided(self, p: Priced, status: str, decision: Any) -> None:
        """Queues the request's row as decided (not journaled: until the request is answered, its
        row only shows it running; a worker that dies before then is reclaimed). Written once the
        event loop is done with this step of the request (the wrapped app has started, or waits
        for its upstream): nothing the request's first byte waits for. A request answered within
        the same step has its row written by its final record instead (see :meth:`finish_row`)."""
        p.decided = (status, decision)
        try:
            asyncio.get_running_loop().call_soon(self._record_decided, p)
        except RuntimeError:  # outside a loop: at once
            self._record_decided(p)

    def _record_decided(self, p: Priced) -> None:
        if p.row_json is not None:  # the final record (with this row) went first
            return
        p.row_json = self._row_json(p)
        self.thread.record(_core.journal_record(p.id, p.row_json), durable=False)

    def _row_json(self, p: Priced) -> bytes:
        """The row as decided (``running`` when no decision was recorded), as JSON: the bytes
        ``json.dumps`` wrote, built by the core (bindings/register_json.cpp)."""
        status, decision = p.decided or ("running", None)
        return _core.json_text(self.ledger_row(p, status, decision))

    def finish_row(self, p: Priced, fields: dict[str, Any], *, levels: tuple[str, ...] = (), reserved: int = 0,
                   actual: int = 0, reserved_tokens: int = 0, tokens: int = 0,
                   after: Callable[[], Any] | None = None, shared: Any = None,
                   settlement: tuple[int, int, int] = (0, 0, 0)) -> tuple[Future[Any] | None, Future[Any] | None]:
        """Journals the request's final record: its row (inserted if the decision's insert has not
        been applied yet), the final ``fields``, and the settlement of ``levels`` (the hold, or
        ``reserved`` pico-USD and ``reserved_tokens``, freed; ``actual`` pico-USD and ``tokens``
        charged), applied together exactly once. ``shared`` (the SharedLimits stage of a request
        admitted through it) settles the request there with ``settlement`` (actual pico-USD, input
        and output tokens), keeping the record in Redis until the ledger commits it. Returns (the
        Future of ``after``, a Future to await before answering when the record is not durable yet;
        with ``shared``, await ``p.settled()`` too)."""
        if p.row_json is None:
            p.row_json = self._row_json(p)
        line = _core.journal_record(p.id, p.row_json, fields, levels, reserved, actual, reserved_tokens, tokens,
                                    fields["finished_at"] if levels else 0.0)
        if shared is not None and p.state_mode == "shared" and not self.thread.write_behind:
            # Redis keeps the record until the ledger commits it (see SharedLimits.settle): the
            # response waits for Redis (p.settled), not for the ledger. Budget alerts (``after``)
            # are checked on the ledger thread once the record is applied, in record order.
            def committed() -> Any:
                shared.committed(p.id)
                return after() if after is not None else None

            shared.settle(p, *settlement, record=line[:-1])  # (first: the commit may be reported at once)
            p.record_written = written = self.thread.record(line, after=committed, waited=False)
            return written, None
        written = self.thread.record(line, after=after)
        if shared is not None:
            shared.settle(p, *settlement)
        return written, (None if self.thread.write_behind else written)

    def __call__(self, p: Priced, outcome: Outcome) -> tuple[dict[str, Any], Future[Any] | None]:
        """Charges the actual cost, releases the rest, records, learns. Call it on the event loop:
        the request's final record is journaled before this returns (one ``write()``; the ledger
        thread applies it later). Returns the fields of the ledger row and, when the record is not
        durable yet (no journal: PostgreSQL), a future to wait for before the response completes."""
        now = self.clock()
        model = p.request.model
        cost = None
        try:
            if outcome.reports.calls:  # the handler reported its upstream calls: they are the truth
                for call_model, usage in outcome.reports.calls:
                    c = self.pricing.cost_of_usage(call_model or model, usage, batch=p.batch)
                    cost = c if cost is None else cost + c
                source = "reported"
            elif outcome.usage is not None:
                cost = self.pricing.cost_of_usage(model, outcome.usage, batch=p.batch)
                source = "response"
        except ValueError as exc:  # a usage object the core cannot read: an upstream bug, not a reason to leak
            log.warning("tokenlane: unreadable usage for %s (%s); counting the generated text instead", p.id, exc)
            cost = None
        if cost is None:
            # No usage anywhere: count what was generated. A call that produced output was billed
            # for its prompt too, so a stream cut short is never priced at zero.
            out = count_output_tokens(outcome.text, model) if outcome.text else 0
            billed_input = p.input_tokens if (outcome.started_output and (outcome.status or 500) < 400) or out else 0
            cost = self.pricing.cost(model, input_tokens=billed_input, output_tokens=out, batch=p.batch)
            source = "counted" if out else "none"
        actual = cost.total_pico_usd
        self.schedule.complete(p, now, actual, cost.input_tokens, cost.output_tokens)
        reserved_ledger, p.reserved_ledger = p.reserved_ledger, 0
        reserved_tokens, p.reserved_tokens = p.reserved_tokens, 0
        succeeded = outcome.error is None and outcome.status is not None and outcome.status < 400
        fields = dict(
            status="succeeded" if succeeded else "failed", finished_at=now,
            input_tokens=cost.input_tokens, output_tokens=cost.output_tokens,
            cached_input_tokens=cost.cached_input_tokens, reasoning_tokens=cost.reasoning_tokens,
            cost_pico_usd=actual, error=outcome.error or (None if succeeded else f"HTTP {outcome.status}"),
            started_at=p.admitted_at, queue_ms=p.queue_ms, reserved_pico_usd=reserved_ledger or p.cost_p90)
        baseline = p.requested_model or (model if p.batch else None)
        if baseline and baseline in self.pricing and cost.input_tokens + cost.output_tokens:
            # What the same usage would have cost at the model asked for, at list price: the saving
            # that routing and the batch lane report against.
            fields["unrouted_cost_pico_usd"] = self.pricing.cost(
                baseline, input_tokens=cost.input_tokens, output_tokens=cost.output_tokens,
                cached_input_tokens=cost.cached_input_tokens, cache_write_tokens=cost.cache_write_tokens,
                reasoning_tokens=cost.reasoning_tokens).total_pico_usd
        attempts = outcome.reports.attempts
        if attempts:  # tokenlane.upstreams walked a fallback chain
            fields.update(attempts=len(attempts), fallbacks=fallbacks(attempts))
            if outcome.reports.served_model and outcome.reports.served_model != model:
                fields["model"] = outcome.reports.served_model
                if p.requested_model is None:
                    fields["requested_model"] = model
        saved = prompt_cache_saving(self.pricing, model, cost) if cost.cached_input_tokens else 0
        if saved:
            fields["prompt_cache_saved_pico_usd"] = saved
        if not self.settings.redact_prompts and outcome.text:
            fields["response_preview"] = outcome.text[:2000]
        tokens = cost.input_tokens + cost.output_tokens
        if self.budget.settles_in_record:
            # On one host the ledger's budgets are settled by the request's own journal record,
            # together with its row: exactly once, with nothing for the response to wait for.
            levels = self.budget.give_back(p, tokens, now)
        else:  # shared state (Redis): settled there, in the background, kept until done
            levels = ()
            settled = asyncio.ensure_future(self.budget.settle(p, reserved_ledger, actual, tokens, now,
                                                               reserved_tokens=reserved_tokens))
            self._settling.add(settled)
            settled.add_done_callback(self._settling.discard)
        tenant = p.identity.tenant
        after = ((lambda: self.observe.settled(tenant, now))  # type: ignore[union-attr]
                 if self.observe is not None and self.observe.waits_for_row(tenant) else None)
        shared = self.budget.shared if p.state_mode is not None else None
        written, wait = self.finish_row(p, fields, levels=levels, reserved=reserved_ledger, actual=actual,
                                        reserved_tokens=reserved_tokens, tokens=tokens, after=after, shared=shared,
                                        settlement=(actual, cost.input_tokens, cost.output_tokens))
        fields["usage_source"] = source
        if succeeded and p.request.generates and source != "none":
            per_completion = max(1, cost.output_tokens // p.request.n)
            if p.prepared is not None and self.learner is not None:
                self.learner.observe(p.prepared, per_completion,
                                     truncated(per_completion, p.request.max_tokens or None))
            else:
                self.estimator.observe(p.request.estimator_input(), model, per_completion,
                                       context={"route": p.route, "tenant": p.identity.tenant},
                                       input_tokens=p.input_tokens, max_tokens=p.request.max_tokens or None)
        if self.metrics:  # after the response: nothing the client waits for
            _after_response(self._count, model, cost, actual, saved, succeeded, p.est_p50, p.est_p90)
        if log.isEnabledFor(logging.INFO):  # building the record costs more than this check
            log.info("tokenlane request done", extra={"tokenlane": {
                "id": p.id, "tenant": p.identity.tenant, "model": model, "status": fields["status"],
                "input_tokens": cost.input_tokens, "output_tokens": cost.output_tokens,
                "cost_usd": usd_text(actual), "estimated_cost_usd": usd_text(p.cost_p50),
                "queue_ms": round(p.queue_ms, 3),
                **({} if self.settings.redact_prompts else {"prompt": p.request.text()[:2000]})}})
        if self.observe is not None:
            self.observe.reconciled(p, fields, written if after is not None else None)
        return fields, wait


    def _count(self, model: str, cost: Any, actual: int, saved: int, succeeded: bool, est_p50: int,
               est_p90: int) -> None:
        """The metrics of one reconciled request."""
        m = self.metrics
        assert m is not None
        c = self._series.get(model) or self._series_of(model)
        for series, n in zip(c.tokens, (cost.input_tokens, cost.output_tokens, cost.cached_input_tokens,
                                        cost.reasoning_tokens)):
            if n:
                series.inc(n)
        c.usage_input.observe(cost.input_tokens)
        c.usage_output.observe(cost.output_tokens)
        c.cost.inc(actual / PICO_PER_USD)
        if saved:
            m.prompt_cache_saved.labels(model).inc(saved / PICO_PER_USD)
        if succeeded and est_p50 and cost.output_tokens:
            c.estimate_error.observe(math.log2(cost.output_tokens / est_p50))
            if cost.output_tokens <= est_p90:
                c.p90_covered.inc()

    def _series_of(self, model: str) -> SimpleNamespace:
        """The metric series of one model (``labels()`` looks them up each call: kept per model)."""
        m = self.metrics
        assert m is not None
        if len(self._series) > 1000:  # model names come from requests: stay bounded
            self._series.clear()
        c = self._series[model] = SimpleNamespace(
            tokens=tuple(m.tokens.labels(kind, model) for kind in ("input", "output", "cache_read", "reasoning")),
            usage_input=m.token_usage.labels("input", model), usage_output=m.token_usage.labels("output", model),
            cost=m.cost.labels(model), estimate_error=m.estimate_error.labels(model),
            p90_covered=m.p90_covered.labels(model))
        return c


def _after_response(fn: Callable[..., Any], *args: Any) -> None:
    """Runs ``fn`` once the event loop is done with this step of the request (its response is on
    its way), or at once outside a loop."""
    try:
        asyncio.get_running_loop().call_soon(fn, *args)
    except RuntimeError:
        fn(*args)


__all__ = ["Reconcile"]
