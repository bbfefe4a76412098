"""Tier caps: 413 with the exact count, max_tokens clamped or injected, trimming when the route opts in."""

from __future__ import annotations

import pytest

import tokenlane
from tokenlane.config import ConfigError, load_settings
from tokenlane.errors import RequestError
from tokenlane.formats import OPENAI_CHAT, ANTHROPIC_MESSAGES, parse_request
from tokenlane.stages.caps import TierCaps

CAPS = {"free": {"max_input_tokens": 60, "max_output_tokens": 100}, "pro": {"max_output_tokens": 4000}}


def caps(**kw: object) -> TierCaps:
    caps = TierCaps.from_settings(load_settings(environ={}, tier_caps=CAPS, **kw))
    assert caps is not None
    return caps


def chat(**body: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], **body}


def test_tier_like_priority_header_then_tenant_then_default() -> None:
    c = caps(tenant_tiers={"acme": "pro"}, default_tier="free")
    assert c.tier({"x-tokenlane-tier": "pro"}, "anyone") == "pro"
    assert c.tier({}, "acme") == "pro"
    assert c.tier({}, "other") == "free"
    with pytest.raises(RequestError) as info:
        c.tier({"x-tokenlane-tier": "gold"}, "acme")
    assert info.value.status == 400 and "free, pro" in info.value.message


def test_no_caps_configured_means_no_stage() -> None:
    assert TierCaps.from_settings(load_settings(environ={})) is None
    with pytest.raises(ConfigError):
        load_settings(environ={}, tier_caps=CAPS, default_tier="gold")
    with pytest.raises(ConfigError):
        load_settings(environ={}, tier_caps={"x": {"max_input_tokens": 0}})


def test_oversize_prompt_is_413_with_exact_count() -> None:
    body = chat(messages=[{"role": "user", "content": "word " * 80}])
    request = parse_request(OPENAI_CHAT, body)
    exact = tokenlane.count_chat_tokens(body["messages"], "gpt-4o-mini")
    with pytest.raises(RequestError) as info:
        caps().apply("free", request, body)
    assert info.value.status == 413
    assert f"has {exact} tokens" in info.value.message and "at most 60" in info.value.message


def test_max_tokens_clamped_injected_or_left() -> None:
    c = caps()
    for body, field in ((chat(max_tokens=500), "max_tokens"), (chat(), "max_tokens"),
                        (chat(max_completion_tokens=900), "max_completion_tokens")):
        done = c.apply("free", parse_request(OPENAI_CHAT, body), body)
        assert done.clamped_max_tokens == 100 and body[field] == 100 and done.body is body
    body = chat(max_tokens=50)
    assert c.apply("free", parse_request(OPENAI_CHAT, body), body).clamped_max_tokens is None
    assert body["max_tokens"] == 50
    anthropic = {"model": "claude-3-5-haiku-20241022", "max_tokens": 8000, "messages": [{"role": "user", "content": "hi"}]}
    assert c.apply("pro", parse_request(ANTHROPIC_MESSAGES, anthropic), anthropic).clamped_max_tokens == 4000
    assert anthropic["max_tokens"] == 4000


def test_trim_instead_of_413_when_the_route_opts_in() -> None:
    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"q{i} " + "blah " * 10}, {"role": "assistant", "content": "ok " * 10}]
    msgs.append({"role": "user", "content": "last one"})
    body = chat(messages=msgs)
    request = parse_request(OPENAI_CHAT, body)
    before = tokenlane.count_chat_tokens(msgs, "gpt-4o-mini")
    done = caps().apply("free", request, body, trim=True)
    assert done.untrimmed_input_tokens == before > 60
    assert tokenlane.count_chat_tokens(body["messages"], "gpt-4o-mini") <= 60
    assert body["messages"][0] == msgs[0] and body["messages"][-1] == msgs[-1]
