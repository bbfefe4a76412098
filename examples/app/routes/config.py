"""/config: prices per model, limits, the default budget and the policy. Everyone reads; admins edit.
Every change is validated, written with its author to the ledger's config history, and applied."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from .. import state
from ..security import blocking, require_admin, require_csrf, require_user
from ..web import flash, render

router = APIRouter()


def model_rows(tl: Any, models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        if m not in tl.pricing:
            continue
        e = tl.pricing.entry(m)
        p = e["per_mtok"]
        rows.append({
            "model": m, "key": e["key"], "provider": e["provider"],
            "input": p.get("input"), "cached_input": p.get("cached_input"), "output": p.get("output"),
            "max_input_tokens": e["max_input_tokens"], "max_output_tokens": e["max_output_tokens"],
            "source": e["source"], "as_of": e["as_of"],
        })
    return rows


async def _page(request: Request, user: dict[str, Any], error: str | None = None, status_code: int = 200) -> Response:
    tl = request.app.state.tl
    led = tl.ledger
    limits = await blocking(state.get_cfg, led, state.K_LIMITS, {}) or {}
    budget = await blocking(state.get_cfg, led, state.K_DEFAULT_BUDGET, {}) or {}
    history = await blocking(led.config_history, 30) if user.get("role") == "admin" else []
    return render(
        request, "config.html", status_code=status_code, title="Configuration",
        prices=model_rows(tl, request.app.state.settings.models), limits=limits, limit_fields=state.LIMIT_FIELDS,
        limit_labels=state.LIMIT_LABELS, in_force={f: getattr(getattr(tl, "settings", None), f, None) for f in state.LIMIT_FIELDS},
        budget=budget, windows=state.WINDOWS, policy=tl.scheduler.policy, policies=state.POLICIES,
        levers=await blocking(state.get_cfg, led, state.K_LEVERS, {}) or {},
        levers_in_force={f: getattr(tl.settings, f) for f in state.LEVER_FIELDS},
        history=history, editable=user.get("role") == "admin", error=error,
        routing_json=state.routing_json(await blocking(state.get_cfg, led, state.K_ROUTING)),
    )


@router.get("/config")
async def config_page(request: Request, user: dict[str, Any] = Depends(require_user)) -> Response:
    return await _page(request, user)


@router.post("/config", dependencies=[Depends(require_csrf)])
async def config_save(request: Request, user: dict[str, Any] = Depends(require_admin)) -> Response:
    tl = request.app.state.tl
    led = tl.ledger
    form = await request.form()
    actor = user["email"]
    section = form.get("section")
    try:
        if section == "policy":
            policy = str(form.get("policy", ""))
            if policy not in state.POLICIES:
                raise ValueError(f"Unknown policy {policy!r}; choose one of {', '.join(state.POLICIES)}.")
            tl.set_policy(policy)
            await blocking(state.set_cfg, led, state.K_POLICY, policy, actor)
        elif section == "limits":
            limits = {
                f: state.parse_limit(str(form.get(f, "")), state.LIMIT_LABELS[f], allow_float=(f == "max_wait_s"))
                for f in state.LIMIT_FIELDS
            }
            await blocking(state.set_cfg, led, state.K_LIMITS, limits, actor)
        elif section == "budget":
            window = str(form.get("window", "day"))
            if window not in state.WINDOWS:
                raise ValueError(f"The budget window is one of {', '.join(state.WINDOWS)}.")
            amount = str(form.get("limit_usd", "")).strip()
            value = {"limit_pico_usd": state.parse_usd(amount, "Default budget") if amount else None,
                     "limit_tokens": state.parse_limit(str(form.get("limit_tokens", "")), "Default token budget"),
                     "window": window}
            await blocking(state.set_cfg, led, state.K_DEFAULT_BUDGET, value, actor)
        elif section == "levers":
            await blocking(state.set_cfg, led, state.K_LEVERS, state.parse_levers(form), actor)
        elif section == "pricing":
            model = str(form.get("model", ""))
            if model not in request.app.state.settings.models or model not in tl.pricing:
                raise ValueError(f"Unknown model {model!r}.")
            patch = {}
            for field in ("input", "output", "cached_input"):
                text = str(form.get(field, "")).strip()
                if text:
                    pico = state.parse_usd(text, f"{field.replace('_', ' ')} price")
                    patch[f"{field}_per_mtok"] = str(state.Decimal(pico) / state.PICO_PER_USD)
            if not patch:
                raise ValueError("Enter at least one price (USD per million tokens).")
            overrides = await blocking(state.get_cfg, led, state.K_PRICING, {}) or {}
            overrides.setdefault("models", {}).setdefault(tl.pricing.resolve(model), {}).update(patch)
            state.apply_pricing(tl, overrides)  # raises on a price the table refuses, before anything is saved
            await blocking(state.set_cfg, led, state.K_PRICING, overrides, actor)
        elif section == "routing":
            value = state.parse_routing(str(form.get("routing", "")))
            tl.set_routing(value["routes"], value["model_groups"])  # refuses a bad rule before it is saved
            await blocking(state.set_cfg, led, state.K_ROUTING, value, actor)
        else:
            raise ValueError("Unknown settings section.")
    except ValueError as e:
        return await _page(request, user, error=str(e), status_code=400)
    flash(request, "Saved. The change is recorded in the history below.")
    return RedirectResponse("/config", status_code=303)
