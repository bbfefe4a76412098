"""Budget alerts: warn at 50 / 80 / 100 % of a budget (and when the burn rate will exhaust it)
before requests start being refused.

Each alert fires **once per threshold, per budget window, per principal**, across every worker
process and replica sharing the ledger: the first process to insert the alert's mark (an atomic
insert-or-ignore on a unique key) owns it and delivers it; the others see the mark and stay quiet.
The mark is the ledger's record of the alert, with the webhook's delivery status.

Channels: the log (always), a Python hook (``on_alert=``, sync or async, e.g. Slack or email) and
a webhook (``alert_webhook``): a JSON POST signed with HMAC-SHA256 when ``alert_webhook_secret`` is
set, retried with exponential backoff on network errors, 429 and 5xx.

Receivers verify the ``X-Tokenlane-Signature: t=<unix seconds>,v1=<hex>`` header with
:func:`verify_signature`; ``v1`` is HMAC-SHA256(secret, ``f"{t}.{body}"``), so a replayed body
with another timestamp does not verify.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_attempt, wait_exponential

from .anomalies import Anomaly
from .sidecar import Sidecar, where

log = logging.getLogger("tokenlane.alerts")

PICO_PER_USD = 10**12
SIGNATURE_HEADER = "X-Tokenlane-Signature"
# A forecast needs some history: no projection before this share of the window has passed.
FORECAST_MIN_ELAPSED = 0.1


@dataclass(frozen=True)
class Alert:
    """One fired alert; :meth:`payload` is what every channel receives."""

    id: str
    principal: str
    level: str
    kind: str              # "threshold" | "forecast"
    threshold: float       # fraction of the limit (a forecast: 1.0, the level it predicts)
    window: str            # hour | day | month | total
    window_start: int
    resets_at: float | None
    spent_pico_usd: int
    limit_pico_usd: int
    reason: str            # "spend" | "refused" | "forecast"
    at: float
    projected_pico_usd: int | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "type": f"budget.{self.kind}", "principal": self.principal, "tenant": self.principal,
            "level": self.level, "threshold": self.threshold, "reason": self.reason,
            "spent_usd": self.spent_pico_usd / PICO_PER_USD, "limit_usd": self.limit_pico_usd / PICO_PER_USD,
            "spent_fraction": round(self.spent_pico_usd / self.limit_pico_usd, 6),
            "window": self.window, "window_start": self.window_start, "resets_at": self.resets_at, "at": self.at,
        }
        if self.projected_pico_usd is not None:
            body["projected_usd"] = self.projected_pico_usd / PICO_PER_USD
        body["message"] = self.message()
        return body

    def message(self) -> str:
        pct = f"{self.threshold:.0%}"
        spent = f"{self.spent_pico_usd / PICO_PER_USD:.4g} of {self.limit_pico_usd / PICO_PER_USD:.4g} USD"
        if self.kind == "forecast":
            return (f"budget of {self.principal} will run out before this {self.window} ends at the current "
                    f"burn rate ({spent} spent)")
        if self.reason == "refused":
            return f"budget of {self.principal} is used up for this {self.window}: a request was refused ({spent})"
        return f"budget of {self.principal} passed {pct} for this {self.window} ({spent})"


def due(usage: Mapping[str, Any], thresholds: Sequence[float], now: float, *, refused: bool = False,
        forecast: bool = True) -> list[tuple[str, float, str, int | None]]:
    """Which alerts a budget's usage calls for: ``(kind, threshold, reason, projected_pico_usd)``.

    ``usage`` is :meth:`Ledger.usage`'s dict. ``refused``: the budget just refused a request, which
    is its 100 % moment even when the hard cap stopped spend a little short of the limit.
    """
    limit = usage.get("limit_pico_usd")
    if not limit or limit <= 0:
        return []
    spent = int(usage.get("spent_pico_usd") or 0)
    out: list[tuple[str, float, str, int | None]] = [
        ("threshold", float(t), "spend", None) for t in thresholds if spent >= t * limit]
    if refused and not any(t >= 1.0 for _, t, _, _ in out):
        out.append(("threshold", 1.0, "refused", None))
    start, resets = usage.get("window_start"), usage.get("resets_at")
    if forecast and start is not None and resets is not None and spent < limit:
        length, elapsed = resets - start, now - start
        if length > 0 and elapsed >= FORECAST_MIN_ELAPSED * length:
            projected = int(spent * length / elapsed)
            if projected > limit:
                out.append(("forecast", 1.0, "forecast", projected))
    return out


class AlertMarks:
    """The fired alerts, shared by every process on the ledger file: claim once, then deliver."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._db = sidecar

    def claim(self, alert: Alert, delivery: str) -> bool:
        """Records the alert; False when another process (or an earlier request) already fired it."""
        with self._db.connection() as c:
            cur = c.execute(
                "INSERT INTO alerts (id, principal, level, kind, threshold, period, window_start,"
                " spent_pico_usd, limit_pico_usd, reason, at, payload, delivery)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (alert.id, alert.principal, alert.level, alert.kind, alert.threshold, alert.window,
                 alert.window_start, alert.spent_pico_usd, alert.limit_pico_usd, alert.reason, alert.at,
                 json.dumps(alert.payload()), delivery))
            return cur.rowcount == 1

    def fired(self, principal: str, level: str, window_start: int) -> set[tuple[str, float]]:
        """The (kind, threshold) pairs already fired in this window (to skip claiming them again)."""
        with self._db.connection() as c:
            rows = c.execute("SELECT kind, threshold FROM alerts WHERE principal = ? AND level = ? AND window_start = ?",
                             (principal, level, window_start)).fetchall()
        return {(r["kind"], r["threshold"]) for r in rows}

    def record_delivery(self, alert_id: str, status: str, attempts: int, error: str | None,
                        at: float | None) -> None:
        with self._db.connection() as c:
            c.execute("UPDATE alerts SET delivery = ?, attempts = ?, last_error = ?, delivered_at = ? WHERE id = ?",
                      (status, attempts, error, at, alert_id))

    def list(self, principal: str | None = None, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts newest first, each with its payload and delivery status."""
        filters, args = where(("principal = ?", principal), ("at >= ?", since))
        sql = f"SELECT * FROM alerts{filters} ORDER BY at DESC, kind DESC, threshold DESC LIMIT ?"  # one check: its refusal first
        with self._db.connection() as c:
            rows = c.execute(sql, (*args, limit)).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row["payload"] = json.loads(row["payload"])
            out.append(row)
        return out


class RedisAlertMarks(AlertMarks):
    """Marks claimed in Redis, so replicas on other hosts fire each alert once too: one hash per
    principal, level and window, a field per (kind, threshold) set with HSETNX (atomic), kept a day
    past the window. The alert's record and delivery status go to the claiming host's ledger file."""

    def __init__(self, sidecar: Sidecar, url: str, *, prefix: str = "tokenlane:alerts:") -> None:
        import redis  # the optional `redis` extra

        super().__init__(sidecar)
        self._r = redis.Redis.from_url(url)
        self.prefix = prefix

    def _name(self, principal: str, level: str, window_start: int) -> str:
        return f"{self.prefix}{level}:{window_start}:{principal}"

    def claim(self, alert: Alert, delivery: str) -> bool:
        name = self._name(alert.principal, alert.level, alert.window_start)
        ends = alert.resets_at if alert.resets_at is not None else alert.at + 31 * 86400
        pipe = self._r.pipeline()
        pipe.hsetnx(name, f"{alert.kind}|{alert.threshold!r}", alert.id)
        pipe.expire(name, max(3600, int(ends - alert.at) + 86400))
        won, _ = pipe.execute()
        return bool(won) and super().claim(alert, delivery)

    def fired(self, principal: str, level: str, window_start: int) -> set[tuple[str, float]]:
        fields = self._r.hkeys(self._name(principal, level, window_start))
        return {(kind, float(threshold)) for kind, threshold in (f.decode().split("|", 1) for f in fields)}


def open_alert_marks(sidecar: Sidecar, state: str | None = None) -> AlertMarks:
    """Redis marks when ``state`` is a redis:// URL (replicas on several hosts), else the ledger file's."""
    if state and state.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return RedisAlertMarks(sidecar, state)
    return AlertMarks(sidecar)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for a webhook body."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: float = 300.0,
                     now: float | None = None) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is recent enough."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")


class _Retryable(Exception):
    """A delivery attempt worth repeating (network error, 429, 5xx)."""


class Alerts:
    """Evaluates budgets after reconcile and delivers what fires (see the module docstring).

    :meth:`check` is blocking (ledger thread); :meth:`deliver` runs on the event loop.
    """

    def __init__(self, marks: AlertMarks, *, thresholds: Sequence[float] = (0.5, 0.8, 1.0), forecast: bool = True,
                 webhook: str | None = None, secret: str | None = None, attempts: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 10.0,
                 on_alert: Callable[[Alert], Any] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.marks = marks
        self.thresholds = tuple(sorted(set(thresholds)))
        self.forecast = forecast
        self.webhook = webhook
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.on_alert = on_alert
        self._transport = transport
        self._known: dict[tuple[str, str, int], set[tuple[str, float]]] = {}  # fired marks seen by this process

    def check(self, principal: str, usage: Mapping[str, Any], now: float, *, level: str = "tenant",
              refused: bool = False) -> list[Alert]:
        """Claims the alerts this usage calls for and returns those this process must deliver."""
        wanted = due(usage, self.thresholds, now, refused=refused, forecast=self.forecast)
        if not wanted:
            return []
        start = int(usage.get("window_start") or 0)
        key = (principal, level, start)
        known = self._known.get(key)
        if known is None:
            if len(self._known) > 10_000:
                self._known.clear()
            known = self._known[key] = self.marks.fired(principal, level, start)
        out = []
        for kind, threshold, reason, projected in wanted:
            if (kind, threshold) in known:
                continue
            known.add((kind, threshold))
            alert = Alert(id=f"alert_{uuid.uuid4().hex}", principal=principal, level=level, kind=kind,
                          threshold=threshold, window=str(usage.get("window") or ""), window_start=start,
                          resets_at=usage.get("resets_at"), spent_pico_usd=int(usage.get("spent_pico_usd") or 0),
                          limit_pico_usd=int(usage["limit_pico_usd"]), reason=reason, at=now,
                          projected_pico_usd=projected)
            if self.marks.claim(alert, "pending" if self.webhook else "none"):
                out.append(alert)
        return out

    @property
    def enabled(self) -> bool:
        """Whether budgets are watched at all (thresholds or forecast configured)."""
        return bool(self.thresholds) or self.forecast

    async def deliver(self, event: Alert | Anomaly) -> None:
        """Log, hook, webhook; a budget alert's webhook outcome is recorded on its mark. Anomalies
        (per process, not marked) go to the same channels."""
        message = event.message() if isinstance(event, Alert) else event.message
        log.warning("tokenlane %s: %s", "alert" if isinstance(event, Alert) else "anomaly", message,
                    extra={"tokenlane_alert": event.payload()})
        if self.on_alert is not None:
            try:
                result = self.on_alert(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a broken hook must not stop the other channels
                log.exception("tokenlane on_alert hook failed for %s", message)
        if self.webhook:
            status, attempts, error = await self._post(event)
            if isinstance(event, Alert):
                await asyncio.to_thread(self.marks.record_delivery, event.id, status, attempts, error,
                                        time.time() if status == "delivered" else None)

    async def _post(self, event: Alert | Anomaly) -> tuple[str, int, str | None]:
        assert self.webhook is not None
        body = json.dumps(event.payload()).encode()
        event_id = event.id if isinstance(event, Alert) else f"anomaly_{uuid.uuid4().hex}"
        attempts = 0
        last_error: str | None = None

        async def once(client: httpx.AsyncClient) -> None:
            nonlocal attempts, last_error
            attempts += 1
            headers = {"content-type": "application/json", "user-agent": "tokenlane-alerts",
                       "x-tokenlane-alert-id": event_id}
            if self.secret:
                headers[SIGNATURE_HEADER] = sign(self.secret, body, int(time.time()))
            try:
                response = await client.post(self.webhook, content=body, headers=headers)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                raise _Retryable(last_error) from exc
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}"
                raise _Retryable(last_error)
            if response.status_code >= 400:
                last_error = f"HTTP {response.status_code}"
                raise RuntimeError(last_error)  # the receiver refuses this body: retrying will not help

        retrying = AsyncRetrying(stop=stop_after_attempt(self.attempts),
                                 wait=wait_exponential(multiplier=self.backoff_s, max=60),
                                 retry=retry_if_exception(lambda e: isinstance(e, _Retryable)), reraise=False)
        async with httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport) as client:
            try:
                async for attempt in retrying:
                    with attempt:
                        await once(client)
            except (RetryError, RuntimeError):
                log.error("tokenlane alert %s: webhook delivery failed after %d attempt(s): %s",
                          event_id, attempts, last_error)
                return "failed", attempts, last_error
        return "delivered", attempts, None


__all__ = ["Alert", "AlertMarks", "Alerts", "RedisAlertMarks", "SIGNATURE_HEADER", "due", "open_alert_marks", "sign",
           "verify_signature"]
