"""Stage: after reconcile. Budget alerts (50 / 80 / 100 %, forecast, the first refusal), anomaly
detectors and OpenTelemetry spans and metrics, each built only when configured, so a switched-off
part costs nothing on the path.

- Alerts: on the ledger thread, right after the request is settled, the tenant's usage is read
  (tenants with a budget only) and the alerts it calls for are claimed in the ledger file (once
  per threshold, window and principal across processes); this process then delivers the ones it
  claimed on the event loop (log, ``on_alert`` hook, webhook).
- Anomalies: every reconciled or refused request feeds the detectors, per tenant, route and
  ``feature`` tag; an alarm goes to the same channels as an alert.
- OpenTelemetry: one span tree and the GenAI metrics per reconciled request, written when its
  ledger row is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..alerts import Alert, Alerts
from ..anomalies import Anomalies, Anomaly
from ..formats import ANTHROPIC_MESSAGES, OPENAI_COMPLETIONS, OPENAI_EMBEDDINGS
from ..ledger import Ledger
from ..otel import RequestTrace, Telemetry
from ..pricing import PICO_PER_USD
from .base import LedgerThread, Priced

log = logging.getLogger("tokenlane")

_OPERATIONS = {OPENAI_COMPLETIONS: "text_completion", OPENAI_EMBEDDINGS: "embeddings"}


class Observe:
    def __init__(self, ledger: Ledger, thread: LedgerThread, has_budget: Callable[[str], bool],
                 clock: Callable[[], float], *, alerts: Alerts | None = None, anomalies: Anomalies | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.ledger = ledger
        self.thread = thread
        self.has_budget = has_budget
        self.clock = clock
        self.alerts = alerts
        self.anomalies = anomalies
        self.telemetry = telemetry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last: dict[tuple[str, str], asyncio.Task[Any]] = {}  # each budget's latest delivery

    # --- ledger thread -----------------------------------------------------------------------------

    def settled(self, tenant: str, now: float, *, refused: bool = False) -> list[Alert]:
        """The alerts this tenant's spend calls for, claimed for this process (blocking)."""
        if self.alerts is None or not self.alerts.enabled or not self.has_budget(tenant):
            return []
        return self.alerts.check(tenant, self.ledger.usage(tenant, now), now, refused=refused)

    def waits_for_row(self, tenant: str) -> bool:
        """Whether :meth:`reconciled` needs the row written first (an alert check or a span):
        else the request's ledger record carries no callback back to the event loop."""
        return self.telemetry is not None or (self.alerts is not None and self.alerts.enabled
                                              and self.has_budget(tenant))

    # --- event loop --------------------------------------------------------------------------------

    def reconciled(self, p: Priced, fields: dict[str, Any], written: Future[Any] | None) -> None:
        """After reconcile (on the event loop): anomalies now; alerts and spans once the row is
        written (``written``: the future of :meth:`settled` run then; None when not wanted)."""
        self._loop = asyncio.get_running_loop()
        failed = fields["status"] != "succeeded"
        if self.anomalies is not None:
            self._feed(p, fields["finished_at"], cost_usd=fields["cost_pico_usd"] / PICO_PER_USD,
                       input_tokens=fields["input_tokens"], output_tokens=fields["output_tokens"],
                       est_output_tokens=p.est_p50 or None, error=failed)
        if written is not None and (self.alerts is not None or self.telemetry is not None):
            loop = self._loop
            written.add_done_callback(lambda f: _call_soon(loop, self._written, p, fields, f))

    def refused(self, p: Priced, budget: bool) -> None:
        """A refused request (on the event loop); ``budget``: the budget refused it (the 100 % alert)."""
        self._loop = asyncio.get_running_loop()
        if self.anomalies is not None:
            self._feed(p, self.clock(), refused=True)
        if budget and self.alerts is not None:
            loop = self._loop
            future = self.thread.submit(lambda: self.settled(p.identity.tenant, self.clock(), refused=True))
            future.add_done_callback(lambda f: _call_soon(loop, self._deliver_all, f))

    def _feed(self, p: Priced, at: float, **signals: Any) -> None:
        keys = [f"tenant:{p.identity.tenant}", f"route:{p.route}"]
        if "feature" in p.tags:
            keys.append(f"feature:{p.tags['feature']}")
        for anomaly in self.anomalies.observe(keys, at, **signals):  # type: ignore[union-attr]
            self._spawn(anomaly)

    def _written(self, p: Priced, fields: dict[str, Any], written: Future[Any]) -> None:
        self._deliver_all(written)
        if self.telemetry is not None:
            try:
                self.telemetry.record(_trace(p, fields, self.clock()))
            except Exception:  # telemetry must never break the request path
                log.exception("tokenlane: recording OpenTelemetry data failed")

    def _deliver_all(self, done: Any) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        for alert in done.result() or ():
            self._spawn(alert)

    def _spawn(self, event: Alert | Anomaly) -> None:
        if self.alerts is None:
            log.warning("tokenlane anomaly: %s", getattr(event, "message", event))
            return
        # A budget's alerts go out in the order its spend crossed them (its checks run in ledger
        # order; one check may find 50 % and 80 % crossed at once, lowest first): each waits for
        # the delivery before it, retries included. Different budgets' are independent.
        chain = (event.principal, event.level) if isinstance(event, Alert) else None
        before = self._last.get(chain) if chain is not None else None
        task = asyncio.ensure_future(self._deliver_after(before, event), loop=self._loop)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if chain is not None:
            self._last[chain] = task
            task.add_done_callback(lambda t: self._last.pop(chain, None) if self._last.get(chain) is t else None)

    async def _deliver_after(self, before: asyncio.Task[Any] | None, event: Alert | Anomaly) -> None:
        assert self.alerts is not None
        if before is not None:
            await asyncio.wait({before})
        await self.alerts.deliver(event)

    async def drain(self) -> None:
        """Waits for the deliveries in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Hands a ledger-thread result to the event loop, unless that loop has ended meanwhile."""
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            pass


def _trace(p: Priced, fields: dict[str, Any], reconciled: float) -> RequestTrace:
    api = p.request.api
    return RequestTrace(
        request_id=p.id, operation=_OPERATIONS.get(api, "chat"),
        provider="anthropic" if api == ANTHROPIC_MESSAGES else "openai", model=p.request.model,
        tenant=p.identity.tenant, route=p.route, arrival=p.arrival, admitted=p.admitted_at,
        completed=fields["finished_at"], reconciled=reconciled, input_tokens=fields["input_tokens"],
        output_tokens=fields["output_tokens"], cached_input_tokens=fields.get("cached_input_tokens") or 0,
        max_tokens=p.max_output or None, cost_usd=fields["cost_pico_usd"] / PICO_PER_USD,
        error=fields.get("error") if fields["status"] != "succeeded" else None, tags=p.tags)


__all__ = ["Observe"]
