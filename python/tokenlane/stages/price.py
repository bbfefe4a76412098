"""Stage: count the prompt, estimate the output, price p50 / p90 / worst case (CPU only, fast)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .. import _core
from ..config import PRIORITIES, Settings
from ..encoding import encoding_for_model
from ..errors import RequestError
from ..estimators import Estimator
from ..formats import OPENAI_CHAT, LLMRequest, count_input_tokens
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
        # The C++ fast path (tokenlane/prepare.hpp) takes plain chat requests when the estimator is
        # one of tokenlane's own (its core estimates).
        self._fast = isinstance(estimator, Estimator) and type(estimator).estimate is Estimator.estimate
        self._encodings: dict[str, Any] = {}  # model → its encoding's core (None: no exact encoding)

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
        plain = request.api == OPENAI_CHAT and not (request.system or request.extra.get("functions"))
        if self._fast and plain:
            priced = self._prepare_plain(request, identity, route, now, request_id, priority, deadline_s, tags)
            if priced is not None:
                return priced
        known = request.model in self.pricing
        if not known and not self.pricing.has_fallback:
            raise _unknown_model(request.model)
        counted = count_input_tokens(request)
        max_input = self.pricing.max_input_tokens(request.model) if known else None
        self._check_input(request.model, counted.tokens, max_input if counted.exact else None)
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

        cached = self._predicted_cached(request, identity, counted.tokens, now)
        cost_p50, cost_p90, cost_max = self._costs(request.model, counted.tokens, cached, p50, p90,
                                                   max_output * request.n)
        return Priced(
            id=request_id or new_request_id(), route=route, request=request, identity=identity,
            input_tokens=counted.tokens, input_exact=counted.exact, est_p50=p50, est_p90=p90, est_source=source,
            max_output=max_output * request.n, cost_p50=cost_p50, cost_p90=cost_p90, cost_max=cost_max,
            priority=priority, deadline_s=deadline_s, arrival=now, tags=tags, predicted_cached_tokens=cached)

    def _predicted_cached(self, request: LLMRequest, identity: Identity, tokens: int, now: float,
                          prepared: tuple[int, int] | None = None) -> int:
        """Input tokens the provider's prompt cache is predicted to bill at the cached rate (0: none).
        ``prepared``: the fast path's (last message's tokens, prefix hash), which spare counting the
        last message again and serialising the prefix."""
        if self.prompt_cache is None or tokens <= MIN_CACHED_TOKENS or not request.messages:
            return 0
        if prepared is not None:
            last_tokens, prefix_hash = prepared
            return self.prompt_cache.predict(identity.tenant, request, tokens, last_tokens, now,
                                             prefix_key=prefix_hash)
        last = count_input_tokens(LLMRequest(request.api, request.model, messages=request.messages[-1:]))
        return self.prompt_cache.predict(identity.tenant, request, tokens, last.tokens, now)

    def _costs(self, model: str, tokens: int, cached: int, p50: int, p90: int, max_output: int) -> tuple[int, int, int]:
        """(expected, p90, worst-case) cost in pico-USD."""
        # The price tier depends on the prompt only, so cost is linear in output tokens: two exact
        # lookups price every output count.
        total = self.pricing.total_pico_usd
        base = total(model, tokens, 0, cached)
        per_output = total(model, tokens, 1, cached) - base
        # The worst case never counts on the provider's cache (a prediction can be wrong), so a
        # budget that reserves it stays a hard cap.
        uncached = base if not cached else total(model, tokens)
        return base + p50 * per_output, base + p90 * per_output, uncached + max_output * per_output

    def _prepare_plain(self, request: LLMRequest, identity: Identity, route: str, now: float,
                       request_id: str | None, priority: str, deadline_s: float | None,
                       tags: dict[str, str]) -> Priced | None:
        """Counts, estimates and prices a plain chat request in one core call; None when the
        request is not plain or its model has no exact encoding (the general path then runs)."""
        model = request.model
        encoding = self._encodings.get(model, False)
        if encoding is False:
            try:
                encoding = encoding_for_model(model)._core
            except KeyError:
                encoding = None
            if len(self._encodings) > 1000:  # model names come from requests: stay bounded
                self._encodings.clear()
            self._encodings[model] = encoding
        if encoding is None:
            return None
        done = _core.prepare_chat(encoding, self.estimator._core, self.pricing._core, request.messages, model,
                                  route, identity.tenant, request.max_tokens, request.n, DEFAULT_MAX_OUTPUT_TOKENS,
                                  json.dumps(request.tools) if request.tools else "")
        if done is None:
            return None
        (prepared, tokens, priced, max_input, max_output, p50, p90, source, cost_p50, cost_p90, cost_max,
         last_tokens, prefix_hash) = done
        if not priced:
            raise _unknown_model(model)
        self._check_input(model, tokens, max_input)
        cached = self._predicted_cached(request, identity, tokens, now, (last_tokens, prefix_hash))
        if cached:  # the core priced it without the provider's cache
            cost_p50, cost_p90, cost_max = self._costs(model, tokens, cached, p50, p90, max_output * request.n)
        return Priced(
            id=request_id or new_request_id(), route=route, request=request, identity=identity,
            input_tokens=tokens, input_exact=True, est_p50=p50, est_p90=p90, est_source=source,
            max_output=max_output * request.n, cost_p50=cost_p50, cost_p90=cost_p90, cost_max=cost_max,
            priority=priority, deadline_s=deadline_s, arrival=now, tags=tags, predicted_cached_tokens=cached,
            prepared=prepared)

    def _check_input(self, model: str, tokens: int, max_input: int | None) -> None:
        """413 when the prompt is over the service's cap or the model's context (exact counts)."""
        cap = self.settings.max_input_tokens
        if cap is not None and tokens > cap:
            raise RequestError(413, f"the prompt has {tokens} tokens; this service accepts at most {cap}",
                               code="request_too_large", param="messages")
        if max_input is not None and tokens > max_input:
            raise RequestError(413, f"the prompt has {tokens} tokens; {model} accepts at most "
                               f"{max_input}", code="context_length_exceeded", param="messages")

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


def _unknown_model(model: str) -> RequestError:
    return RequestError(400, f"tokenlane has no price for model {model!r}: add it to a pricing config "
                        "(tokenlane.Pricing.load, the `pricing` setting) or configure a fallback price",
                        code="model_not_found", param="model")


__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "Price"]
