"""Admin screens and their JSON API: /admin, /admin/users, /admin/scheduler, /admin/api/*.

Every route here depends on ``require_admin`` through the router, so none can forget the check."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response

from .. import state
from ..jobs import STATUSES
from ..security import MAX_ID, ROLES, blocking, hash_password, public_user, require_admin, require_csrf, tenant_of
from ..web import flash, render
from .auth import check_credentials

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

BATCH_DEFAULT = 5


def _month_start(now: float) -> float:
    d = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _day_key(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d")


async def overview(tl: Any) -> dict[str, Any]:
    led = tl.ledger
    now = time.time()
    days = await blocking(led.report_by_day, since=_month_start(now))
    today = _day_key(now)
    spend_month = sum(int(r.get("cost_pico_usd") or 0) for r in days)
    spend_today = sum(int(r.get("cost_pico_usd") or 0) for r in days if str(r.get("day")) == today)
    hits = sum(int(r.get("cache_hits") or 0) for r in days)
    lookups = hits + sum(int(r.get("cache_misses") or 0) for r in days)
    lanes = await tl.queue_view()  # every replica's, with several
    users = await blocking(led.list_users)
    return {
        "counts": await blocking(led.status_counts),
        "spend_today": spend_today,
        "spend_month": spend_month,
        "saved_month": sum(int(r.get("cache_saved_pico_usd") or 0) + int(r.get("prompt_cache_saved_pico_usd") or 0)
                           for r in days),
        "cache_hit_rate": hits / lookups if lookups else None,
        "queue_length": len(lanes["queue"]),
        "deferred_length": len(lanes["deferred"]) + len(lanes["shared_deferred"]),
        "running": len(lanes["running"]),
        "paused": bool(tl.scheduler.paused),
        "policy": tl.scheduler.policy,
        "users": len(users),
        "admins": sum(1 for u in users if u.get("role") == "admin"),
    }


@router.get("")
async def admin_home(request: Request) -> Response:
    tl = request.app.state.tl
    info = await overview(tl)
    recent = await blocking(tl.ledger.list_requests, limit=10)
    alerts = await blocking(tl.alerts, None, None, 20)
    return render(request, "admin.html", title="Admin", info=info, recent=recent, alerts=alerts,
                  policies=state.POLICIES, statuses=STATUSES)


@router.post("/dispatch", dependencies=[Depends(require_csrf)])
async def set_dispatch(request: Request, user: dict[str, Any] = Depends(require_admin), mode: str = Form(...)) -> Response:
    await _set_mode(request, user, mode)
    return RedirectResponse("/admin", status_code=303)


async def _set_mode(request: Request, user: dict[str, Any], mode: str) -> None:
    tl = request.app.state.tl
    if mode not in ("manual", "automatic"):
        raise HTTPException(status_code=400, detail="Mode is 'manual' or 'automatic'.")
    if mode == "manual":
        tl.pause()
    else:
        tl.resume()
    await blocking(state.set_cfg, tl.ledger, state.K_MODE, mode, user["email"])
    flash(request, "Manual mode: nothing runs until an admin dispatches it." if mode == "manual" else "Automatic mode: the scheduler dispatches by itself.")


@router.post("/policy", dependencies=[Depends(require_csrf)])
async def set_policy(request: Request, user: dict[str, Any] = Depends(require_admin), policy: str = Form(...)) -> Response:
    tl = request.app.state.tl
    if policy not in state.POLICIES:
        raise HTTPException(status_code=400, detail=f"Unknown policy {policy!r}.")
    tl.set_policy(policy)
    await blocking(state.set_cfg, tl.ledger, state.K_POLICY, policy, user["email"])
    flash(request, f"Policy switched to {policy}.")
    return RedirectResponse("/admin", status_code=303)


# -- users ---------------------------------------------------------------------------------------------


async def _user_rows(tl: Any) -> list[dict[str, Any]]:
    led = tl.ledger
    now = time.time()
    rows = []
    for u in await blocking(led.list_users):
        u = public_user(u) or {}
        tenant = tenant_of(u)
        rows.append({
            **u,
            "budget": await blocking(led.get_budget, tenant),
            "usage": await blocking(led.usage, tenant, now),
            "limits": await blocking(state.get_cfg, led, state.user_limits_key(tenant), {}) or {},
            "keys": len(await blocking(led.list_api_keys, u["id"])),
        })
    return rows


async def _users_page(request: Request, error: str | None = None, status_code: int = 200, form: dict[str, Any] | None = None) -> Response:
    rows = await _user_rows(request.app.state.tl)
    return render(
        request, "admin_users.html", status_code=status_code, title="Users", users=rows, roles=ROLES,
        windows=state.WINDOWS, error=error, form=form or {},
    )


@router.get("/users")
async def users_page(request: Request) -> Response:
    return await _users_page(request)


@router.post("/users", dependencies=[Depends(require_csrf)])
async def create_user(
    request: Request,
    email: str = Form(""),
    password: str = Form(""),
    name: str = Form(""),
    role: str = Form("client"),
) -> Response:
    tl = request.app.state.tl
    email = email.strip().lower()
    problem = check_credentials(email, password)
    if role not in ROLES:
        problem = f"Role is one of {', '.join(ROLES)}."
    if problem is None and await blocking(tl.ledger.get_user_by_email, email):
        problem = "A user with this email already exists."
    if problem:
        return await _users_page(request, error=problem, status_code=400, form={"email": email, "name": name, "role": role})
    pw = await blocking(hash_password, password)
    await blocking(tl.ledger.create_user, email, password_hash=pw, role=role, name=name.strip()[:100] or None)
    await blocking(state.apply_default_budget, tl, email)  # a new user's tenant is their email
    flash(request, f"Created {email}.")
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{uid}", dependencies=[Depends(require_csrf)])
async def update_user(request: Request, uid: int = Path(ge=1, le=MAX_ID), user: dict[str, Any] = Depends(require_admin)) -> Response:
    tl = request.app.state.tl
    led = tl.ledger
    target = await blocking(led.get_user, uid)
    if target is None:
        raise HTTPException(status_code=404, detail="No such user.")
    form = await request.form()
    action = form.get("action")
    tenant = tenant_of(target)
    try:
        if action == "role":
            role = str(form.get("role", ""))
            if role not in ROLES:
                raise ValueError(f"Role is one of {', '.join(ROLES)}.")
            if uid == user["id"] and role != "admin":
                raise ValueError("You cannot remove your own admin role (ask another admin).")
            await blocking(led.update_user, uid, role=role)
            flash(request, f"{tenant} is now {role}.")
        elif action in ("disable", "enable"):
            if uid == user["id"]:
                raise ValueError("You cannot disable your own account.")
            await blocking(led.update_user, uid, disabled=(action == "disable"))
            flash(request, f"{tenant} {'disabled' if action == 'disable' else 'enabled'}.")
        elif action == "budget":
            window = str(form.get("window", "day"))
            if window not in state.WINDOWS:
                raise ValueError(f"The budget window is one of {', '.join(state.WINDOWS)}.")
            usd_text, tokens_text = str(form.get("limit_usd", "")).strip(), str(form.get("limit_tokens", ""))
            limit = state.parse_usd(usd_text, "Budget") if usd_text else None
            tokens = state.parse_limit(tokens_text, "Token budget")
            if limit is None and tokens is None:
                raise ValueError("Give a budget in USD, in tokens, or both.")
            await blocking(state.set_user_budget, tl, tenant, limit, window, tokens)
            await blocking(state.set_cfg, led, f"budget.tenant.{tenant}",
                           {"limit_pico_usd": limit, "limit_tokens": tokens, "window": window}, user["email"])
            flash(request, f"Budget for {tenant} set.")
        elif action == "team":
            org, team = _name(form.get("org"), "Organisation"), _name(form.get("team"), "Team")
            if team and not org:
                raise ValueError("A team belongs to an organisation: give both.")
            await blocking(led.update_user, uid, org=org, team=team)
            tl.identify_stage.forget_keys()  # the member's keys now carry the new team at once
            flash(request, f"{tenant} is in {team + ' / ' if team else ''}{org or 'no organisation'}.")
        elif action == "limits":
            limits = {f: state.parse_limit(str(form.get(f, "")), f.replace("_", " ")) for f in state.USER_LIMIT_FIELDS}
            await blocking(state.set_user_limits, tl, request.app.state.user_limits, tenant, limits, user["email"])
            flash(request, f"Limits for {tenant} saved.")
        else:
            raise ValueError("Unknown action.")
    except ValueError as e:
        return await _users_page(request, error=str(e), status_code=400)
    return RedirectResponse("/admin/users", status_code=303)


def _name(value: Any, what: str) -> str | None:
    """An organisation or team name from a form: letters, digits, space, . _ - (empty: none)."""
    text = str(value or "").strip()
    if not text:
        return None
    if len(text) > 60 or not all(ch.isalnum() or ch in " ._-" for ch in text):
        raise ValueError(f"{what}: up to 60 letters, digits, spaces, dots, dashes or underscores.")
    return text


# -- teams: the budget hierarchy (organisation → team → member → API key → end user) ---------------


async def _hierarchy(tl: Any) -> list[dict[str, Any]]:
    """Organisations with their teams, each team's members and each member's keys, with spend and
    budgets at every level (members without an organisation come last, under none)."""
    led = tl.ledger
    orgs: dict[str, dict[str, Any]] = {}
    for u in await blocking(led.list_users):
        u = public_user(u) or {}
        org_name = u.get("org") or ""
        org = orgs.setdefault(org_name, {"name": org_name, "teams": {},
                                         "usage": await blocking(tl.usage, f"org:{org_name}") if org_name else None})
        team_name = u.get("team") or ""
        if team_name not in org["teams"]:
            principal = f"team:{org_name}/{team_name}" if team_name else None
            org["teams"][team_name] = {"name": team_name, "principal": principal, "members": [],
                                       "usage": await blocking(tl.usage, principal) if principal else None}
        keys = []
        for k in await blocking(led.list_api_keys, u["id"]):
            if k.get("active"):
                keys.append({**k, "principal": f"apikey:{k['id']}", "usage": await blocking(tl.principal_report, f"apikey:{k['id']}")})
        tenant = tenant_of(u)
        org["teams"][team_name]["members"].append({**u, "tenant": tenant, "usage": await blocking(tl.usage, tenant), "keys": keys})
    ordered = sorted(orgs.values(), key=lambda o: (o["name"] == "", o["name"]))
    for o in ordered:
        o["teams"] = sorted(o["teams"].values(), key=lambda t: (t["name"] == "", t["name"]))
    return ordered


@router.get("/teams")
async def teams(request: Request) -> Response:
    return await teams_page(request)


async def teams_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    # Not the route itself: as a route, `error` and `status_code` would be query parameters a
    # caller could set (schemathesis sent ?status_code=100000).
    orgs = await _hierarchy(request.app.state.tl)
    return render(request, "admin_teams.html", status_code=status_code, title="Teams", orgs=orgs,
                  windows=state.WINDOWS, error=error)


_PRINCIPAL = {"org": "org:", "team": "team:", "tenant": "", "key": "apikey:"}


@router.post("/budgets", dependencies=[Depends(require_csrf)])
async def set_budget(request: Request, user: dict[str, Any] = Depends(require_admin), principal: str = Form(...),
                     limit_usd: str = Form(""), limit_tokens: str = Form(""), window: str = Form("day")) -> Response:
    """A budget at any level: an organisation, a team, a member or an API key, in USD, in tokens
    (prompt + output) or both over one window (both empty: removed)."""
    tl = request.app.state.tl
    try:
        if window not in state.WINDOWS:
            raise ValueError(f"The budget window is one of {', '.join(state.WINDOWS)}.")
        known = {p for o in await _hierarchy(tl) for p in _principals_of(o)}
        if principal not in known:
            raise ValueError(f"No organisation, team, member or key named {principal!r}.")
        limit = state.parse_usd(limit_usd, "Budget") if limit_usd.strip() else None
        tokens = state.parse_limit(limit_tokens, "Token budget")
        await blocking(state.set_user_budget, tl, principal, limit, window, tokens)
        await blocking(state.set_cfg, tl.ledger, f"budget.principal.{principal}",
                       {"limit_pico_usd": limit, "limit_tokens": tokens, "window": window}, user["email"])
    except ValueError as e:
        return await teams_page(request, error=str(e), status_code=400)
    flash(request, f"Budget for {principal} {'removed' if limit is None and tokens is None else 'set'}.")
    return RedirectResponse("/admin/teams", status_code=303)


def _principals_of(org: dict[str, Any]) -> list[str]:
    out = [f"org:{org['name']}"] if org["name"] else []
    for team in org["teams"]:
        if team["principal"]:
            out.append(team["principal"])
        for m in team["members"]:
            out.append(m["tenant"])
            out.extend(k["principal"] for k in m["keys"])
    return out


# -- scheduler -------------------------------------------------------------------------------------------


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    """A snapshot entry with the names the page and its JSON use (p90 cost in pico-USD, deadline)."""
    out = dict(e)
    out.setdefault("cost_p90", e.get("cost_p90_pico_usd", e.get("cost")))
    out.setdefault("deadline_s", e.get("deadline"))
    return out


async def scheduler_view(tl: Any) -> dict[str, Any]:
    """The scheduler's lists; with several replicas (TOKENLANE_STATE) every replica's requests, each
    entry naming its ``replica`` (only this replica's can be dispatched or rejected from here), and
    the jobs waiting in the shared deferred lane (``shared_deferred``)."""
    now = time.time()
    snap = tl.scheduler.snapshot(now)
    lanes = await tl.queue_view()
    return {
        "queue": [_entry(e) for e in lanes["queue"]],
        "deferred": [_entry(e) for e in lanes["deferred"]],
        "running": [_entry(e) for e in lanes["running"]],
        "shared_deferred": lanes["shared_deferred"],
        "replica": lanes["replica"],
        "replicas": lanes["replicas"],
        "counters": snap.get("counters") or {},
        "policy": snap.get("policy", tl.scheduler.policy),
        "paused": bool(snap.get("paused", tl.scheduler.paused)),
        "now": now,
    }


@router.get("/scheduler")
async def scheduler_page(request: Request) -> Response:
    view = await scheduler_view(request.app.state.tl)
    return render(request, "admin_scheduler.html", title="Scheduler", view=view, policies=state.POLICIES, batch_default=BATCH_DEFAULT)


async def _process(tl: Any, how: str, count: int, ids: list[str]) -> tuple[int, int]:
    """Dispatches by hand: the listed ids, or the first one / `count` / all in scheduling order."""
    view = await scheduler_view(tl)
    order = [r["id"] for r in view["queue"]] + [r["id"] for r in view["deferred"]]
    if how == "ids":
        chosen = [i for i in ids if i in order]
    elif how == "one":
        chosen = order[:1]
    elif how == "batch":
        chosen = order[: max(1, min(count, 1000))]
    elif how == "all":
        chosen = order
    else:
        raise HTTPException(status_code=400, detail="Process 'one', 'batch', 'all' or listed ids.")
    done = 0
    for rid in chosen:
        if await tl.dispatch(rid):
            done += 1
    return done, len(chosen)


@router.post("/scheduler/process", dependencies=[Depends(require_csrf)])
async def process(request: Request) -> Response:
    form = await request.form()
    how = str(form.get("how", "one"))
    try:
        count = int(str(form.get("count") or BATCH_DEFAULT))
    except ValueError:
        count = BATCH_DEFAULT
    done, asked = await _process(request.app.state.tl, how, count, [str(i) for i in form.getlist("id")])
    flash(request, f"Dispatched {done} of {asked} request(s)." if asked else "Nothing is waiting.")
    return RedirectResponse("/admin/scheduler", status_code=303)


@router.post("/scheduler/reject", dependencies=[Depends(require_csrf)])
async def reject(request: Request, id: str = Form(...)) -> Response:
    ok = await request.app.state.tl.reject(id)
    flash(request, f"Rejected {id}." if ok else f"{id} was no longer waiting.", "ok" if ok else "warn")
    return RedirectResponse("/admin/scheduler", status_code=303)


@router.post("/scheduler/mode", dependencies=[Depends(require_csrf)])
async def scheduler_mode(request: Request, user: dict[str, Any] = Depends(require_admin), mode: str = Form(...)) -> Response:
    await _set_mode(request, user, mode)
    return RedirectResponse("/admin/scheduler", status_code=303)


# -- JSON API (the pages poll it; scripts may call it with a session cookie and X-CSRF-Token) ------------


@router.get("/api/overview")
async def api_overview(request: Request) -> dict[str, Any]:
    return await overview(request.app.state.tl)


@router.get("/api/scheduler")
async def api_scheduler(request: Request) -> dict[str, Any]:
    return await scheduler_view(request.app.state.tl)


@router.get("/api/users")
async def api_users(request: Request) -> dict[str, Any]:
    return {"users": await _user_rows(request.app.state.tl)}


async def _json_object(request: Request) -> dict[str, Any]:
    """The JSON object a JSON API route was sent; 400 for anything else (a form, bad JSON)."""
    if "json" not in request.headers.get("content-type", ""):
        raise HTTPException(status_code=400, detail="Send a JSON object (Content-Type: application/json).")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(status_code=400, detail="Send a JSON object.")
    return body


@router.post("/api/scheduler/process", dependencies=[Depends(require_csrf)])
async def api_process(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    count, ids = body.get("count") or BATCH_DEFAULT, body.get("ids") or []
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or not isinstance(ids, list):
        raise HTTPException(status_code=400, detail="Send {\"how\": ..., \"count\": a positive integer, \"ids\": [...]}.")
    done, asked = await _process(request.app.state.tl, str(body.get("how", "one")), count, [str(i) for i in ids])
    return {"dispatched": done, "asked": asked}


@router.post("/api/scheduler/reject", dependencies=[Depends(require_csrf)])
async def api_reject(request: Request) -> dict[str, Any]:
    body = await _json_object(request)
    rid = str(body.get("id", ""))
    if not rid:
        raise HTTPException(status_code=400, detail="Send {\"id\": ...}.")
    return {"rejected": bool(await request.app.state.tl.reject(rid))}
