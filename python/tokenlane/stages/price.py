"""Stage: count the prompt, estimate the output, price p50 / p90 / worst case (CPU only, fast)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..config import PRIORITIES, Settings
from ..errors import RequestError
from ..estimators import Estimator
from ..formats import LLMRequest, count_input_tokens
from ..pricing import Pricing
from ..tags import HEADER, TagError, merge_tags, parse_tags
from .base import Identity, Priced, new_request_id
from .prompt_cache import MIN_CACHED_TOKENS, PromptCachePredictor

# Worst-case output when neither the request nor the price table bounds it.
DEFAULT_MAX_OUTPUT_TOKENS = 4096


class Price:
    def __init__(self, settings: Settings, pricing: Pricing, estimator: Estimator,
                 prompt_cache: PromptCachePredictor | None = None) -> None:
        self.settings = settings
        self.pricing = pricing
        self.estimator = estimator
        self.prompt_cache = prompt_cache

    def __call__(self, request: LLMRequest, identity: Identity, route: str, headers: Mapping[str, str],
                 now: float, request_id: str | None = None) -> Priced:
        """Counts, estimates and prices a parsed request. Raises RequestError."""
        s = self.settings
        priority = headers.get("x-tokenlane-priority") or request.priority or \
            s.tenant_priorities.get(identity.tenant, s.default_priority)
        if priority not in PRIORITIES:
            raise RequestError(400, f"X-Tokenlane-Priority must be one of {', '.join(PRIORITIES)}, got {priority!r}",
                               param="X-Tokenlane-Priority")
        deadline_ms = headers.get("x-tokenlane-deadline-ms", request.deadline_ms)
        deadline_s = None
        if deadline_ms is not None:
            try:
                deadline_ms = float(deadline_ms)
            except ValueError:
                deadline_ms = -1.0
            if not (deadline_ms > 0 and math.isfinite(deadline_ms)):
                raise RequestError(400, "X-Tokenlane-Deadline-Ms must be a positive number of milliseconds",
                                   param="X-Tokenlane-Deadline-Ms")
            deadline_s = now + deadline_ms / 1000.0
        tags = merge_tags(self.tags_of(headers), request.tags, identity.tags)
        known = request.model in self.pricing
        if not known and not self.pricing.has_fallback:
            raise RequestError(400, f"tokenlane has no price for model {request.model!r}: add it to a pricing "
                               "config (tokenlane.Pricing.load, the `pricing` setting) or configure a fallback "
                               "price", code="model_not_found", param="model")
        counted = count_input_tokens(request)
        max_input = self.pricing.max_input_tokens(request.model) if known else None
        cap = s.max_input_tokens
        if cap is not None and counted.tokens > cap:
            raise RequestError(413, f"the prompt has {counted.tokens} tokens; this service accepts at most {cap}",
                               code="request_too_large", param="messages")
        if max_input is not None and counted.exact and counted.tokens > max_input:
            raise RequestError(413, f"the prompt has {counted.tokens} tokens; {request.model} accepts at most "
                               f"{max_input}", code="context_length_exceeded", param="messages")
        model_max = (self.pricing.max_output_tokens(request.model) if known else None) or DEFAULT_MAX_OUTPUT_TOKENS
        max_output = min(request.max_tokens, model_max) if request.max_tokens else model_max
        if request.generates:
            est = self.estimator.estimate(request.estimator_input(), request.model, max_tokens=max_output,
                                          context={"route": route, "tenant": identity.tenant},
                                          input_tokens=counted.tokens, model_max_output=model_max)
            p50, p90, source = est.p50 * request.n, est.p90 * request.n, est.source
        else:
            p50 = p90 = max_output = 0
            source = "none"

        cached = 0
        if self.prompt_cache is not None and counted.tokens > MIN_CACHED_TOKENS and request.messages:
            last = count_input_tokens(LLMRequest(request.api, request.model, messages=request.messages[-1:]))
            cached = self.prompt_cache.predict(identity.tenant, request, counted.tokens, last.tokens, now)

        # The price tier depends on the prompt only, so cost is linear in output tokens: two exact
        # lookups price every output count.
        total = self.pricing.total_pico_usd
        base = total(request.model, counted.tokens, 0, cached)
        per_output = total(request.model, counted.tokens, 1, cached) - base

        # The worst case never counts on the provider's cache (a prediction can be wrong), so a
        # budget that reserves it stays a hard cap.
        uncached = base if not cached else total(request.model, counted.tokens)

        def price(out: int, start: int = base) -> int:
            return start + out * per_output

        return Priced(
            id=request_id or new_request_id(), route=route, request=request, identity=identity,
            input_tokens=counted.tokens, input_exact=counted.exact, est_p50=p50, est_p90=p90, est_source=source,
            max_output=max_output * request.n, cost_p50=price(p50), cost_p90=price(p90),
            cost_max=price(max_output * request.n, uncached), priority=priority, deadline_s=deadline_s, arrival=now,
            tags=tags, predicted_cached_tokens=cached)

    @staticmethod
    def tags_of(headers: Mapping[str, str]) -> dict[str, str] | None:
        """The X-Tokenlane-Tags header's tags; RequestError (400) when malformed."""
        raw = headers.get(HEADER)
        if not raw:
            return None
        try:
            return parse_tags(raw)
        except TagError as exc:
            raise RequestError(400, str(exc), param="X-Tokenlane-Tags") from None


__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "Price"]
