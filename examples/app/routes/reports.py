"""/reports: charts drawn as server-side SVG, and CSV export. Admins see everyone (or one user),
clients see their own requests."""

from __future__ import annotations

import csv
import datetime as dt
import io
import statistics
import time
from collections import Counter, defaultdict
from typing import Any, Iterable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from .. import charts
from ..security import blocking, require_user, tenant_of
from ..web import render, usd

router = APIRouter(dependencies=[Depends(require_user)])

PERIODS = (1, 7, 30, 90)
MAX_ROWS = 20_000  # reports read at most this many requests of the period (newest first)
STATUS_COLORS = {"succeeded": "#2f9e6b", "running": "#3566d6", "queued": "#e0a82e", "deferred": "#e08a2e", "failed": "#c2455a", "rejected": "#a3364a", "cancelled": "#8a8f98"}
CSV_COLUMNS = (
    "id", "created_at", "tenant", "user_id", "route", "model", "priority", "status", "decision", "reason",
    "queue_ms", "est_input_tokens", "est_output_p50", "est_output_p90", "input_tokens", "cached_input_tokens",
    "output_tokens", "est_cost_pico_usd", "cost_pico_usd", "est_cost_usd", "cost_usd", "error",
)


def _scope(user: dict[str, Any], tenant: str) -> str | None:
    """Whose requests this report covers: a client only ever their own."""
    if user.get("role") == "admin":
        return tenant or None
    return tenant_of(user)


async def _rows(request: Request, user: dict[str, Any], days: int, tenant: str) -> list[dict[str, Any]]:
    since = time.time() - days * 86400
    led = request.app.state.tl.ledger
    return await blocking(led.list_requests, tenant=_scope(user, tenant), since=since, limit=MAX_ROWS)


def _n(v: Any) -> int:
    return int(v or 0)


def build(rows: Iterable[dict[str, Any]], days: int, now: float) -> dict[str, Any]:
    rows = list(rows)
    by_status = Counter(r.get("status") or "?" for r in rows)
    by_model = Counter(r.get("model") or "?" for r in rows)
    by_user = Counter(r.get("tenant") or "?" for r in rows)
    tokens_in: dict[str, int] = defaultdict(int)
    tokens_out: dict[str, int] = defaultdict(int)
    est_out: dict[str, list[int]] = defaultdict(list)
    act_out: dict[str, list[int]] = defaultdict(list)
    est_cost: dict[str, int] = defaultdict(int)
    act_cost: dict[str, int] = defaultdict(int)
    spend_by_day: dict[str, int] = defaultdict(int)
    waits: list[float] = []
    errors: list[float] = []
    for r in rows:
        tenant = r.get("tenant") or "?"
        tokens_in[tenant] += _n(r.get("input_tokens"))
        tokens_out[tenant] += _n(r.get("output_tokens"))
        spend_by_day[_day(r.get("created_at"))] += _n(r.get("cost_pico_usd"))
        if r.get("queue_ms") is not None:
            waits.append(float(r["queue_ms"]) / 1000)
        if r.get("status") == "succeeded" and r.get("output_tokens") is not None:
            model = r.get("model") or "?"
            est_out[model].append(_n(r.get("est_output_p50")))
            act_out[model].append(_n(r.get("output_tokens")))
            est_cost[model] += _n(r.get("est_cost_pico_usd"))
            act_cost[model] += _n(r.get("cost_pico_usd"))
            if _n(r.get("output_tokens")) > 0:
                errors.append(abs(_n(r.get("est_output_p50")) - _n(r["output_tokens"])) / _n(r["output_tokens"]))
    day_labels = [_day(now - (days - 1 - i) * 86400) for i in range(days)] if days > 1 else [_day(now)]
    models = sorted(est_out, key=lambda m: -len(est_out[m]))
    users = sorted(set(tokens_in) | set(tokens_out), key=lambda t: -(tokens_in[t] + tokens_out[t]))
    money = lambda v: usd(int(v * 10**12), 4)  # noqa: E731 (charts work in dollars, labels in $)
    return {
        "total": len(rows),
        "succeeded": by_status.get("succeeded", 0),
        "spend": sum(act_cost.values()) if act_cost else sum(_n(r.get("cost_pico_usd")) for r in rows),
        "tokens": sum(tokens_in.values()) + sum(tokens_out.values()),
        "median_wait_s": statistics.median(waits) if waits else None,
        "median_error": statistics.median(errors) if errors else None,
        "truncated": len(rows) >= MAX_ROWS,
        "charts": {
            "status": charts.hbar(by_status.most_common(), "Requests by status", colors=STATUS_COLORS),
            "model": charts.hbar(by_model.most_common(), "Requests by model"),
            "user": charts.hbar(by_user.most_common(), "Requests by user"),
            "tokens_user": charts.grouped(
                users[:8], {"input": [tokens_in[u] for u in users[:8]], "output": [tokens_out[u] for u in users[:8]]},
                "Tokens per user",
            ),
            "est_tokens": charts.grouped(
                models, {"estimated p50": [statistics.mean(est_out[m]) for m in models], "actual": [statistics.mean(act_out[m]) for m in models]},
                "Output tokens per request: estimated vs actual (mean, succeeded requests)",
            ),
            "est_cost": charts.grouped(
                models, {"estimated": [est_cost[m] / 1e12 for m in models], "actual": [act_cost[m] / 1e12 for m in models]},
                "Cost: estimated vs actual (succeeded requests)", fmt=money,
            ),
            "spend": charts.line([(d[5:], spend_by_day.get(d, 0) / 1e12) for d in day_labels], "Spend per day (UTC)", fmt=money),
            "wait": charts.histogram(waits, [0, 0.1, 0.5, 1, 5, 30, 120], "Queue wait (seconds)"),
        },
    }


def _day(ts: Any) -> str:
    if not ts:
        return "?"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d")


@router.get("/reports")
async def reports_page(request: Request, user: dict[str, Any] = Depends(require_user), days: int = 30, tenant: str = "") -> Response:
    days = days if days in PERIODS else 30
    rows = await _rows(request, user, days, tenant)
    tenants = []
    if user.get("role") == "admin":
        tenants = [u["email"] for u in await blocking(request.app.state.tl.ledger.list_users)]
    return render(
        request, "reports.html", title="Reports", report=build(rows, days, time.time()), days=days, periods=PERIODS,
        tenant=_scope(user, tenant) or "", tenants=tenants,
    )


@router.get("/reports/requests.csv")
async def export_csv(request: Request, user: dict[str, Any] = Depends(require_user), days: int = 30, tenant: str = "") -> Response:
    days = days if days in PERIODS else 30
    rows = await _rows(request, user, days, tenant)

    def lines() -> Iterable[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            out = dict(r)
            out["est_cost_usd"] = _decimal_usd(r.get("est_cost_pico_usd"))
            out["cost_usd"] = _decimal_usd(r.get("cost_pico_usd"))
            w.writerow([_cell(out.get(c)) for c in CSV_COLUMNS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        if not rows:
            yield buf.getvalue()

    name = f"tokenlane-requests-{_day(time.time())}-{days}d.csv"
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _decimal_usd(pico: Any) -> str:
    if pico is None:
        return ""
    from decimal import Decimal

    return str(Decimal(int(pico)).scaleb(-12).normalize())


def _cell(v: Any) -> str:
    if v is None:
        return ""
    text = str(v)
    # A spreadsheet must not run a formula a user typed into a prompt or an error message.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
