"""Spend reports and KPIs over the ledger: one function behind ``tokenlane report``, the example
app's reports page and ``Tokenlane.report``, so every surface shows the same numbers.

    rows = report("tokenlane.db", by="tag:feature", since=time.time() - 7 * 86400)
    kpis = summary("tokenlane.db", since=...)

Groupings: ``day``, ``model``, ``route``, ``tenant`` (the paying principal), ``user``, ``status``,
``rule`` (the routing rule that chose the served model), ``lane`` (``live`` or ``batch``) and
``tag:<key>`` (requests without that tag form the ``(none)`` group).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from .sidecar import open_sidecar, where

PICO_PER_USD = 10**12
GROUPS = ("day", "model", "route", "tenant", "user", "status", "rule", "lane")
NONE = "(none)"

_GROUP_SQL = {
    "day": "date(r.created_at, 'unixepoch')",
    "model": "r.model",
    "route": "r.route",
    "tenant": "r.tenant",
    "user": "r.user_id",
    "status": "r.status",
    "rule": "r.route_rule",
    "lane": "CASE WHEN r.batch = 1 THEN 'batch' ELSE 'live' END",
}

# Sums per group; the *_matched pairs cover the same rows, so their ratio is an honest error.
_MEASURES = """
  COUNT(*) AS requests,
  SUM(CASE WHEN r.status = 'succeeded' THEN 1 ELSE 0 END) AS succeeded,
  SUM(CASE WHEN r.status = 'failed' THEN 1 ELSE 0 END) AS failed,
  SUM(CASE WHEN r.status = 'rejected' THEN 1 ELSE 0 END) AS refused,
  SUM(CASE WHEN r.input_tokens IS NOT NULL THEN 1 ELSE 0 END) AS billed,
  COALESCE(SUM(r.input_tokens), 0) AS input_tokens,
  COALESCE(SUM(r.output_tokens), 0) AS output_tokens,
  COALESCE(SUM(r.cached_input_tokens), 0) AS cached_input_tokens,
  COALESCE(SUM(r.cost_pico_usd), 0) AS cost_pico_usd,
  COALESCE(SUM(CASE WHEN r.cache = 'hit' THEN 1 ELSE 0 END), 0) AS cache_hits,
  COALESCE(SUM(r.cache_saved_pico_usd), 0) + COALESCE(SUM(r.prompt_cache_saved_pico_usd), 0)
    + COALESCE(SUM(r.unrouted_cost_pico_usd - r.cost_pico_usd), 0) AS saved_pico_usd,
  COALESCE(SUM(CASE WHEN r.cost_pico_usd IS NOT NULL AND r.status = 'succeeded' THEN r.est_cost_pico_usd END), 0)
    AS est_cost_matched,
  COALESCE(SUM(CASE WHEN r.est_cost_pico_usd IS NOT NULL AND r.status = 'succeeded' THEN r.cost_pico_usd END), 0)
    AS cost_matched
"""


class ReportError(ValueError):
    """A grouping or period the report cannot use."""


def _group(by: str) -> tuple[str, str, list[Any]]:
    """(SQL expression, join, join parameters) for a grouping."""
    if by in _GROUP_SQL:
        return _GROUP_SQL[by], "", []
    if by.startswith("tag:") and re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", by[4:]):
        return "t.value", " LEFT JOIN request_tags t ON t.request_id = r.id AND t.key = ?", [by[4:]]
    raise ReportError(f"unknown grouping {by!r}: use one of {', '.join(GROUPS)} or tag:<key>")


def _where(since: float | None, until: float | None, tenant: str | None) -> tuple[str, list[Any]]:
    return where(("r.created_at >= ?", since), ("r.created_at < ?", until), ("r.tenant = ?", tenant))


def _p95(db: Any, value: str, group: str, join: str, join_args: list[Any], where: str,
         args: list[Any]) -> dict[Any, float]:
    """Nearest-rank p95 of a per-request value in each group (SQL window functions)."""
    cond = f"({value}) IS NOT NULL"
    where = where + (" AND " if where else " WHERE ") + cond
    sql = (f"SELECT g, MAX(CASE WHEN rn = (n * 95 + 99) / 100 THEN v END) AS p95 FROM ("
           f" SELECT {group} AS g, {value} AS v, ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY {value}) AS rn,"
           f" COUNT(*) OVER (PARTITION BY {group}) AS n FROM requests r{join}{where}) AS ranked GROUP BY g")
    with db.connection() as c:
        return {row["g"]: row["p95"] for row in c.execute(sql, [*join_args, *args])}


def _kpis(row: dict[str, Any], total_requests: int) -> dict[str, Any]:
    requests, billed = row["requests"], row["billed"] or 0
    cost = row["cost_pico_usd"] / PICO_PER_USD
    est, actual = row["est_cost_matched"], row["cost_matched"]
    return {
        "requests": requests, "succeeded": row["succeeded"], "failed": row["failed"], "refused": row["refused"],
        "cost_usd": cost,
        # cost levers (docs/caching.md, docs/routing.md): answers served from the response cache, and
        # what the cache, the provider's prompt caching, routing and the batch lane saved
        "cache_hits": row["cache_hits"], "cache_hit_rate": row["cache_hits"] / requests if requests else None,
        "saved_usd": row["saved_pico_usd"] / PICO_PER_USD,
        "cost_per_1k_requests_usd": cost * 1000 / requests if requests else None,
        "avg_input_tokens": row["input_tokens"] / billed if billed else None,
        "avg_output_tokens": row["output_tokens"] / billed if billed else None,
        "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"],
        "cached_input_share": row["cached_input_tokens"] / row["input_tokens"] if row["input_tokens"] else None,
        "share_of_requests": requests / total_requests if total_requests else None,
        "refusal_rate": row["refused"] / requests if requests else None,
        # Actual over estimated cost of the same succeeded requests, minus one: +0.1 = 10 % above the estimate.
        "estimate_error": actual / est - 1 if est else None,
    }


def report(db: Any, by: str = "day", *, since: float | None = None, until: float | None = None,
           tenant: str | None = None) -> list[dict[str, Any]]:
    """One row per group with the KPIs (cost per 1,000 requests, average tokens, p95 latency and
    queue time, refusal rate, estimate error, share of requests), most expensive first (by day:
    in date order)."""
    sidecar = open_sidecar(db) if isinstance(db, str) else db
    group, join, join_args = _group(by)
    where, args = _where(since, until, tenant)
    sql = f"SELECT {group} AS g, {_MEASURES} FROM requests r{join}{where} GROUP BY g"
    with sidecar.connection() as c:
        rows = [dict(row) for row in c.execute(sql, [*join_args, *args])]
    latency = _p95(sidecar, "(r.finished_at - r.created_at) * 1000.0", group, join, join_args,
                   where + (" AND " if where else " WHERE ") + "r.status = 'succeeded'", args)
    queue = _p95(sidecar, "r.queue_ms", group, join, join_args, where, args)
    total = sum(r["requests"] for r in rows)
    out = []
    for row in rows:
        key = row["g"]
        out.append({by: NONE if key is None else key, **_kpis(row, total),
                    "p95_latency_ms": latency.get(key), "p95_queue_ms": queue.get(key)})
    if by == "day":
        out.sort(key=lambda r: str(r["day"]))
    else:
        out.sort(key=lambda r: (-r["cost_usd"], -r["requests"], str(r[by])))
    if isinstance(db, str):
        sidecar.close()
    return out


def summary(db: Any, *, since: float | None = None, until: float | None = None,
            tenant: str | None = None) -> dict[str, Any]:
    """The KPIs over the whole period, refusals by reason and spend against each budget."""
    sidecar = open_sidecar(db) if isinstance(db, str) else db
    where, args = _where(since, until, tenant)
    with sidecar.connection() as c:
        row = dict(c.execute(f"SELECT 1 AS g, {_MEASURES} FROM requests r{where}", args).fetchone())
        reasons = {r["reason"] or "unknown": r["n"] for r in c.execute(
            f"SELECT r.reason AS reason, COUNT(*) AS n FROM requests r{where}"
            f"{' AND' if where else ' WHERE'} r.status = 'rejected' GROUP BY r.reason ORDER BY n DESC", args)}
        budget_sql = ("SELECT tenant, limit_pico_usd, period, window_start, spent_pico_usd, limit_tokens, spent_tokens "
                      "FROM budgets")
        budgets = [dict(b) for b in c.execute(budget_sql + (" WHERE tenant = ?" if tenant else ""),
                                              [tenant] if tenant else [])]
    row["requests"] = row["requests"] or 0
    for k in ("succeeded", "failed", "refused", "billed"):
        row[k] = row[k] or 0
    latency = _p95(sidecar, "(r.finished_at - r.created_at) * 1000.0", "1", "", [],
                   where + (" AND " if where else " WHERE ") + "r.status = 'succeeded'", args)
    queue = _p95(sidecar, "r.queue_ms", "1", "", [], where, args)
    if isinstance(db, str):
        sidecar.close()
    kpis = _kpis(row, row["requests"])
    kpis.pop("share_of_requests")
    kpis["p95_latency_ms"], kpis["p95_queue_ms"] = latency.get(1), queue.get(1)
    kpis["refusals_by_reason"] = reasons
    kpis["budgets"] = [{
        "principal": b["tenant"], "level": "tenant", "window": b["period"], "window_start": b["window_start"],
        "spent_usd": b["spent_pico_usd"] / PICO_PER_USD,
        "limit_usd": None if b["limit_pico_usd"] is None else b["limit_pico_usd"] / PICO_PER_USD,
        "spent_fraction": (b["spent_pico_usd"] / b["limit_pico_usd"]) if b["limit_pico_usd"] else None,
        "spent_tokens": b["spent_tokens"], "limit_tokens": b["limit_tokens"],
        "spent_tokens_fraction": (b["spent_tokens"] / b["limit_tokens"]) if b["limit_tokens"] else None,
    } for b in budgets]
    return kpis


def parse_period(text: str | None, now: float) -> float | None:
    """``7d``, ``12h``, ``30m`` (that long before ``now``) or a UTC date/time such as ``2026-12-01``."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match:
        return now - float(match.group(1)) * {"m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(f"period {text!r}: expected e.g. 7d, 12h, 30m or a date such as 2026-12-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def document(db: Any, by: str = "day", *, since: float | None = None, until: float | None = None,
             tenant: str | None = None) -> dict[str, Any]:
    """The whole report as ``tokenlane report --format json`` and ``GET /tokenlane/report`` give it."""
    return {"by": by, "since": since, "until": until, "tenant": tenant,
            "rows": report(db, by, since=since, until=until, tenant=tenant),
            "summary": summary(db, since=since, until=until, tenant=tenant)}


COLUMNS: Sequence[tuple[str, str]] = (
    ("requests", "requests"), ("cost_usd", "cost USD"), ("cost_per_1k_requests_usd", "USD/1k req"),
    ("avg_input_tokens", "avg in"), ("avg_output_tokens", "avg out"), ("share_of_requests", "share"),
    ("refusal_rate", "refused"), ("p95_latency_ms", "p95 ms"), ("p95_queue_ms", "p95 queue ms"),
    ("estimate_error", "est. error"), ("cache_hits", "cache hits"), ("saved_usd", "saved USD"),
)

__all__ = ["COLUMNS", "GROUPS", "ReportError", "document", "parse_period", "report", "summary"]
