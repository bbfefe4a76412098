"""Tier caps and context trimming: what one call of a tier may send and ask for.

A tier (header ``X-Tokenlane-Tier``, else the principal's default, else ``default_tier``) maps to
``{"max_input_tokens": …, "max_output_tokens": …}``. A prompt over the input cap is trimmed when the
route opts in (``route_settings``: ``{"trim": true}``), else refused with 413 and the exact count;
``max_tokens`` is clamped to the output cap, or injected when the request has none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from ..formats import (
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    OPENAI_RESPONSES,
    LLMRequest,
    count_input_tokens,
)
from ..trim import TrimError, trim_messages

# Where each API keeps its output cap (OpenAI chat: the newer name wins when both are sent).
_MAX_TOKENS_FIELD = {OPENAI_COMPLETIONS: "max_tokens", OPENAI_RESPONSES: "max_output_tokens",
                     ANTHROPIC_MESSAGES: "max_tokens"}


@dataclass(frozen=True)
class TierCap:
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None


@dataclass
class Capped:
    """What the stage did: the tier, the clamped ``max_tokens`` (None: untouched), the prompt tokens
    before trimming (None: not trimmed) and the body to send on (None: unchanged)."""

    tier: str | None = None
    clamped_max_tokens: int | None = None
    untrimmed_input_tokens: int | None = None
    body: dict[str, Any] | None = None


class TierCaps:
    """The caps of every tier; build once from the settings (``None`` when no tier is capped)."""

    def __init__(self, caps: Mapping[str, TierCap], tenant_tiers: Mapping[str, str] | None = None,
                 default_tier: str | None = None, trim_routes: list[str] | None = None) -> None:
        self.caps = dict(caps)
        self.tenant_tiers = dict(tenant_tiers or {})
        self.default_tier = default_tier
        self.trim_routes = [re.compile(p) for p in trim_routes or ()]

    @classmethod
    def from_settings(cls, settings: Any) -> TierCaps | None:
        if not settings.tier_caps:
            return None
        return cls({name: TierCap(**cap) for name, cap in settings.tier_caps.items()},
                   settings.tenant_tiers, settings.default_tier,
                   [p for p, o in settings.route_settings.items() if o.get("trim")])

    def __call__(self, request: LLMRequest, data: Any, principal: str, path: str,
                 headers: Mapping[str, str]) -> Capped:
        """The stage's entry point: the request's tier, then its caps (trimming where the route opts in)."""
        trim = any(p.search(path) for p in self.trim_routes)
        return self.apply(self.tier(headers, principal), request, data, trim=trim)

    def tier(self, headers: Mapping[str, str], tenant: str) -> str | None:
        """The request's tier, taken like its priority: header, principal's default, default."""
        asked = headers.get("x-tokenlane-tier")
        if asked is not None:
            if asked not in self.caps:
                raise RequestError(400, f"X-Tokenlane-Tier must be one of {', '.join(sorted(self.caps))}, "
                                   f"got {asked!r}", param="X-Tokenlane-Tier")
            return asked
        return self.tenant_tiers.get(tenant, self.default_tier)

    def apply(self, tier: str | None, request: LLMRequest, data: Any, *, trim: bool = False) -> Capped:
        """Enforces the tier's caps on a parsed request and its JSON body (a dict, changed in place
        when needed). Raises RequestError 413 for a prompt over the cap that may not be trimmed."""
        cap = self.caps.get(tier) if tier is not None else None
        done = Capped(tier=tier)
        if cap is None:
            return done
        if cap.max_input_tokens is not None:
            counted = count_input_tokens(request)
            if counted.tokens > cap.max_input_tokens:
                if not (trim and request.messages and isinstance(data, dict) and "messages" in data):
                    raise RequestError(
                        413, f"the prompt has {counted.tokens} tokens; tier {tier!r} accepts at most "
                        f"{cap.max_input_tokens}", code="request_too_large", param="messages")
                try:
                    data["messages"] = trim_messages(
                        data["messages"], request.model, cap.max_input_tokens, tools=data.get("tools"),
                        system=request.system if request.api == ANTHROPIC_MESSAGES else None, truncate=True)
                except TrimError as exc:
                    raise RequestError(413, f"{exc} (tier {tier!r}): nothing older to trim",
                                       code="request_too_large", param="messages") from None
                done.untrimmed_input_tokens = counted.tokens
                done.body = data
        if cap.max_output_tokens is not None and request.generates and isinstance(data, dict):
            name = _MAX_TOKENS_FIELD.get(request.api)
            if request.api == OPENAI_CHAT:
                name = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
            if name is not None and (request.max_tokens is None or request.max_tokens > cap.max_output_tokens):
                data[name] = cap.max_output_tokens
                done.clamped_max_tokens = cap.max_output_tokens
                done.body = data
        return done


__all__ = ["Capped", "TierCap", "TierCaps"]
