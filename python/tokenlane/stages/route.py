"""Stage: route. Picks the served model before the request is priced (docs/routing.md): the
``routes`` rules, the ``model_groups`` (``"model": "auto"``), a learned difficulty score. The body's
``model`` becomes the served model on its way to the app; the requested model and the rule that
chose stay on the request's record for the ledger and the ``x-tokenlane-model`` header.

Switched off (no rules, no groups) the runtime does not build it. It computes only what the rules
look at: the prompt text for task/difficulty rules, a price estimate at the requested model for
token/cost/deadline rules, the budget state for budget-pressure rules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import RequestError
from ..formats import LLMRequest
from ..pricing import PICO_PER_USD
from ..routing import DifficultyModel, RouteChoice, RouteFacts, Router, RoutingError
from ..tags import merge_tags
from .base import Identity, Priced
from .price import Price

PriceFn = Callable[..., Priced]


def build_router(settings: Settings) -> Router | None:
    """The router the settings describe, or None when routing is off."""
    if not (settings.routes or settings.model_groups):
        return None
    difficulty = None
    if settings.difficulty_model:
        try:
            difficulty = DifficultyModel.from_dict(json.loads(Path(settings.difficulty_model).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise RoutingError(f"difficulty_model {settings.difficulty_model}: {exc}") from None
    return Router.from_config(settings.routes, settings.model_groups, difficulty)


class Route:
    def __init__(self, router: Router, price: PriceFn, budget: Any) -> None:
        self.router = router
        self.price = price
        self.budget = budget  # the budget stage: ensure (async), usage (blocking: on its ledger thread)

    async def __call__(self, request: LLMRequest, body: bytes, identity: Identity, path: str,
                       headers: Mapping[str, str], now: float,
                       tier: str | None = None) -> tuple[LLMRequest, bytes, RouteChoice]:
        """``tier``: the principal's tier as the caps stage resolved it (None without tier caps)."""
        router = self.router
        requested = request.model
        # A rule's `tags` match a tag's key or its "key=value" (X-Tokenlane-Tags, extractor, identify hook).
        tags = merge_tags(Price.tags_of(headers), request.tags, getattr(identity, "tags", None))
        facts: dict[str, Any] = {
            "requested": requested, "route": path, "tier": tier,
            "tags": frozenset([*tags, *(f"{k}={v}" for k, v in tags.items())])}
        if router.needs_text:
            facts["text"] = request.text()
        if router.needs_estimate:
            base = dataclasses.replace(request, model=router.default_model(requested))
            p = self.price(base, identity, path, headers, now)
            facts.update(input_tokens=p.input_tokens, output_tokens=p.est_p50, cost_usd=p.cost_p50 / PICO_PER_USD,
                         deadline_s=None if p.deadline_s is None else p.deadline_s - now)
        if router.needs_budget:
            facts["budget_remaining"] = await self.budget_left(identity, now)
        choice = router.choose(RouteFacts(**facts))
        if choice.model == requested:
            return request, body, choice
        try:
            data = json.loads(body)
        except ValueError:
            raise RequestError(400, "the body is not JSON, so its model cannot be routed") from None
        data["model"] = choice.model
        return dataclasses.replace(request, model=choice.model), json.dumps(data).encode(), choice

    async def budget_left(self, identity: Identity, now: float) -> float | None:
        """The share still free of the tightest budget in the request's chain (organisation, team,
        tenant, key, end user), from the shared ledger, read off the event loop; None without one."""
        await self.budget.ensure(identity.tenant, now)

        def shares() -> list[float]:
            out = []
            for level in identity.chain():
                u = self.budget.usage(level, now)
                limit = u.get("limit_pico_usd")
                if limit:
                    out.append(max(0.0, (limit - u["spent_pico_usd"] - u["reserved_pico_usd"]) / limit))
            return out

        found = await self.budget.thread.write(shares)
        return min(found) if found else None


__all__ = ["Route", "build_router"]
