"""Provider prompt caching, predicted: how much of a prompt the provider will bill at the cached rate.

OpenAI (and DeepSeek, Azure) cache a prompt's prefix automatically: from 1,024 tokens on, in steps
of 128, while it was sent in the last few minutes; Anthropic does the same for prefixes the request
marks with ``cache_control``. A request whose stable prefix (system prompt, tools, every turn but the
last) was sent recently by the same principal to the same model is predicted to hit that cache, so
the estimate before the call carries the discount. The actual share comes from the response's usage.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from ..formats import ANTHROPIC_MESSAGES, LLMRequest, content_text

MIN_CACHED_TOKENS = 1024
CACHED_STEP = 128
# OpenAI keeps a prefix 5 to 10 minutes after its last use; Anthropic's default lifetime is 5 minutes.
DEFAULT_TTL_S = 300.0


class PromptCachePredictor:
    """Remembers recent prefixes per principal and model (bounded, least recently used dropped)."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_prefixes: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_prefixes = max_prefixes
        self._seen: OrderedDict[Any, float] = OrderedDict()

    def predict(self, principal: str, request: LLMRequest, input_tokens: int, last_turn_tokens: int,
                now: float, prefix_key: int | None = None) -> int:
        """Predicted cached input tokens of this request (0 if none), and remembers its prefix.
        ``prefix_key``: a hash of the messages before the last that the caller already has (the
        core's fast path, for plain chat messages without system or tools); else the prefix is
        hashed here."""
        if not request.messages or len(request.messages) + bool(request.system) < 2:
            return 0
        if request.api == ANTHROPIC_MESSAGES and "cache_control" not in json.dumps(request.messages[:-1]) + \
                json.dumps(request.tools or []) + str(request.extra.get("system_blocks", "")):
            return 0
        prefix_tokens = input_tokens - last_turn_tokens
        if prefix_tokens < MIN_CACHED_TOKENS:
            return 0
        if prefix_key is not None:
            key: Any = (principal, request.model, prefix_key)
        else:
            key = hashlib.sha256(json.dumps([principal, request.model, request.system, request.tools,
                                             request.messages[:-1]], sort_keys=True, default=str).encode()).hexdigest()
        last = self._seen.pop(key, None)
        self._seen[key] = now
        while len(self._seen) > self.max_prefixes:
            self._seen.popitem(last=False)
        if last is None or now - last > self.ttl_s:
            return 0
        return MIN_CACHED_TOKENS + (prefix_tokens - MIN_CACHED_TOKENS) // CACHED_STEP * CACHED_STEP


def last_turn_text(request: LLMRequest) -> str:
    """The text of the last message (what differs from one call of a conversation to the next)."""
    return content_text(request.messages[-1].get("content")) if request.messages else ""


def prompt_cache_saving(pricing: Any, model: str, cost: Any) -> int:
    """What the provider's cached rate saved on one call: its price without cache reads and writes,
    minus what it cost (pico-USD, never below 0)."""
    if not cost.cached_input_tokens:
        return 0
    full = pricing.cost(model, input_tokens=cost.input_tokens, output_tokens=cost.output_tokens,
                        reasoning_tokens=cost.reasoning_tokens).total_pico_usd
    return max(0, full - cost.total_pico_usd)


__all__ = ["PromptCachePredictor", "last_turn_text", "prompt_cache_saving"]
