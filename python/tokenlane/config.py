"""Settings of the middleware: keyword arguments, ``TOKENLANE_*`` environment variables, a TOML file.

Precedence: keyword arguments, then the environment, then the file (``config=`` or
``TOKENLANE_CONFIG``; its ``[tokenlane]`` table, or the top level), then the defaults below. Every
value is validated at start-up; a bad one raises :class:`ConfigError` naming where it came from.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

POLICIES = ("default", "fifo", "cost_priority", "deadline", "fair")
WINDOWS = ("hour", "day", "month", "total")
PRIORITIES = ("interactive", "standard", "batch")
CACHE_MODES = ("off", "exact", "semantic")
# What a route may set in `route_settings` (its path regex -> these), over the global settings.
ROUTE_OPTIONS = ("cache", "cache_ttl_s", "semantic_threshold", "cache_shared", "cache_any_temperature", "trim")


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting, its source and what is expected."""


@dataclass
class Settings:
    db: str = "tokenlane.db"                    # SQLite path, sqlite:/// or postgresql:// URL
    state: str | None = None                    # redis:// URL: state shared by replicas (None: this process)
    state_failure: str = "closed"               # Redis unreachable: "closed" (503) or "local" (1/N of each limit)
    state_replicas: int = 1                     # N, for state_failure="local"
    state_lease_s: float = 15.0                 # slots and reservations of a dead replica return after this
    reclaim_interval_s: float = 10.0            # how often a worker frees dead workers' holds and rows (SQLite)
    policy: str = "default"
    budget_usd: Decimal | None = None           # default budget of every tenant
    end_user_budget_usd: Decimal | None = None  # default budget of every end user (inside its key's)
    budget_window: str = "day"
    budget_reserve: str = "max"                 # what the ledger reserves: "max" (a hard cap) or the "p90" cost
    tenant_budgets_usd: dict[str, Decimal] = field(default_factory=dict)
    # Token budgets (input + output tokens, same window as USD): the same three, optional.
    budget_tokens: int | None = None
    end_user_budget_tokens: int | None = None
    tenant_budgets_tokens: dict[str, int] = field(default_factory=dict)
    max_concurrency: int | None = None
    tenant_max_concurrency: int | None = None
    tpm: int | None = None
    rpm: int | None = None
    tenant_tpm: int | None = None
    tenant_rpm: int | None = None
    max_queue: int | None = 10_000
    max_wait_s: float | None = 120.0
    shutdown_grace_s: float = 10.0              # at shutdown: how long requests in flight may still finish
    max_body_bytes: int = 8 * 1024 * 1024
    max_input_tokens: int | None = None         # per-request prompt cap (413 above it)
    pricing: str | None = None                  # a LiteLLM price file or tokenlane config
    default_priority: str = "standard"
    tenant_priorities: dict[str, str] = field(default_factory=dict)
    trust_user_field: bool = True               # the body's `user` names the end user (inside the payer)
    require_api_key: bool = False               # refuse requests without a key the ledger knows
    redact_prompts: bool = True                 # keep prompts out of logs and the ledger
    metrics: bool = True                        # serve GET /metrics
    metrics_access: str = "public"              # who may read it: "public", or "admin" (an admin's API key)
    usage_access: str = "own"                   # GET /tokenlane/usage and /report: "own", "admin" or "off"
    gc_freeze: bool = True                      # at the first request, gc.freeze() the startup heap (shorter full GCs)
    alert_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])  # budget fractions; [] = off
    alert_forecast: bool = True                 # also alert when the burn rate will exhaust a budget early
    alert_webhook: str | None = None            # POST each alert here (JSON, HMAC-signed with the secret)
    alert_webhook_secret: str | None = None
    anomalies: bool = False                     # spend / tokens / rate anomaly detectors after reconcile
    otel: bool = False                          # OpenTelemetry spans and GenAI metrics (tokenlane[otel])
    route_prefix: str = "/tokenlane"
    # Routing (docs/routing.md): rules that pick the served model, groups such as "auto", a learned
    # difficulty model (JSON from DifficultyModel.to_dict), several upstreams and fallback chains.
    routes: list[dict[str, Any]] = field(default_factory=list)
    model_groups: dict[str, list[str]] = field(default_factory=dict)
    difficulty_model: str | None = None
    upstreams: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    # response cache (docs/caching.md)
    cache: str = "off"                          # off | exact | semantic (exact first, then semantic)
    cache_ttl_s: float = 3600.0
    semantic_threshold: float = 0.98            # cosine similarity; chosen by benchmarks/semantic_cache.py
    cache_namespace: str = "1"                  # bump to invalidate every entry (e.g. a new prompt template)
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 256 * 1024 * 1024
    cache_embeddings_url: str | None = None     # an OpenAI-compatible /v1 base URL: embed there (default: WordLlama, offline)
    cache_embeddings_model: str = "text-embedding-3-small"
    cache_embeddings_key: str | None = None     # its API key (env TOKENLANE_CACHE_EMBEDDINGS_KEY)
    # tier caps: tier -> {"max_input_tokens": n, "max_output_tokens": m}; the tier is taken like the
    # priority: header X-Tokenlane-Tier, the tenant's default, default_tier
    tier_caps: dict[str, dict[str, int]] = field(default_factory=dict)
    tenant_tiers: dict[str, str] = field(default_factory=dict)
    default_tier: str | None = None
    route_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    predict_prompt_cache: bool = True           # price a recently sent long prefix at the cached rate

    def __post_init__(self) -> None:
        for name, tier in [*self.tenant_tiers.items(), ("default_tier", self.default_tier)]:
            if tier is not None and tier not in self.tier_caps:
                raise ConfigError(f"tier {tier!r} of {name} has no entry in tier_caps "
                                  f"(known: {', '.join(sorted(self.tier_caps)) or 'none'})")


_INT = {"max_concurrency", "tenant_max_concurrency", "tpm", "rpm", "tenant_tpm", "tenant_rpm",
        "max_queue", "max_body_bytes", "max_input_tokens", "cache_max_entries", "cache_max_bytes", "state_replicas",
        "budget_tokens", "end_user_budget_tokens"}
_FLOAT = {"max_wait_s", "cache_ttl_s", "state_lease_s", "shutdown_grace_s", "reclaim_interval_s"}
_MONEY = {"budget_usd", "end_user_budget_usd"}
_BOOL = {"trust_user_field", "require_api_key", "redact_prompts", "metrics", "alert_forecast", "anomalies", "otel",
         "predict_prompt_cache", "gc_freeze"}
_MAPS = {"tenant_budgets_usd", "tenant_budgets_tokens", "tenant_priorities", "tier_caps", "tenant_tiers", "route_settings", "routes", "model_groups",
         "upstreams", "fallbacks"}


def _coerce(name: str, value: Any, source: str) -> Any:
    where = f"{name} (from {source})"
    if value is None:
        return None
    if name in _INT:
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number <= 0 or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
        return number
    if name in _FLOAT:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a positive number of seconds, got {value!r}") from None
        if not number > 0:
            raise ConfigError(f"{where}: expected a positive number of seconds, got {value!r}")
        return number
    if name in _MONEY:
        return _money(where, value)
    if name in _BOOL:
        return _bool(where, value)
    if name == "tenant_budgets_usd":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of tenant = USD amount")
        return {str(k): _money(f"{where}[{k}]", v) for k, v in value.items()}
    if name == "tenant_budgets_tokens":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of tenant = tokens")
        return {str(k): _coerce("budget_tokens", v, f"{source}, {name}[{k}]") for k, v in value.items()}
    if name == "tenant_priorities":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of tenant = priority")
        return {str(k): _choice(f"{where}[{k}]", v, PRIORITIES) for k, v in value.items()}
    if name == "routes":
        from .routing import RoutingError, parse_rule

        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of rules ([[routes]] tables)")
        try:
            for i, rule in enumerate(value):
                parse_rule(rule, i)
        except RoutingError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return [dict(rule) for rule in value]
    if name == "upstreams":
        if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
            raise ConfigError(f"{where}: expected a list of upstream tables ([[upstreams]])")
        return [dict(u) for u in value]
    if name in ("model_groups", "fallbacks"):
        if not isinstance(value, dict) or not all(
                isinstance(v, list) and v and all(isinstance(m, str) and m for m in v) for v in value.values()):
            raise ConfigError(f"{where}: expected a table of name = [model, ...]")
        return {str(k): list(v) for k, v in value.items()}
    if name == "tier_caps":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of tier = {{max_input_tokens, max_output_tokens}}")
        return {str(tier): _tier_cap(f"{where}[{tier}]", cap) for tier, cap in value.items()}
    if name == "tenant_tiers":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of tenant = tier")
        return {str(k): _coerce("default_tier", v, source) for k, v in value.items()}
    if name == "route_settings":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of route regex = {{{', '.join(ROUTE_OPTIONS)}}}")
        return {str(k): _route_options(f"{where}[{k}]", k, v, source) for k, v in value.items()}
    if name == "cache":
        return _choice(where, value, CACHE_MODES)
    if name == "semantic_threshold":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if not 0 < number <= 1:
            raise ConfigError(f"{where}: expected a cosine similarity in (0, 1], got {value!r}")
        return number
    if name == "alert_thresholds":
        return _fractions(where, value)
    if name == "alert_webhook" and not str(value).startswith(("http://", "https://")):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    if name == "policy":
        return _choice(where, value, POLICIES)
    if name == "budget_window":
        return _choice(where, value, WINDOWS)
    if name == "state_failure":
        return _choice(where, value, ("closed", "local"))
    if name == "state" and not str(value).startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{where}: expected a redis://host:port/db URL, got {value!r}")
    if name == "metrics_access":
        return _choice(where, value, ("public", "admin"))
    if name == "usage_access":
        return _choice(where, value, ("own", "admin", "off"))
    if name == "budget_reserve":
        return _choice(where, value, ("p90", "max"))
    if name == "default_priority":
        return _choice(where, value, PRIORITIES)
    if name == "default_tier" and isinstance(value, str) and value:
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _tier_cap(where: str, cap: Any) -> dict[str, int]:
    allowed = ("max_input_tokens", "max_output_tokens")
    if not isinstance(cap, dict) or not cap or set(cap) - set(allowed):
        raise ConfigError(f"{where}: expected a table with {' and/or '.join(allowed)}, got {cap!r}")
    return {k: _coerce("max_input_tokens", v, where) for k, v in cap.items()}


def _route_options(where: str, pattern: Any, options: Any, source: str) -> dict[str, Any]:
    try:
        re.compile(str(pattern))
    except re.error as exc:
        raise ConfigError(f"{where}: not a valid regular expression: {exc}") from None
    if not isinstance(options, dict) or set(options) - set(ROUTE_OPTIONS):
        raise ConfigError(f"{where}: expected a table of {', '.join(ROUTE_OPTIONS)}, got {options!r}")
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k in ("cache_shared", "cache_any_temperature", "trim"):
            out[k] = _bool(f"{where}.{k}", v)
        else:
            out[k] = _coerce(k, v, source)
    return out


def _money(where: str, value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where}: expected an amount in USD such as 5 or 0.25, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: expected an amount in USD >= 0, got {value!r}")
    return amount


def _fractions(where: str, value: Any) -> list[float]:
    """Budget fractions: a list, or a comma-separated string (the environment); 0.8 = 80 %."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of budget fractions such as [0.5, 0.8, 1.0], got {value!r}")
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(item, bool) or not 0 < number <= 10:
            raise ConfigError(f"{where}: expected fractions of the budget between 0 and 10 (0.8 = 80 %), got {item!r}")
        out.append(number)
    return sorted(set(out))


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def load_settings(config: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None,
                  **kwargs: Any) -> Settings:
    """Builds validated :class:`Settings` from keyword arguments, the environment and a TOML file."""
    env = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    unknown = set(kwargs) - names
    if unknown:
        raise ConfigError(f"unknown tokenlane setting(s): {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    path = config or env.get("TOKENLANE_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
        table = data.get("tokenlane", data)
        bad = set(table) - names
        if bad:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(sorted(bad))}")
        for name, value in table.items():
            values[name] = _coerce(name, value, f"config file {path}")
    for name in names - _MAPS:
        raw = env.get(f"TOKENLANE_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment variable TOKENLANE_{name.upper()}")
    for name, value in kwargs.items():
        values[name] = _coerce(name, value, "keyword argument") if value is not None else None
    return Settings(**values)


__all__ = ["CACHE_MODES", "ConfigError", "POLICIES", "PRIORITIES", "ROUTE_OPTIONS", "Settings", "WINDOWS", "load_settings"]
