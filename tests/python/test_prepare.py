"""The C++ fast path of the pricing stage (tokenlane/prepare.hpp) gives what the general path gives,
request for request, and declines every shape it does not take."""

from __future__ import annotations

import json

import pytest

import tokenlane
from tokenlane.config import load_settings
from tokenlane.formats import OPENAI_CHAT, parse_request
from tokenlane.stages import Identity, Price
from tokenlane.stages.prompt_cache import PromptCachePredictor

LONG = "Budgets decide which requests run first when many users share one model. " * 120  # ~1,700 tokens


def _request(body: dict) -> tokenlane.LLMRequest:
    raw = json.dumps(body)
    request = parse_request(OPENAI_CHAT, json.loads(raw))
    request.extra["raw_body"] = raw
    return request


def _stages(**settings):
    s = load_settings(environ={}, **settings)
    # A fallback price: models outside the table (gpt-3.5-turbo-0301's framing differs) are priced too.
    pricing = tokenlane.Pricing.default().with_overrides({"fallback": {"input_per_mtok": 10, "output_per_mtok": 30}})

    def stage(fast: bool) -> Price:
        price = Price(s, pricing, tokenlane.Estimator.default(), PromptCachePredictor())
        price._fast = fast
        return price

    return stage(True), stage(False)


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now.", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "A city"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}}

PLAIN = [
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    {"model": "gpt-4o", "max_tokens": 50, "n": 3,
     "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "name": "bob", "content": "Why?"}]},
    {"model": "gpt-3.5-turbo-0301", "messages": [{"role": "user", "name": "al", "content": "Grüße, 世界 🎉"}]},
    {"model": "gpt-4o-mini", "max_completion_tokens": 0, "messages": [{"role": "user", "content": LONG}]},
    {"model": "gpt-4-turbo", "messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": "<|endoftext|>"}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": ""},
                                                                 {"type": "text", "text": "there"}]},
                                     {"role": "user", "content": []}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL]},
    {"model": "gpt-4o-mini", "tools": [TOOL], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 °C, clear"}]},
]

NOT_PLAIN = [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "functions": [TOOL["function"]]},
    {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"not": "a string"}}}]}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
    {"model": "claude-3-5-sonnet-20241022", "messages": [{"role": "user", "content": "Hi"}]},  # no exact encoding
]

FIELDS = ("input_tokens", "input_exact", "est_p50", "est_p90", "est_source", "max_output", "cost_p50", "cost_p90",
          "cost_max", "priority", "predicted_cached_tokens")


def _priced(price: Price, body: dict, now: float = 1000.0):
    return price(_request(body), Identity(tenant="acme"), "/v1/chat/completions", {}, now)


@pytest.mark.parametrize("body", PLAIN + NOT_PLAIN)
def test_fast_path_prices_as_the_general_path(body: dict) -> None:
    fast, general = _stages()
    a, b = _priced(fast, body), _priced(general, body)
    assert {f: getattr(a, f) for f in FIELDS} == {f: getattr(b, f) for f in FIELDS}
    assert (a.prepared is not None) == (body in PLAIN)  # plain requests take the fast path, the rest do not


def test_prompt_cache_prediction_on_the_fast_path() -> None:
    fast, general = _stages()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": LONG}, {"role": "user", "content": "Q1"}]}
    for price in (fast, general):
        first, second = _priced(price, body, 1000.0), _priced(price, body, 1010.0)
        assert first.predicted_cached_tokens == 0 and second.predicted_cached_tokens >= 1024
        assert second.cost_p50 < first.cost_p50 and second.cost_max == first.cost_max  # worst case: no discount
    assert {f: getattr(_priced(fast, body, 1020.0), f) for f in FIELDS} == \
        {f: getattr(_priced(general, body, 1020.0), f) for f in FIELDS}


def test_prompt_cache_prediction_of_a_conversation() -> None:
    """The fast path predicts from the core's prefix hash what the general path predicts from the
    serialised prefix: a hit for the same earlier turns, a miss when they change."""
    turns = [{"role": "system", "content": LONG}]
    for i in range(6):
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + LONG[:300]})

    def ask(last: str, earlier: list | None = None) -> dict:
        return {"model": "gpt-4o-mini", "messages": [*(earlier or turns), {"role": "user", "content": last}]}

    fast, general = _stages()
    for price in (fast, general):
        assert _priced(price, ask("first?"), 1000.0).predicted_cached_tokens == 0
        assert _priced(price, ask("second?"), 1001.0).predicted_cached_tokens >= 1024
        assert _priced(price, ask("third?", turns[:-1] + [{"role": "assistant", "content": "changed"}]),
                       1002.0).predicted_cached_tokens == 0
    a, b = _priced(fast, ask("fourth?"), 1003.0), _priced(general, ask("fourth?"), 1003.0)
    assert a.prepared is not None and b.prepared is None
    assert {f: getattr(a, f) for f in FIELDS} == {f: getattr(b, f) for f in FIELDS}


@pytest.mark.parametrize(("settings", "body", "status", "code"), [
    ({}, {"model": "gpt-4o", "messages": [{"role": "user", "content": LONG * 90}]}, 413, "context_length_exceeded"),
    ({"max_input_tokens": 10}, {"model": "gpt-4o", "messages": [{"role": "user", "content": LONG}]}, 413,
     "request_too_large"),
])
def test_fast_path_refuses_as_the_general_path(settings: dict, body: dict, status: int, code: str) -> None:
    for price in _stages(**settings):
        with pytest.raises(tokenlane.RequestError) as err:
            _priced(price, body)
        assert (err.value.status, err.value.code) == (status, code)


def test_a_malformed_tool_is_refused_as_the_general_path_refuses_it() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}
    errors = []
    for price in _stages():
        with pytest.raises(ValueError) as err:
            _priced(price, body)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "tools[0]" in errors[0]


def test_model_without_a_price() -> None:
    s = load_settings(environ={})
    price = Price(s, tokenlane.Pricing.default(), tokenlane.Estimator.default())
    body = {"model": "gpt-3.5-turbo-0301", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(tokenlane.RequestError) as err:
        _priced(price, body)
    assert (err.value.status, err.value.code) == (400, "model_not_found")


def test_background_observer_teaches_as_observe_does() -> None:
    """The update after the response (a native thread) is the estimator's own ``observe``."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise the quarterly report."}]}
    request = _request(body)
    taught, direct = tokenlane.HistoryEstimator(min_count=1), tokenlane.HistoryEstimator(min_count=1)
    price = Price(load_settings(environ={}), tokenlane.Pricing.default(), taught)
    p = _priced(price, body)
    learner = tokenlane._core.BackgroundObserver(taught._core)
    for out in (321, 280, 400):
        learner.observe(p.prepared, out, False)
        direct.observe(request.messages, "gpt-4o-mini", out, context={"route": p.route, "tenant": "acme"},
                       input_tokens=p.input_tokens)
    learner.flush()
    assert taught.to_json() == direct.to_json() and learner.dropped == 0


def test_an_estimator_that_overrides_observe_is_called_itself(tmp_path) -> None:
    """The native update bypasses Python: an estimator subclass with its own ``observe`` keeps it."""
    from tokenlane.runtime import Tokenlane

    class Logged(tokenlane.HistoryEstimator):
        def observe(self, *args, **kwargs):
            super().observe(*args, **kwargs)

    assert Tokenlane(db=str(tmp_path / "a.db"), estimator=Logged()).reconcile.learner is None
    assert Tokenlane(db=str(tmp_path / "b.db")).reconcile.learner is not None
