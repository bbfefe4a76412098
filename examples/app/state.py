"""Settings an admin changes at run time: stored in the ledger's config (with history), applied to the
runtime. The ledger stores values as JSON and keeps every change (old, new, who, when)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

POLICIES = ("default", "fifo", "cost_priority", "deadline", "fair")
PRIORITIES = ("interactive", "standard", "batch")
WINDOWS = ("hour", "day", "month", "total")
LIMIT_FIELDS = ("max_concurrency", "tenant_max_concurrency", "tpm", "rpm", "tenant_tpm", "tenant_rpm", "max_queue", "max_wait_s")
LIMIT_LABELS = {
    "max_concurrency": "Requests at once",
    "tenant_max_concurrency": "At once, per user",
    "tpm": "Tokens / minute",
    "rpm": "Requests / minute",
    "tenant_tpm": "Tokens / min, per user",
    "tenant_rpm": "Requests / min, per user",
    "max_queue": "Queue length",
    "max_wait_s": "Max wait (seconds)",
}
USER_LIMIT_FIELDS = ("rpm", "rpd")
PICO_PER_USD = 10**12

# config keys
K_POLICY = "policy"
K_LIMITS = "limits"
K_DEFAULT_BUDGET = "budget.default"
K_PRICING = "pricing.overrides"
K_MODE = "dispatch.mode"
K_ROUTING = "routing"
K_LEVERS = "levers"  # response cache and tier caps (docs/caching.md), applied at restart
LEVER_FIELDS = ("cache", "cache_ttl_s", "semantic_threshold", "tier_caps", "default_tier")


def user_limits_key(tenant: str) -> str:
    return f"limits.tenant.{tenant}"


def get_cfg(led: Any, key: str, default: Any = None) -> Any:
    return led.get_config(key, default)


def set_cfg(led: Any, key: str, value: Any, actor: str | None) -> None:
    led.set_config(key, value, actor=actor)


def parse_usd(text: str, what: str) -> int:
    """A dollar amount typed into a form, as exact pico-dollars."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{what}: {text!r} is not an amount in dollars (e.g. 5 or 0.25).") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a positive amount in dollars.")
    if value > 1_000_000:
        raise ValueError(f"{what} is over the $1,000,000 this app accepts.")
    return int(value * PICO_PER_USD)


def parse_limit(text: str | None, what: str, allow_float: bool = False) -> int | float | None:
    """An optional non-negative limit; empty means unlimited."""
    if text is None or text.strip() == "":
        return None
    try:
        value: int | float = float(text) if allow_float else int(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a whole number.") from None
    if value <= 0:
        raise ValueError(f"{what} must be greater than 0 (leave it empty for no limit).")
    if value > 10**12:
        raise ValueError(f"{what} is too large.")
    return value


def apply_saved_settings(tl: Any) -> None:
    """At start-up: the policy, dispatch mode and budgets saved by admins take effect again."""
    led, sched = tl.ledger, tl.scheduler
    policy = get_cfg(led, K_POLICY)
    if policy in POLICIES and policy != sched.policy:
        tl.set_policy(policy)
    if get_cfg(led, K_MODE) == "manual":
        tl.pause()
    overrides = get_cfg(led, K_PRICING)
    if overrides:
        apply_pricing(tl, overrides)
    routing = get_cfg(led, K_ROUTING)
    if routing:
        tl.set_routing(routing.get("routes", []), routing.get("model_groups", {}))
    # Budgets need nothing here: the runtime loads a tenant's budget from the ledger on its first request.


def runtime_kwargs(led: Any) -> dict[str, Any]:
    """Settings saved on /config that the runtime takes at construction: the limits and the
    default budget (given to every tenant that has none yet)."""
    out: dict[str, Any] = {k: v for k, v in (get_cfg(led, K_LIMITS) or {}).items() if k in LIMIT_FIELDS and v is not None}
    budget = get_cfg(led, K_DEFAULT_BUDGET) or {}
    if budget.get("limit_pico_usd") is not None:
        out["budget_usd"] = Decimal(int(budget["limit_pico_usd"])) / PICO_PER_USD
    if budget.get("limit_tokens") is not None:
        out["budget_tokens"] = int(budget["limit_tokens"])
    if "budget_usd" in out or "budget_tokens" in out:
        out["budget_window"] = budget.get("window", "day")
    policy = get_cfg(led, K_POLICY)
    if policy in POLICIES:
        out["policy"] = policy
    out.update({k: v for k, v in (get_cfg(led, K_LEVERS) or {}).items() if k in LEVER_FIELDS and v not in (None, {}, "")})
    return out


def parse_routing(text: str) -> dict[str, Any]:
    """The routing box of /config: JSON with ``routes`` (a list of rules) and ``model_groups``."""
    import json

    if not text.strip():
        return {"routes": [], "model_groups": {}}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"Routing: not valid JSON ({e}).") from None
    if not isinstance(value, dict) or set(value) - {"routes", "model_groups"}:
        raise ValueError("Routing: a JSON object with 'routes' (a list of rules) and 'model_groups'.")
    return {"routes": value.get("routes") or [], "model_groups": value.get("model_groups") or {}}


def routing_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2) if value and (value.get("routes") or value.get("model_groups")) else ""


def parse_levers(form: Any) -> dict[str, Any]:
    """The cost-lever form, validated by tokenlane's own settings loader (ConfigError is a ValueError)."""
    import json

    from tokenlane.config import load_settings

    caps_text = str(form.get("tier_caps", "")).strip()
    try:
        caps = json.loads(caps_text) if caps_text else {}
    except ValueError as e:
        raise ValueError(f"Tier caps must be JSON such as {{\"free\": {{\"max_output_tokens\": 500}}}}: {e}") from None
    levers = {"cache": str(form.get("cache", "off")), "cache_ttl_s": str(form.get("cache_ttl_s", "")).strip() or None,
              "semantic_threshold": str(form.get("semantic_threshold", "")).strip() or None, "tier_caps": caps,
              "default_tier": str(form.get("default_tier", "")).strip() or None}
    settings = load_settings(environ={}, **{k: v for k, v in levers.items() if v not in (None, {})})
    return {k: getattr(settings, k) for k in LEVER_FIELDS if levers.get(k) not in (None, {})}


def apply_pricing(tl: Any, overrides: dict[str, Any]) -> None:
    tl.pricing = type(tl.pricing).default().with_overrides(overrides)


def set_user_budget(tl: Any, tenant: str, limit_pico_usd: int | None, window: str,
                    limit_tokens: int | None = None) -> None:
    """Both sides at once: the ledger (shared by worker processes) and this process's scheduler.
    A budget is a USD limit, a token limit (prompt + output tokens), or both, over one window."""
    tl.set_budget(tenant, None if limit_pico_usd is None else Decimal(limit_pico_usd) / PICO_PER_USD, window,
                  limit_tokens=limit_tokens)


def apply_default_budget(tl: Any, tenant: str) -> None:
    """A new user starts with the default budget an admin configured, if any."""
    budget = get_cfg(tl.ledger, K_DEFAULT_BUDGET) or {}
    usd, tokens = budget.get("limit_pico_usd"), budget.get("limit_tokens")
    if usd is not None or tokens is not None:
        set_user_budget(tl, tenant, None if usd is None else int(usd), budget.get("window", "day"),
                        None if tokens is None else int(tokens))


def set_user_limits(tl: Any, user_limits: Any, tenant: str, limits: dict[str, Any], actor: str | None) -> None:
    set_cfg(tl.ledger, user_limits_key(tenant), limits, actor)
    user_limits.configure(tenant, limits)
