"""/reports: charts drawn as server-side SVG, and CSV export. Admins see everyone (or one user),
clients see their own requests."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import statistics
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from tokenlane.reports import NONE

from tokenlane.reports import COLUMNS as KPI_COLUMNS

from .. import charts
from ..security import blocking, require_user, tenant_of
from ..web import render

router = APIRouter(dependencies=[Depends(require_user)])

PERIODS = (1, 7, 30, 90)
MAX_ROWS = 10_000  # the wait histogram and median error read at most this many requests (newest first)
CSV_PAGE = 5_000
STATUS_COLORS = {"succeeded": "#2f9e6b", "running": "#3566d6", "queued": "#e0a82e", "deferred": "#e08a2e", "failed": "#c2455a", "rejected": "#a3364a", "cancelled": "#8a8f98"}
CSV_COLUMNS = (
    "id", "created_at", "tenant", "user_id", "route", "model", "priority", "status", "decision", "reason",
    "queue_ms", "est_input_tokens", "est_output_p50", "est_output_p90", "input_tokens", "cached_input_tokens",
    "output_tokens", "est_cost_pico_usd", "cost_pico_usd", "est_cost_usd", "cost_usd", "cache", "cache_saved_pico_usd",
    "prompt_cache_saved_pico_usd", "untrimmed_input_tokens", "error", "prompt_preview",
)


def _scope(user: dict[str, Any], tenant: str) -> str | None:
    """Whose requests this report covers: a client only ever their own."""
    if user.get("role") == "admin":
        return tenant or None
    return tenant_of(user)


def _n(v: Any) -> int:
    return int(v or 0)


def _label(row: dict[str, Any]) -> str:
    return str(row.get("email") or row.get("tenant") or f"user {row.get('user_id')}")


def _rule(row: dict[str, Any]) -> str:
    return "no rule" if row["rule"] == NONE else str(row["rule"])


def build(tl: Any, tenant: str | None, days: int, now: float) -> dict[str, Any]:
    """Every chart of /reports. Totals come from the ledger's SQL aggregates over the whole period;
    only the queue-wait histogram and the median estimate error read request rows (newest MAX_ROWS)."""
    led = tl.ledger
    since = now - days * 86400
    by_status = {k: v for k, v in led.status_counts(tenant=tenant, since=since).items() if v}
    by_model = led.report_by_model(since=since, tenant=tenant)
    by_user = led.report_by_user(since=since, tenant=tenant)
    by_day = {r["day"]: r for r in led.report_by_day(since=since, tenant=tenant)}
    by_rule = tl.report("rule", since=since, tenant=tenant)
    by_lane = {r["lane"]: r for r in tl.report("lane", since=since, tenant=tenant)}
    rows = led.list_requests(tenant=tenant, since=since, limit=MAX_ROWS)
    waits = [float(r["queue_ms"]) / 1000 for r in rows if r.get("queue_ms") is not None]
    errors = [
        abs(_n(r.get("est_output_p50")) - _n(r["output_tokens"])) / _n(r["output_tokens"])
        for r in rows
        if r.get("status") == "succeeded" and _n(r.get("output_tokens")) > 0 and r.get("est_output_p50") is not None
    ]
    day_labels = [_day(now - (days - 1 - i) * 86400) for i in range(days)] if days > 1 else [_day(now)]
    users = by_user[:8]
    models = [m for m in by_model if _n(m.get("output_tokens_matched")) or _n(m.get("cost_pico_usd_matched"))][:8]
    return {
        "total": sum(by_status.values()),
        "succeeded": by_status.get("succeeded", 0),
        "spend": sum(_n(r.get("cost_pico_usd")) for r in by_model),
        "batch_share": (by_lane.get("batch") or {}).get("share_of_requests") or 0.0,
        "batch_saved_usd": (by_lane.get("batch") or {}).get("saved_usd") or 0.0,
        "routing_saved_usd": sum(r["saved_usd"] for r in by_rule if r["rule"] != NONE),
        "tokens": sum(_n(r.get("input_tokens")) + _n(r.get("output_tokens")) for r in by_model),
        # cost levers: response cache hits (and their rate among cache lookups) and what they saved
        "cache_hits": sum(_n(r.get("cache_hits")) for r in by_model),
        "cache_lookups": sum(_n(r.get("cache_hits")) + _n(r.get("cache_misses")) for r in by_model),
        "saved": sum(_n(r.get("cache_saved_pico_usd")) + _n(r.get("prompt_cache_saved_pico_usd")) for r in by_model),
        "prompt_cache_saved": sum(_n(r.get("prompt_cache_saved_pico_usd")) for r in by_model),
        "median_wait_s": statistics.median(waits) if waits else None,
        "median_error": statistics.median(errors) if errors else None,
        "truncated": len(rows) >= MAX_ROWS,
        "charts": {
            "status": charts.hbar(sorted(by_status.items(), key=lambda kv: -kv[1]), "Requests by status", colors=STATUS_COLORS),
            "model": charts.hbar([(m["model"], _n(m["requests"])) for m in sorted(by_model, key=lambda m: -_n(m["requests"]))], "Requests by model"),
            "user": charts.hbar([(_label(u), _n(u["requests"])) for u in sorted(by_user, key=lambda u: -_n(u["requests"]))], "Requests by user"),
            "tokens_user": charts.grouped(
                [_label(u) for u in users],
                {"input": [_n(u["input_tokens"]) for u in users], "output": [_n(u["output_tokens"]) for u in users]},
                "Tokens per user",
            ),
            "est_tokens": charts.grouped(
                [m["model"] for m in models],
                {"estimated p50": [_n(m["est_output_p50_matched"]) for m in models], "actual": [_n(m["output_tokens_matched"]) for m in models]},
                "Output tokens, estimated (p50) vs actual, summed over requests that have both",
            ),
            "est_cost": charts.grouped(
                [m["model"] for m in models],
                {"estimated": [_n(m["est_cost_pico_usd_matched"]) / 1e12 for m in models], "actual": [_n(m["cost_pico_usd_matched"]) / 1e12 for m in models]},
                "Cost, estimated vs actual, summed over requests that have both", fmt=money,
            ),
            "spend": charts.line(
                [(d[5:], _n((by_day.get(d) or {}).get("cost_pico_usd")) / 1e12) for d in day_labels], "Spend per day (UTC)", fmt=money
            ),
            "wait": charts.histogram(waits, [0, 0.1, 0.5, 1, 5, 30, 120], "Queue wait (seconds)"),
            "rule": charts.grouped(
                [_rule(r) for r in by_rule],
                {"cost": [r["cost_usd"] for r in by_rule], "saved": [r["saved_usd"] for r in by_rule]},
                "Cost and saving per routing rule (vs the requested model at list price)", fmt=money,
            ),
            "saved": charts.line(
                [(d[5:], (_n((by_day.get(d) or {}).get("cache_saved_pico_usd"))
                          + _n((by_day.get(d) or {}).get("prompt_cache_saved_pico_usd"))) / 1e12) for d in day_labels],
                "Saved per day by the response cache and provider prompt caching (UTC)", fmt=money
            ),
        },
    }


def money(v: float) -> str:
    """Dollars for chart labels, with two significant digits however small (requests cost µ$)."""
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    digits = min(12, max(2, 1 - math.floor(math.log10(abs(v)))))
    return f"${v:.{digits}f}"


def _day(ts: Any) -> str:
    if not ts:
        return "?"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d")


@router.get("/reports")
async def reports_page(request: Request, user: dict[str, Any] = Depends(require_user), days: int = 30, tenant: str = "",
                       by: str = "model") -> Response:
    days = days if days in PERIODS else 30
    tl = request.app.state.tl
    now = time.time()
    report = await blocking(build, tl, _scope(user, tenant), days, now)
    tenants = []
    if user.get("role") == "admin":
        tenants = sorted({u.get("tenant") or u["email"] for u in await blocking(tl.ledger.list_users)})
    # The KPI table: tokenlane's own report, the numbers `tokenlane report --since {days}d --by {by}` prints.
    groupings = ["model", "day", "route", *(["tenant"] if user.get("role") == "admin" else []),
                 *(f"tag:{k}" for k in await blocking(tl.tags.keys))]
    by = by if by in groupings else "model"
    kpis = await blocking(tl.report, by, since=now - days * 86400, tenant=_scope(user, tenant))
    return render(
        request, "reports.html", title="Reports", report=report, days=days, periods=PERIODS,
        tenant=_scope(user, tenant) or "", tenants=tenants, by=by, groupings=groupings, kpis=kpis,
        kpi_columns=KPI_COLUMNS,
    )


@router.get("/reports/requests.csv")
async def export_csv(request: Request, user: dict[str, Any] = Depends(require_user), days: int = 30, tenant: str = "") -> Response:
    """Every request of the period (same scope as the page), newest first, read page by page."""
    days = days if days in PERIODS else 30
    led = request.app.state.tl.ledger
    scope, since = _scope(user, tenant), time.time() - days * 86400

    async def lines() -> AsyncIterator[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        offset = 0
        while True:
            rows = await blocking(led.list_requests, tenant=scope, since=since, limit=CSV_PAGE, offset=offset)
            for r in rows:
                out = dict(r)
                out["est_cost_usd"] = _decimal_usd(r.get("est_cost_pico_usd"))
                out["cost_usd"] = _decimal_usd(r.get("cost_pico_usd"))
                w.writerow([_cell(out.get(c)) for c in CSV_COLUMNS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(rows) < CSV_PAGE:
                break
            offset += CSV_PAGE

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
