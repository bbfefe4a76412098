"""Stage: schedule. Submits a priced request to the scheduler (the C++ state machine, driven with
the wall clock), waits in the queue without blocking the event loop (woken by the dispatcher
task), then reserves in the budget stage. Deferred and queued work the dispatcher starts goes to
``on_unclaimed`` (the jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..asgi_io import DisconnectWatch
from ..errors import RequestError, refusal
from ..metrics import Metrics
from ..scheduler import Decision, Scheduler
from .base import Priced
from .budget import Budget
from .shared import SharedLimits


class Schedule:
    def __init__(self, scheduler: Scheduler, budget: Budget, metrics: Metrics | None,
                 clock: Callable[[], float], shared: SharedLimits | None = None) -> None:
        self.scheduler = scheduler
        self.budget = budget
        self.shared = shared  # with state="redis://...": limits and budgets every replica shares
        self.metrics = metrics
        self.clock = clock
        # Called for ready/refused requests nobody waits for here (deferred and queued jobs):
        # (request id, None to run or the refusing Decision).
        self.on_unclaimed: Callable[[str, Any], None] = lambda request_id, rejection: None
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._kick: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decision_series: dict[tuple[str, str, str], Any] = {}  # labels() looks them up each call
        # tokenlane's own Scheduler takes the priced request's fields straight to its core.
        self._own_submit = (type(scheduler).submit is Scheduler.submit and type(scheduler).complete is Scheduler.complete
                            and hasattr(scheduler, "_core"))

    async def __call__(self, p: Priced, disconnected: DisconnectWatch | asyncio.Future[Any] | None = None,
                       on_decision: Callable[[Any], None] | None = None) -> Any:
        """Submits and waits until the request may run. Returns the scheduler's Decision; raises
        RequestError when refused (or deferred: callers handle ``kind == "defer"`` themselves).
        ``disconnected`` (a hang-up, or a watch started if the request has to queue) ends a wait."""
        if not self.budget.known(p.identity.tenant):
            await self.budget.ensure(p.identity.tenant, p.arrival)  # the scheduler's view of the tenant's budget
        if self._own_submit:  # the request's fields are the price stage's, checked already
            identity = p.identity
            decision = Decision._from_core(self.scheduler._core.submit(
                p.id, identity.tenant, str(identity.user_id) if identity.user_id is not None else "",
                p.request.model, p.priority, p.deadline_s, p.input_tokens, p.est_p50, p.est_p90, p.max_output,
                p.cost_p50, p.cost_p90, p.cost_max, float(self.clock())))
        else:
            decision = self.scheduler.submit(p.scheduler_request(), self.clock())
        if self.metrics:
            _after_step(self._count_decision, p, decision)
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
                waiters.add(disconnected.start() if isinstance(disconnected, DisconnectWatch) else disconnected)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not future.done():  # the client went away while queued
                self._waiters.pop(p.id, None)
                self.cancel(p.id)
                raise RequestError(499, "client disconnected while queued", type="request_cancelled",
                                   code="client_closed_request")
            late = future.result()
            if late is not None:  # shed from the queue
                self._count_decision(p, late)
                raise refusal(late)
        try:
            await self.take(p)
        except BaseException:  # refused, the ledger unreachable, or interrupted: it will not run
            self.cancel(p.id)
            raise
        return decision

    async def take(self, p: Priced, *, budgets_only: bool = False) -> None:
        """What the request holds while it runs, all or nothing: with ``state``, its budgets at
        every level, slots and rate room in Redis (waiting there while slots or rate are short);
        then the budget stage's part (the ledger's reservation on one host, or while Redis is
        away). Sets ``p.admitted_at``. ``budgets_only``: no slot, no rate (the batch lane)."""
        if self.shared is not None:
            await self.budget.prepare(p, self.clock())  # an end user's budget exists before Redis reads it
            await self.shared(p, budgets_only=budgets_only)
        p.admitted_at = self.clock()
        if self.metrics and not budgets_only:
            _after_step(self.metrics.queue_wait.observe, p.queue_ms / 1000.0)
        try:  # every level of the chain may carry a budget: reserve at all of them
            await self.budget.reserve(p, p.admitted_at)
        except BaseException:
            if p.state_mode is not None and self.shared is not None:
                p.state_mode = None
                self.shared.settle(p, 0, 0, 0)  # give the slots back
            raise

    def cancel(self, request_id: str) -> None:
        self.scheduler.cancel(request_id, self.clock())
        self.wake()

    def complete(self, p: Priced, now: float, actual: int, input_tokens: int, output_tokens: int) -> None:
        if self._own_submit:  # (the costs and counts are the core's own: checked already)
            self.scheduler._core.complete(p.id, float(now), actual, input_tokens, output_tokens)
        else:
            self.scheduler.complete(p.id, now, actual, input_tokens, output_tokens)
        self.wake()

    def _count_decision(self, p: Priced, decision: Any) -> None:
        """Counts a decision (called once the event loop is done with the request's step: metrics
        are nothing the response waits for)."""
        if self.metrics:
            key = (decision.kind, decision.reason, p.request.model)
            series = self._decision_series.get(key)
            if series is None:
                if len(self._decision_series) > 10_000:  # model names come from requests: stay bounded
                    self._decision_series.clear()
                series = self._decision_series[key] = self.metrics.requests.labels(*key)
            series.inc()

    def _ensure_dispatcher(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._dispatcher is None or self._dispatcher.done():
            self._loop = loop
            self._kick = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch_loop(), name="tokenlane-dispatcher")

    def wake(self) -> None:
        """Lets the dispatcher look at the scheduler again (from any thread)."""
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
        self.on_unclaimed(request_id, rejection)

    # --- admin ----------------------------------------------------------------------------------

    def dispatch(self, request_id: str) -> bool:
        """Runs a queued or deferred request now (admin, manual mode)."""
        if not self.scheduler.dispatch(request_id, self.clock()):
            return False
        for ready in self.scheduler.pop_ready(self.clock()):  # the dispatched one among them
            self._resolve(ready, None)
        return True

    def reject(self, request_id: str, reason: str = "admin") -> bool:
        """Refuses a queued or deferred request (admin)."""
        if self.scheduler.status(request_id) not in ("queued", "deferred"):
            return False
        self.scheduler.reject(request_id, self.clock(), reason)
        for rejected, decision in self.scheduler.pop_rejected(self.clock()):  # the ledger row follows
            self._resolve(rejected, decision)
        return True


def _after_step(fn: Callable[..., Any], *args: Any) -> None:
    """Runs ``fn`` once the event loop is done with this step of the request."""
    asyncio.get_running_loop().call_soon(fn, *args)


__all__ = ["Schedule"]
