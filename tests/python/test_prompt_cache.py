"""Provider prompt-cache prediction: a long stable prefix, sent again soon by the same principal to
the same model, is predicted to be billed at the cached rate; savings are priced exactly."""

from __future__ import annotations

from tokenlane import Pricing
from tokenlane.formats import OPENAI_CHAT, count_input_tokens, parse_request
from tokenlane.stages.prompt_cache import PromptCachePredictor, prompt_cache_saving

SYSTEM = "You answer questions about the handbook. " + "The handbook says many things. " * 300


def request(question: str, model: str = "gpt-4o-mini"):
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    return parse_request(OPENAI_CHAT, body)


def predict(p: PromptCachePredictor, principal: str, question: str, now: float, model: str = "gpt-4o-mini") -> int:
    r = request(question, model)
    total = count_input_tokens(r).tokens
    last = count_input_tokens(parse_request(OPENAI_CHAT, {"model": model, "messages": [r.messages[-1]]})).tokens
    return p.predict(principal, r, total, last, now)


def test_repeat_prefix_is_predicted_cached_in_128_token_steps() -> None:
    p = PromptCachePredictor(ttl_s=300)
    assert predict(p, "a", "first?", 0.0) == 0           # first sight: nothing cached yet
    cached = predict(p, "a", "second question?", 10.0)
    assert cached >= 1024 and (cached - 1024) % 128 == 0
    assert predict(p, "b", "second question?", 11.0) == 0  # another principal's prefix is not ours
    assert predict(p, "a", "x?", 11.0, model="gpt-4o") == 0  # nor another model's
    assert predict(p, "a", "third?", 400.0) == 0            # expired (provider evicts idle prefixes)


def test_short_prefix_never_cached() -> None:
    p = PromptCachePredictor()
    r = parse_request(OPENAI_CHAT, {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "short"}, {"role": "user", "content": "hi"}]})
    assert p.predict("a", r, 20, 5, 0.0) == 0 and p.predict("a", r, 20, 5, 1.0) == 0


def test_saving_is_full_price_minus_cached_price() -> None:
    pricing = Pricing.default()
    cost = pricing.cost("gpt-4o-mini", input_tokens=2000, output_tokens=100, cached_input_tokens=1536)
    full = pricing.cost("gpt-4o-mini", input_tokens=2000, output_tokens=100)
    assert prompt_cache_saving(pricing, "gpt-4o-mini", cost) == full.total_pico_usd - cost.total_pico_usd > 0
    assert prompt_cache_saving(pricing, "gpt-4o-mini", full) == 0


def test_estimate_carries_the_discount_but_the_worst_case_does_not(tmp_path) -> None:
    from tokenlane import Tokenlane
    from tokenlane.stages import Identity

    rt = Tokenlane(db=str(tmp_path / "l.db"))
    who = Identity(tenant="a")
    first = rt.prepare(request("first?"), who, "/v1/chat/completions", {}, 0.0)
    second = rt.prepare(request("second?"), who, "/v1/chat/completions", {}, 5.0)
    assert first.predicted_cached_tokens == 0 and second.predicted_cached_tokens >= 1024
    assert second.cost_p50 < first.cost_p50               # the estimate is discounted
    assert second.cost_max >= first.cost_max              # the reservation that makes a budget a hard cap is not
    off = Tokenlane(db=str(tmp_path / "m.db"), predict_prompt_cache=False)
    off.prepare(request("first?"), who, "/v1/chat/completions", {}, 0.0)
    assert off.prepare(request("second?"), who, "/v1/chat/completions", {}, 5.0).predicted_cached_tokens == 0
