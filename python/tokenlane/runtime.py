"""The tokenlane runtime: the shared objects behind the middleware, and the request path that
strings the stages together (each stage is one module in :mod:`tokenlane.stages`):

    parse → identify → cache → caps (+ trim) → price → schedule (+ budget) → upstream → reconcile

Deferred requests and requests submitted from code (:meth:`Tokenlane.submit`) are *jobs*: the
same path, with the wrapped app called in the background and its response kept for the job's
status URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from . import reports
from ._core import StorageError
from .alerts import Alerts, open_alert_marks
from .anomalies import Anomalies
from .asgi_io import DisconnectWatch, Receive, Scope, Send, request_headers, respond, respond_json, send_error
from .config import Settings, load_settings
from .errors import RequestError, decision_dict, ledger_unavailable
from .estimators import Estimator
from .formats import LLMRequest
from .ledger import Ledger
from .pgsql import is_postgres_url
from .metrics import Metrics
from .otel import Telemetry
from .pricing import PICO_PER_USD, Pricing, usd_text
from .recovery import Journal, journal_dir, owner_token, sweep
from .scheduler import Scheduler
from .batch import BatchLane
from .state import LocalState, State
from .state.jobs import SharedJobs
from .state.redis import StateUnavailable, stopping
from .sidecar import Sidecar
from .stages.batch import Batch
from .stages.route import Route, build_router
from .tags import TagStore
from .upstreams import Upstreams
from .stages import (
    Budget,
    Identify,
    Identity,
    Job,
    Jobs,
    LedgerThread,
    Observe,
    Outcome,
    Parse,
    Price,
    Priced,
    PromptCachePredictor,
    Reconcile,
    ResponseCache,
    Schedule,
    SharedLimits,
    TierCaps,
    Upstream,
)
from .stages.base import new_request_id
from .stages.cache import CachePlan, entry_for, hit_body


log = logging.getLogger("tokenlane")

QUEUE_LANES = ("queue", "deferred", "running")
QUEUE_VIEW_LIMIT = 200  # entries per lane and replica in the admin view

class Tokenlane:
    """Everything one app's middleware shares; create one per process (or let the middleware)."""

    def __init__(self, *, config: str | None = None, ledger: Ledger | None = None,
                 scheduler: Scheduler | None = None, estimator: Estimator | None = None,
                 pricing: Pricing | None = None,
                 identify: Callable[[Mapping[str, Any], LLMRequest], Identity | str | None] | None = None,
                 on_alert: Callable[[Any], Any] | None = None, tracer_provider: Any = None,
                 meter_provider: Any = None, clock: Callable[[], float] = time.time, **settings: Any) -> None:
        self.settings: Settings = load_settings(config, **settings)
        s = self.settings
        self.pricing = pricing or (Pricing.load(s.pricing) if s.pricing else Pricing.default())
        self.estimator = estimator or Estimator.default()
        # On PostgreSQL budget holds are leased (state_lease_s): a killed replica's come back.
        self.ledger = ledger or Ledger(s.db, **({"lease_s": s.state_lease_s} if is_postgres_url(s.db) else {}))
        # With shared state the limits are global (Redis holds them for every replica): this
        # process's scheduler only orders and queues.
        limits = {} if s.state else dict(
            max_concurrency=s.max_concurrency, tenant_max_concurrency=s.tenant_max_concurrency,
            tpm=s.tpm, rpm=s.rpm, tenant_tpm=s.tenant_tpm, tenant_rpm=s.tenant_rpm)
        self.scheduler = scheduler or Scheduler(policy=s.policy, max_queue=s.max_queue, max_wait_s=s.max_wait_s,
                                                **limits)
        self.metrics = Metrics() if s.metrics else None
        self.clock = clock
        # This process's ledger writer: write-behind through a journal file beside a SQLite ledger
        # (tokenlane.recovery), and every reclaim_interval_s the reclaim of dead workers' leftovers.
        journal_home = journal_dir(self.ledger.path) if isinstance(self.ledger, Ledger) else None
        if journal_home is not None:
            sweep(self.ledger, journal_home, owner_token(), clock())  # a dead predecessor's work, first
        journal = None
        if journal_home is not None:
            try:
                journal = Journal(journal_home, owner_token())
            except OSError as exc:  # no journal (read-only or full disk): responses wait for the ledger
                log.error("tokenlane: no write-behind journal in %s (%s): responses wait for the ledger", journal_home, exc)
        self.thread = LedgerThread(
            on_error=self._ledger_error, ledger=self.ledger, journal=journal,
            sweep=(lambda: sweep(self.ledger, journal_home, owner_token(), self.clock())) if journal_home else None,
            sweep_s=s.reclaim_interval_s)
        if hasattr(self.ledger, "before_read"):
            self.ledger.before_read = self.thread.flush  # reads see every request this process answered
        # Tables beside the ledger's own (alert marks, request tags) in the same file or database.
        self.sidecar = Sidecar(self.ledger.path) if isinstance(self.ledger, Ledger) else self.ledger.sidecar()
        self.tags = TagStore(self.sidecar)
        self.sidecar.before_read = self.thread.flush
        # The stages, in request order.
        self.parse = Parse(s.max_body_bytes)
        self.identify_stage = Identify(s, self.ledger, identify)
        self.cache = ResponseCache.from_settings(s, clock=clock)  # None when off: costs nothing
        self.caps = TierCaps.from_settings(s)                     # None without tier caps
        self.price = Price(s, self.pricing, self.estimator,
                           PromptCachePredictor() if s.predict_prompt_cache else None)
        # Shared hot state: one host here (budgets in the SQLite ledger, buckets and slots in-process).
        self.state: State = LocalState(self.ledger, self.thread.write, beside=self.thread.beside)
        self.budget = Budget(s, self.ledger, self.scheduler, self.thread, self.state)
        # With state="redis://...": budget reservations at every level, global slots and TPM/RPM
        # buckets in Redis (SharedLimits); the ledger keeps the spend of record (and reserves
        # budgets only while Redis is unreachable, with state_failure="local").
        self.shared = (SharedLimits(s, self.ledger, self.thread, self.budget, self.metrics, clock,
                                    add_service=self.scheduler.add_service) if s.state else None)
        self.budget.shared = self.shared
        self.schedule = Schedule(self.scheduler, self.budget, self.metrics, clock, self.shared)
        self.observe = self._observe(on_alert, tracer_provider, meter_provider)
        self.reconcile = Reconcile(s, self.pricing, self.estimator, self.ledger, self.thread, self.budget,
                                   self.schedule, self.metrics, clock, self.observe)
        self.upstream = Upstream(s, self.scheduler, self.reconcile, clock)
        self.batch: Batch | None = None  # the batch lane: see use_batch_lane
        # The `upstreams` and `fallbacks` settings as one provider for the app's handlers to call
        # (tokenlane.upstreams); None when no upstream is configured.
        self.upstreams = Upstreams.from_config(s.upstreams, s.fallbacks, pricing=self.pricing) if s.upstreams else None
        router = build_router(s)  # routing is off without rules or groups: no stage at all
        self.route = Route(router, self.price, self.budget) if router else None
        self.jobs = Jobs(self.ledger, self.thread, self.scheduler, s.route_prefix, clock)
        self.schedule.on_unclaimed = self.jobs.resolve
        self.jobs.run_request = self.handle
        self.jobs.run_admitted = self.upstream
        if self.shared is not None:  # deferred jobs: one lane for every replica, in Redis
            self.jobs.lane = SharedJobs(self.shared.admission.redis)
        self._publisher: asyncio.Task[None] | None = None  # this replica's queue, for every admin view
        self._in_flight: set[asyncio.Task[Any]] = set()  # tasks handling a request (drain waits for them)

    def set_routing(self, routes: list[dict[str, Any]], model_groups: dict[str, list[str]] | None = None) -> None:
        """Replaces the routing rules and model groups (validated first: RoutingError names a bad
        rule); requests already routed keep their model. An empty config switches routing off."""
        settings = load_settings(routes=routes, model_groups=model_groups or {},
                                 difficulty_model=self.settings.difficulty_model, environ={})
        router = build_router(settings)
        self.settings.routes, self.settings.model_groups = settings.routes, settings.model_groups
        self.route = Route(router, self.price, self.budget) if router else None

    def use_batch_lane(self, provider: Any, **options: Any) -> None:
        """Sends chat requests with priority ``batch`` through ``provider``'s batch API (OpenAI's
        ``/v1/files`` + ``/v1/batches``; any object with ``upload_file``, ``create_batch``,
        ``retrieve_batch``, ``file_content``), or, for a provider without one, runs them when the
        scheduler has free slots. ``options`` go to :class:`tokenlane.batch.BatchLane`."""
        options.setdefault("idle", lambda: self.scheduler.snapshot(self.clock(), 0).get("queued", 0) == 0)
        decided = SimpleNamespace(kind="defer", reason="batch_lane")
        self.batch = Batch(BatchLane(provider, **options), lambda p, now: self.schedule.take(p, budgets_only=True),
                           self.reconcile,
                           lambda p: self.write(self.ledger.insert_request,
                                                self.reconcile.ledger_row(p, "deferred", decided)),
                           self.jobs, self.clock)

    def _observe(self, on_alert: Any, tracer_provider: Any, meter_provider: Any) -> Observe | None:
        """The after-reconcile stage with only what is configured; ``None`` when all is off."""
        s = self.settings
        alerts = None
        if s.alert_thresholds or s.alert_forecast or s.anomalies:
            # Marks in the ledger file; in Redis too when replicas share a redis:// state.
            marks = open_alert_marks(self.sidecar, getattr(s, "state", None))
            alerts = Alerts(marks, thresholds=s.alert_thresholds, forecast=s.alert_forecast,
                            webhook=s.alert_webhook, secret=s.alert_webhook_secret, on_alert=on_alert)
        anomalies = Anomalies() if s.anomalies else None
        telemetry = Telemetry(tracer_provider, meter_provider) if s.otel or tracer_provider or meter_provider else None
        if alerts is None and anomalies is None and telemetry is None:
            return None
        return Observe(self.ledger, self.thread, self.budget.has_budget, self.clock, alerts=alerts,
                       anomalies=anomalies, telemetry=telemetry)

    # --- wiring the middleware sets ----------------------------------------------------------------

    @property
    def app(self) -> Any:
        """The wrapped ASGI app (set by the middleware; jobs call it)."""
        return self.upstream.app

    @app.setter
    def app(self, app: Any) -> None:
        self.upstream.app = app

    @property
    def identify(self) -> Any:
        """The identify hook (``None``: API keys, then the fallbacks of :mod:`tokenlane.stages.identify`)."""
        return self.identify_stage.hook

    @identify.setter
    def identify(self, hook: Any) -> None:
        self.identify_stage.hook = hook

    def _ledger_error(self, outcome: str, exc: BaseException) -> None:
        """A ledger call failed (locked, disk full, read-only): counted, logged, retried by the thread."""
        if self.metrics is not None:
            self.metrics.ledger_errors.labels(outcome).inc()
        log.error("tokenlane: ledger call failed (%s): %s", outcome, exc)
        if isinstance(self.ledger, Ledger) and "readonly database" in str(exc):
            # Opened while the file was read-only: only a new connection sees it writable again.
            with contextlib.suppress(StorageError):
                self.ledger.reconnect()

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Runs a blocking ledger call on the ledger thread; await the result when it matters."""
        return self.thread.write(fn, *args, **kwargs)

    # --- identity and budgets -----------------------------------------------------------------------

    def cached_api_key(self, key: str) -> tuple[dict[str, Any] | None] | None:
        """The cached ledger record of an API key, as a 1-tuple; ``None`` when not cached."""
        return self.identify_stage.cached_api_key(key)

    def api_key_record(self, key: str) -> dict[str, Any] | None:
        """The ledger's record of an API key, cached for 30 s (blocking: call from a thread)."""
        return self.identify_stage.api_key_record(key)

    def set_budget(self, tenant: str, limit_usd: Decimal | float | str | None, window: str = "day", *,
                   limit_tokens: int | None = None) -> None:
        """Sets the whole budget of a principal at any level (``org:…``, ``team:…``, a tenant,
        ``apikey:…``, an end user) in the ledger and the scheduler: its USD limit and its token
        limit (input + output tokens) over ``window``, ``None`` for no limit of that unit."""
        self.budget.set_budget(tenant, limit_usd, window, self.clock(), limit_tokens)

    def set_limits(self, principal: str, *, tpm: int | None = None, rpm: int | None = None,
                   concurrency: int | None = None) -> None:
        """TPM / RPM / concurrency limits of any principal of the hierarchy (``org:…``, ``team:…``, a
        tenant, ``apikey:…``, an end user); all None removes them. Blocking."""
        self.budget.set_limits(principal, tpm=tpm, rpm=rpm, concurrency=concurrency)

    def principal_report(self, principal: str) -> dict[str, Any]:
        """A principal's usage with its end users (blocking; see ``GET /tokenlane/usage``)."""
        now = self.clock()
        return {**self.budget.usage(principal, now), **self.budget.report(Identity(tenant=principal), now)}

    def usage(self, tenant: str) -> dict[str, Any]:
        """A tenant's spend in its budget window (blocking)."""
        return self.budget.usage(tenant, self.clock())

    def alerts(self, principal: str | None = None, since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Budget alerts fired (all processes), newest first, with their payload and webhook delivery
        status; empty when alerts are off (blocking)."""
        alerts = self.observe.alerts if self.observe is not None else None
        return alerts.marks.list(principal, since, limit) if alerts is not None else []

    def report(self, by: str = "day", *, since: float | None = None, until: float | None = None,
               tenant: str | None = None) -> list[dict[str, Any]]:
        """Spend and KPIs grouped by day, model, route, tenant, user, status or ``tag:<key>``
        (:func:`tokenlane.reports.report`; the numbers ``tokenlane report`` prints; blocking)."""
        return reports.report(self.sidecar, by, since=since, until=until, tenant=tenant)

    # --- the request path ---------------------------------------------------------------------------

    def prepare(self, request: LLMRequest, identity: Identity, route: str, headers: Mapping[str, str],
                now: float, request_id: str | None = None) -> Priced:
        """Counts, estimates and prices a parsed request (fast, CPU only). Raises RequestError."""
        return self.price(request, identity, route, headers, now, request_id)

    async def admit(self, p: Priced, disconnected: asyncio.Future[Any] | None = None,
                    on_decision: Callable[[Any], None] | None = None) -> Any:
        """Submits and waits until the request may run (see :class:`tokenlane.stages.Schedule`)."""
        return await self.schedule(p, disconnected, on_decision)

    def finish(self, p: Priced, outcome: Outcome) -> tuple[dict[str, Any], Future[Any]]:
        """Charges the actual cost, releases the rest, records, learns (see :class:`tokenlane.stages.Reconcile`)."""
        return self.reconcile(p, outcome)

    def ledger_row(self, p: Priced, status: str, decision: Any = None) -> dict[str, Any]:
        return self.reconcile.ledger_row(p, status, decision)

    async def handle(self, scope: Scope, receive: Receive, send: Send, *, job: Job | None = None,
                     on_decision: Callable[[dict[str, Any]], None] | None = None) -> None:
        """One LLM request from body to ledger row; also the path of background jobs."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)  # what a shutdown waits for (see drain)
        try:
            await self._handle(scope, receive, send, job, on_decision)
        finally:
            self._in_flight.discard(task)  # type: ignore[arg-type]

    async def drain(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (the middleware runs it when the ASGI lifespan shuts down, after the
        server stopped taking requests): requests still in flight get ``grace_s`` (the setting
        ``shutdown_grace_s``) to finish; the rest are cancelled and settle as interrupted (a row
        with the error, charged for what reached the model's client, the rest of the reservation
        released). Returns once every ledger write queued so far is done."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        pending = {t for t in self._in_flight if t is not asyncio.current_task()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            log.warning("tokenlane: %d request(s) still running %.0f s after shutdown began: interrupting them",
                        len(pending), grace)
            for task in pending:
                task.cancel("interrupted: the server shut down before the request finished")
            await asyncio.wait(pending, timeout=10.0)  # each settles itself (Upstream, _run)
        if self.reconcile._settling:
            await asyncio.wait(set(self.reconcile._settling), timeout=10.0)
        if self.shared is not None:  # settlements in Redis (each retries while Redis is away)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.shared.admission.drain(), timeout=10.0)
        if self.reconcile.learner is not None:  # the estimator's updates of the answered requests
            await asyncio.to_thread(self.reconcile.learner.flush)
        try:  # a barrier: the ledger thread runs calls in order, so every earlier write is done
            await asyncio.wait_for(asyncio.to_thread(self.thread.flush), timeout=max(10.0, self.thread.retry_s + 5.0))
        except (asyncio.TimeoutError, StorageError):
            log.error("tokenlane: ledger writes still pending at shutdown")
        if self.shared is not None:  # the final records the ledger now has need not stay in Redis
            with contextlib.suppress(StateUnavailable):
                await self.shared.admission.redis.forget_committed()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, job: Job | None,
                      on_decision: Callable[[dict[str, Any]], None] | None) -> None:
        headers = request_headers(scope)
        plan: CachePlan | None = None
        try:
            body = await self.parse.read_body(receive, headers)
            request = await self.parse.parse(scope, body)
            identity = await self.identify_stage(scope, headers, request)
            if self.cache is not None or self.caps is not None:
                data = _json_or_none(body)
                if self.cache is not None:
                    # Cached answers stay within the most specific principal (the end user, if any).
                    plan = await self.cache(request, data, identity.chain()[-1], scope["path"], headers)
                    self._count_cache(plan, request.model)
                    if plan.status == "hit":
                        await self._serve_hit(plan, request, data, identity, scope, send, job, on_decision)
                        return
                if self.caps is not None:
                    capped = self.caps(request, data, identity.tenant, scope["path"], headers)
                    if capped.body is not None:  # clamped or trimmed: send on (and count) the new body
                        body = json.dumps(capped.body).encode()
                        request = await self.parse.parse(scope, body)
            choice = None
            if self.route is not None:
                requested = request.model
                tier = capped.tier if self.caps is not None else None
                request, body, choice = await self.route(request, body, identity, scope["path"], headers,
                                                         self.clock(), tier)
            try:
                priced = self.price(request, identity, scope["path"], headers, self.clock(),
                                    request_id=job.id if job else None)
                if choice is not None:
                    priced.route_rule = choice.rule
                    priced.requested_model = requested if choice.model != requested else None
            except ValueError as exc:  # the core's InvalidArgumentError: e.g. a message content it cannot read
                where = re.match(r"chat request: (?!body )([\w.\[\]]+) ", str(exc))  # the core names the path
                raise RequestError(400, f"malformed request: {exc}", param=where and where.group(1)) from None
            if plan is not None:
                priced.cache = plan.status
            if self.caps is not None:
                priced.tier, priced.clamped_max_tokens = capped.tier, capped.clamped_max_tokens
                priced.untrimmed_input_tokens = capped.untrimmed_input_tokens
                self._count_caps(priced)
        except RequestError as exc:
            if plan is not None:
                await self.cache.save(plan, None)  # type: ignore[union-attr]
            if on_decision:
                on_decision({"decision": "reject", "reason": exc.code or "invalid_request", "message": exc.message})
            await send_error(send, exc)
            return
        except BaseException:
            if plan is not None:  # never leave identical requests waiting on this one
                await self.cache.save(plan, None)  # type: ignore[union-attr]
            raise
        if plan is None:
            await self._run(priced, scope, body, receive, send, job, on_decision)
            return
        entry = None
        try:
            outcome = await self._run(priced, scope, body, receive, send, job, on_decision)
            if outcome is not None:
                entry = entry_for(priced.request, outcome, self.clock())
        finally:  # stores the answer, and wakes identical requests that waited for it, on every path
            await self.cache.save(plan, entry)  # type: ignore[union-attr]

    async def _run(self, priced: Priced, scope: Scope, body: bytes, receive: Receive, send: Send,
                   job: Job | None, on_decision: Callable[[dict[str, Any]], None] | None) -> Outcome | None:
        """Schedules a priced request and runs it (None: refused or deferred)."""
        def decided(decision: Any) -> None:
            # Queued for the ledger's one writer thread, in order: before any later update of the row.
            status = {"admit": "running", "queue": "queued", "defer": "deferred"}.get(decision.kind, "rejected")
            self.reconcile.decided(priced, status, decision)
            if priced.tags:
                self.write(self.tags.record, priced.id, priced.tags)
            if on_decision:
                on_decision(decision_dict(decision))

        if self.batch is not None and self.batch.applies(priced):
            try:
                await self.batch(priced, scope, body, send, job, self.upstream.headers(priced), on_decision)
            except RequestError as exc:
                if on_decision:
                    on_decision({"decision": "reject", "reason": exc.code or "rejected", "message": exc.message})
                await send_error(send, exc, [(b"x-tokenlane-request-id", priced.id.encode())])
            return

        disconnected = None if job else DisconnectWatch(receive)
        try:
            try:
                decision = await self.schedule(priced, disconnected, decided)
            except StorageError as exc:  # budgets cannot be checked: refuse rather than run unchecked
                raise ledger_unavailable(exc) from None
            except asyncio.CancelledError as exc:  # shutdown (or the server) interrupted it before it ran
                self._interrupted(priced, str(exc) or "interrupted before it ran")
                if disconnected:
                    disconnected.cancel()
                raise
        except RequestError as exc:
            _, wait = self.reconcile.finish_row(priced, {"status": "cancelled" if exc.status == 499 else "rejected",
                                                         "reason": exc.code, "finished_at": self.clock(),
                                                         "error": exc.message})
            if wait is not None:
                with contextlib.suppress(StorageError):  # already logged and counted by the ledger thread
                    await asyncio.wrap_future(wait)
            if self.observe is not None and exc.status != 499:
                # insufficient_quota: the budget refused (the scheduler's view or the ledger's reservation).
                self.observe.refused(priced, budget=exc.code == "insufficient_quota")
            await send_error(send, exc, [(b"x-tokenlane-request-id", priced.id.encode()),
                                         (b"x-tokenlane-estimated-cost", usd_text(priced.cost_p50).encode())])
            if disconnected:
                disconnected.cancel()
            return None
        if decision.kind == "defer":
            deferred = job or Job(id=priced.id, scope=scope, body=body)
            deferred.priced, deferred.status = priced, "deferred"
            deferred.decision = decision_dict(decision)
            self.jobs.keep(deferred)
            if disconnected:
                disconnected.cancel()
            if self.jobs.lane is not None and not deferred.claimed:
                await self._share(deferred, priced, scope)
            if job is None:
                url = self.jobs.status_url(priced.id)
                payload = {"id": priced.id, "object": "tokenlane.job", "status": "deferred",
                           "reason": decision.reason, "message": decision.message, "status_url": url}
                await respond_json(send, 202, payload, self.upstream.headers(priced) + [(b"location", url.encode())])
            return None
        if job is not None:
            job.priced = priced
        return await self.upstream(priced, scope, body, send, receive=receive,
                                   disconnected=disconnected.future if disconnected else None)

    async def _share(self, job: Job, priced: Priced, scope: Scope) -> None:
        """Moves a deferred request from this process's lane to the lane every replica shares; when
        Redis is unreachable it stays here (and runs here, should the scheduler have let it run)."""
        job.status = "sharing"  # the dispatcher leaves it alone meanwhile
        shared = await self.jobs.share(job, scope.get("tokenlane.identity"))
        job.status = "deferred"
        if shared:
            self.jobs.forget(job.id)
            self.schedule.cancel(priced.id)
            return
        if self.scheduler.status(priced.id) == "running":  # let run while it was being shared
            self.jobs.resolve(priced.id, None)

    def _interrupted(self, p: Priced, why: str) -> None:
        """Settles a request cancelled while queued or being admitted: its place in the scheduler,
        any reservation it holds, and its row (cancelled, with the reason)."""
        now = self.clock()
        self.schedule.cancel(p.id)
        if p.hold is not None:
            hold, p.hold, p.reserved_ledger, p.reserved_tokens = p.hold, None, 0, 0
            self.state.release(hold, now)
        self.reconcile.finish_row(p, {"status": "cancelled", "reason": "interrupted", "finished_at": now, "error": why})

    async def _serve_hit(self, plan: CachePlan, request: LLMRequest, data: Any, identity: Identity, scope: Scope,
                         send: Send, job: Job | None, on_decision: Callable[[dict[str, Any]], None] | None) -> None:
        """Answers from the cache: no model call, $0, a ledger row with the saving."""
        assert plan.entry is not None
        now = self.clock()
        request_id = job.id if job else new_request_id()
        saved = plan.entry.cost_pico_usd
        body, content_type = hit_body(plan, request, data)
        row = {"id": request_id, "tenant": identity.tenant, "user_id": identity.user_id, "key_id": identity.key_id,
               "end_user": identity.end_user,
               "route": scope["path"], "model": request.model, "status": "succeeded", "decision": "cache",
               "reason": plan.reason, "created_at": now, "started_at": now, "finished_at": now, "queue_ms": 0.0,
               "input_tokens": 0, "output_tokens": 0, "cost_pico_usd": 0, "est_cost_pico_usd": 0,
               "cache": "hit", "cache_saved_pico_usd": saved}
        if not self.settings.redact_prompts:
            row["prompt_preview"] = request.text()[:2000]
        row["owner"] = owner_token()
        # Journaled (on disk) before the response completes; without a journal, written first.
        wait = self.thread.record(b'{"id":%s,"row":%s}\n' % (json.dumps(request_id).encode(), json.dumps(row).encode()))
        if wait is not None:
            await asyncio.wrap_future(wait)
        if on_decision:
            on_decision({"decision": "admit", "reason": "cache_hit", "message": f"served from the cache ({plan.reason})"})
        headers = [(b"x-tokenlane-request-id", request_id.encode()), (b"x-tokenlane-cache", b"hit"),
                   (b"x-tokenlane-cost", b"0"), (b"x-tokenlane-estimated-cost", b"0"),
                   (b"x-tokenlane-cache-saved", usd_text(saved).encode())]
        if plan.reason == "semantic" and plan.similarity is not None:
            headers.append((b"x-tokenlane-cache-similarity", f"{plan.similarity:.4f}".encode()))
        if request.stream:
            headers.append((b"cache-control", b"no-cache"))
        await respond(send, 200, body, content_type, headers)
        if self.metrics:
            self.metrics.cache_saved.labels(request.model).inc(saved / PICO_PER_USD)

    def _count_cache(self, plan: CachePlan, model: str) -> None:
        m = self.metrics
        if m is None:
            return
        kind = plan.reason if plan.status == "hit" else ("semantic" if plan.scope else "exact")
        m.cache.labels(plan.status, kind if plan.status != "bypass" else "none", model).inc()
        if plan.scope is not None and plan.similarity is not None and plan.reason != "exact":
            m.cache_similarity.labels("yes" if plan.status == "hit" else "no").observe(plan.similarity)

    def _count_caps(self, p: Priced) -> None:
        m = self.metrics
        if m is None:
            return
        if p.clamped_max_tokens is not None:
            m.clamped.labels(p.tier or "").inc()
        if p.untrimmed_input_tokens is not None:
            m.trimmed_tokens.labels(p.request.model).inc(p.untrimmed_input_tokens - p.input_tokens)

    # --- jobs ---------------------------------------------------------------------------------------

    async def submit(self, path: str, body: Mapping[str, Any], *, tenant: str, user_id: int | None = None,
                     priority: str = "standard", deadline_ms: float | None = None,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Runs a request through the same path as an HTTP request, in the background.

        Returns once the scheduler has decided: ``{"id", "decision", "reason", "message", "position",
        "status_url"}``; the response lands in the job (:meth:`job`) and the ledger row.
        """
        if self.app is None:
            raise RuntimeError("Tokenlane.submit needs the middleware installed (app.add_middleware(...))")
        return await self.jobs.submit(path, body, tenant=tenant, user_id=user_id, priority=priority,
                                      deadline_ms=deadline_ms, headers=headers)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's status, with its response when done (``None`` if unknown here and in the ledger)."""
        return self.jobs.view(job_id)

    def status_url(self, job_id: str) -> str:
        return self.jobs.status_url(job_id)

    # --- replicas -----------------------------------------------------------------------------------

    def start_replica_tasks(self) -> None:
        """With ``state``: this replica's worker on the shared deferred lane and the publisher of its
        queue (for every replica's admin view). Idempotent; the middleware calls it on each request."""
        if self.shared is None:
            return
        self.jobs.start_worker()
        self.shared.fleet.start()  # the fair share sees every replica's service
        self.shared.admission.redis.start()  # leases renewed; a dead replica's final records adopted
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(self._publish_queue(), name="tokenlane-queue")

    def _queue_snapshot(self, limit: int) -> dict[str, Any]:
        snap = self.scheduler.snapshot(self.clock(), limit)
        return {"at": self.clock(), "policy": snap.get("policy"), "paused": bool(snap.get("paused")),
                **{lane: snap.get(lane) or [] for lane in QUEUE_LANES}}

    async def _publish_queue(self) -> None:
        """Publishes this replica's queue to Redis every second (kept 10 s: a dead replica's
        entries vanish on their own)."""
        assert self.shared is not None
        while not stopping():
            try:
                await self.shared.admission.redis.publish_queue(self._queue_snapshot(QUEUE_VIEW_LIMIT))
            except StateUnavailable:
                if stopping():
                    raise asyncio.CancelledError from None
                # the admin view shows this replica's own queue meanwhile
            await asyncio.sleep(1.0)

    async def queue_view(self, limit: int = QUEUE_VIEW_LIMIT) -> dict[str, Any]:
        """Requests queued, deferred and running, on every replica (each entry names its
        ``replica``; this one's are current, the others' at most a second or two old) and, with
        ``state``, the jobs waiting in the shared deferred lane (``shared_deferred``)."""
        me = self.shared.admission.redis.replica if self.shared is not None else "local"
        replicas = {me: self._queue_snapshot(limit)}
        shared: list[dict[str, Any]] = []
        if self.shared is not None:
            try:
                others = await self.shared.admission.redis.queues()
                replicas.update({name: snap for name, snap in others.items() if name != me})
                if self.jobs.lane is not None:
                    shared = await self.jobs.lane.pending(limit)
            except StateUnavailable:
                pass
        view: dict[str, Any] = {"replica": me, "shared_deferred": shared,
                                "replicas": {name: {"at": snap.get("at"), "policy": snap.get("policy"),
                                                    "paused": snap.get("paused"),
                                                    **{lane: len(snap.get(lane) or []) for lane in QUEUE_LANES}}
                                             for name, snap in replicas.items()}}
        for lane in QUEUE_LANES:
            view[lane] = [{**entry, "replica": name} for name, snap in replicas.items() for entry in snap.get(lane) or []]
        return view

    # --- admin --------------------------------------------------------------------------------------

    async def dispatch(self, request_id: str) -> bool:
        """Runs a queued or deferred request now (admin, manual mode)."""
        return self.schedule.dispatch(request_id)

    async def reject(self, request_id: str, reason: str = "admin") -> bool:
        """Refuses a queued or deferred request (admin)."""
        return self.schedule.reject(request_id, reason)

    def pause(self) -> None:
        self.scheduler.pause()

    def resume(self) -> None:
        self.scheduler.resume()
        self.schedule.wake()

    def set_policy(self, name: str) -> None:
        self.scheduler.set_policy(name)
        self.schedule.wake()


def _json_or_none(body: bytes) -> Any:
    """The body as JSON (what the cache keys and the caps rewrite), or None for another format."""
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None


__all__ = ["Identity", "Job", "Outcome", "Priced", "RequestError", "Tokenlane"]
