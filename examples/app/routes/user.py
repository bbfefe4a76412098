"""The user's screens: /dashboard, /requests (submit and history), /keys."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response

from ..jobs import STATUSES, FormError, job_json, load_job, parse_day, submit_prompt, validate_submission
from ..limits import refusal_message
from ..security import MAX_ID, blocking, require_csrf, require_user, tenant_of
from ..state import PRIORITIES
from ..web import flash, render

router = APIRouter(dependencies=[Depends(require_user)])

PAGE_SIZE = 25


@router.get("/dashboard")
async def dashboard(request: Request, user: dict[str, Any] = Depends(require_user)) -> Response:
    led = request.app.state.tl.ledger
    tenant = tenant_of(user)
    now = time.time()
    counts = await blocking(led.status_counts, tenant=tenant)
    usage = await blocking(led.usage, tenant, now)
    recent = await blocking(led.list_requests, tenant=tenant, limit=8)
    days = await blocking(led.report_by_day, since=now - 30 * 86400, tenant=tenant)
    # The banner: the latest budget alert of the current window, if any.
    alerts = await blocking(request.app.state.tl.alerts, tenant, usage.get("window_start"), 1)
    totals = {"input_tokens": 0, "output_tokens": 0, "cost_pico_usd": 0, "requests": 0}
    for row in days:
        for k in totals:
            totals[k] += int(row.get(k) or 0)
    return render(
        request, "dashboard.html", title="Dashboard",
        counts=counts, usage=usage, recent=recent, totals=totals, alert=alerts[0] if alerts else None,
    )


@router.get("/requests")
async def requests_page(
    request: Request,
    user: dict[str, Any] = Depends(require_user),
    status: str = "",
    model: str = "",
    since: str = "",
    until: str = "",
    page: int = 1,
) -> Response:
    return await _requests_page(request, user, status=status, model=model, since=since, until=until, page=page)


async def _requests_page(
    request: Request, user: dict[str, Any], status: str = "", model: str = "", since: str = "", until: str = "",
    page: int = 1, form: dict[str, Any] | None = None, error: str | None = None, status_code: int = 200,
) -> Response:
    led = request.app.state.tl.ledger
    settings = request.app.state.settings
    filters = {"status": status if status in STATUSES else "", "model": model.strip(), "since": since, "until": until}
    page = min(max(1, page), MAX_ID // (PAGE_SIZE + 1))  # the ledger's offset is a 64-bit integer
    try:
        since_ts, until_ts = parse_day(since), parse_day(until, end=True)
    except FormError as e:
        error, since_ts, until_ts = str(e), None, None
    rows = await blocking(
        led.list_requests,
        tenant=tenant_of(user),
        status=filters["status"] or None,
        model=filters["model"] or None,
        since=since_ts,
        until=until_ts,
        limit=PAGE_SIZE + 1,
        offset=(page - 1) * PAGE_SIZE,
    )
    return render(
        request, "requests.html", status_code=status_code, title="Requests",
        rows=rows[:PAGE_SIZE], has_next=len(rows) > PAGE_SIZE, page=page, filters=filters,
        statuses=STATUSES, models=settings.models, priorities=PRIORITIES,
        form=form or {"model": settings.models[0], "priority": "standard"}, error=error,
    )


@router.post("/requests", dependencies=[Depends(require_csrf)])
async def submit(
    request: Request,
    user: dict[str, Any] = Depends(require_user),
    prompt: str = Form(""),
    model: str = Form(""),
    priority: str = Form("standard"),
    deadline_s: str = Form(""),
    max_tokens: str = Form(""),
) -> Response:
    tl = request.app.state.tl
    raw = {"prompt": prompt, "model": model, "priority": priority, "deadline_s": deadline_s, "max_tokens": max_tokens}
    try:
        form = validate_submission(tl.pricing, request.app.state.settings.models, prompt, model, priority, deadline_s, max_tokens)
    except FormError as e:
        return await _requests_page(request, user, form=raw, error=str(e), status_code=400)
    limits = request.app.state.user_limits
    over = limits.take(tenant_of(user))
    if over is not None:
        which, retry = over
        message = refusal_message(tenant_of(user), which, limits.limits(tenant_of(user))[which], retry)
        return await _requests_page(request, user, form=raw, error=message, status_code=429)
    job = await submit_prompt(tl, user, form)
    decision = job.get("decision")
    if decision == "reject":
        flash(request, f"Refused: {job.get('message') or job.get('reason')}", "bad")
    elif decision == "queue":
        ahead = job.get("position")
        flash(request, "Queued" + (f": {ahead} request(s) ahead." if ahead is not None else "."), "warn")
    elif decision == "defer":
        flash(request, "Deferred: it will run when capacity or budget frees up.", "warn")
    else:
        flash(request, "Admitted.", "ok")
    return RedirectResponse(f"/requests/{job['id']}", status_code=303)


@router.get("/requests/{request_id}")
async def request_detail(request: Request, request_id: str, user: dict[str, Any] = Depends(require_user)) -> Response:
    job = await load_job(request.app.state.tl, request_id, user)
    if job is None:
        raise HTTPException(status_code=404, detail="No such request.")
    return render(request, "request_detail.html", title=f"Request {request_id}", job=job, live=job_json(job))


@router.get("/keys")
async def keys_page(request: Request, user: dict[str, Any] = Depends(require_user)) -> Response:
    return await _keys_page(request, user)


async def _keys_page(request: Request, user: dict[str, Any], new_key: str | None = None, error: str | None = None) -> Response:
    tl = request.app.state.tl
    keys = await blocking(tl.ledger.list_api_keys, user["id"])
    for k in keys:  # each key is a level of the hierarchy: its spend, budget and end users
        k["usage"] = await blocking(tl.principal_report, f"apikey:{k['id']}")
    base_url = str(request.base_url).rstrip("/") + "/v1"
    return render(request, "keys.html", title="API keys", keys=keys, new_key=new_key, error=error, base_url=base_url)


@router.post("/keys", dependencies=[Depends(require_csrf)])
async def create_key(request: Request, user: dict[str, Any] = Depends(require_user), name: str = Form("")) -> Response:
    name = name.strip()[:64] or "default"
    _key_id, plaintext = await blocking(request.app.state.tl.ledger.create_api_key, user["id"], name=name)
    # Rendered in this response only; never stored in plain text, never shown again.
    response = await _keys_page(request, user, new_key=plaintext)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/keys/{key_id}/revoke", dependencies=[Depends(require_csrf)])
async def revoke_key(request: Request, key_id: int = Path(ge=1, le=MAX_ID), user: dict[str, Any] = Depends(require_user)) -> Response:
    ok = await blocking(request.app.state.tl.ledger.revoke_api_key, key_id, user_id=user["id"])
    if not ok:
        raise HTTPException(status_code=404, detail="No such key.")
    flash(request, "Key revoked: requests using it are refused from now on.")
    return RedirectResponse("/keys", status_code=303)
