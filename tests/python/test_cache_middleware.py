"""Caches, tier caps and trimming through the middleware end to end: a FastAPI app, the real SQLite
ledger (and cache table), the simulated provider counting its calls; JSON and streamed hits."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

import tokenlane
from tokenlane import Tokenlane
from tokenlane.providers import SimulatedProvider
from tokenlane.reports import report

from middleware_app import build_app

Q = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 40,
     "messages": [{"role": "system", "content": "You are a support bot."},
                  {"role": "user", "content": "How can I reset my password?"}]}


class CountingProvider(SimulatedProvider):
    def __init__(self, **kw: object) -> None:
        super().__init__(time_scale=0, **kw)
        self.calls = 0

    async def chat(self, body):  # type: ignore[override]
        self.calls += 1
        return await super().chat(body)

    async def stream_chat(self, body):  # type: ignore[override]
        self.calls += 1
        async for chunk in super().stream_chat(body):
            yield chunk


def make(tmp_path, **settings):
    provider = CountingProvider()
    rt = Tokenlane(db=str(tmp_path / "ledger.db"), **settings)
    return rt, provider, build_app(rt, provider=provider)


def with_user(body: dict, text: str) -> dict:
    return {**body, "messages": [*body["messages"][:-1], {"role": "user", "content": text}]}


def test_cache_off_by_default_costs_nothing(tmp_path):
    rt, provider, app = make(tmp_path)
    assert rt.cache is None and rt.caps is None
    with TestClient(app) as client:
        for _ in range(2):
            r = client.post("/v1/chat/completions", json=Q)
            assert "x-tokenlane-cache" not in r.headers
    assert provider.calls == 2


def test_exact_json_hit_costs_zero_and_records_the_saving(tmp_path):
    rt, provider, app = make(tmp_path, cache="exact")
    with TestClient(app) as client:
        miss = client.post("/v1/chat/completions", json={**Q, "user": "alice"})
        hit = client.post("/v1/chat/completions", json={**Q, "user": "alice"})
        other = client.post("/v1/chat/completions", json={**Q, "user": "bob"})  # another end user
        warm = client.post("/v1/chat/completions", json={**Q, "temperature": 0.8, "user": "alice"})
        fresh = client.post("/v1/chat/completions", json={**Q, "user": "alice"}, headers={"cache-control": "no-cache"})
        metrics = client.get("/metrics").text
    assert [r.status_code for r in (miss, hit, other, warm, fresh)] == [200] * 5
    assert [r.headers["x-tokenlane-cache"] for r in (miss, hit, other, warm, fresh)] == \
        ["miss", "hit", "miss", "bypass", "bypass"]
    assert provider.calls == 4  # the hit alone did not call the model
    assert hit.json() == miss.json()
    assert hit.headers["x-tokenlane-cost"] == "0"
    paid = rt.ledger.get_request(miss.headers["x-tokenlane-request-id"])
    row = rt.ledger.get_request(hit.headers["x-tokenlane-request-id"])
    assert (row["status"], row["cache"], row["cost_pico_usd"]) == ("succeeded", "hit", 0)
    assert row["cache_saved_pico_usd"] == paid["cost_pico_usd"] > 0
    assert (row["tenant"], row["end_user"]) == ("anonymous", "alice") and paid["cache"] == "miss"
    assert hit.headers["x-tokenlane-cache-saved"] == tokenlane.pricing.usd_text(paid["cost_pico_usd"])
    day = rt.ledger.report_by_day(tenant="anonymous")[0]
    assert (day["cache_hits"], day["cache_saved_pico_usd"]) == (1, paid["cost_pico_usd"])
    assert 'tokenlane_cache_requests_total{gen_ai_request_model="gpt-4o-mini",kind="exact",outcome="hit"} 1.0' in metrics
    assert "tokenlane_cache_saved_usd_total" in metrics
    (payer,) = [r for r in report(str(tmp_path / "ledger.db"), by="tenant") if r["tenant"] == "anonymous"]
    assert (payer["cache_hits"], payer["saved_usd"]) == (1, paid["cost_pico_usd"] / 10**12)


def test_streamed_hit_is_replayed_as_sse_with_usage(tmp_path):
    rt, provider, app = make(tmp_path, cache="exact")
    with TestClient(app) as client:
        first = client.post("/v1/chat/completions", json=Q)  # a JSON miss fills the entry
        with client.stream("POST", "/v1/chat/completions", json={**Q, "stream": True}) as r:
            raw = b"".join(r.iter_bytes())
            headers = r.headers
        # and a streamed miss fills one a JSON client can read
        other = with_user(Q, "List three colours")
        with client.stream("POST", "/v1/chat/completions", json={**other, "stream": True}) as r:
            streamed = b"".join(r.iter_bytes())
        json_hit = client.post("/v1/chat/completions", json=other)
    assert headers["x-tokenlane-cache"] == "hit" and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
    assert events[-1]["usage"] == first.json()["usage"] and raw.endswith(b"data: [DONE]\n\n")
    assert json_hit.headers["x-tokenlane-cache"] == "hit"
    chunks = [json.loads(line[6:]) for line in streamed.decode().split("\n\n") if line.startswith("data: {")]
    assert json_hit.json()["choices"][0]["message"]["content"] == \
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert provider.calls == 2


def test_semantic_hit_for_a_paraphrase_not_across_tenants_or_conversations(tmp_path):
    rt, provider, app = make(tmp_path, cache="semantic", semantic_threshold=0.9)
    with TestClient(app) as client:
        client.post("/v1/chat/completions", json={**Q, "user": "alice"})
        para = client.post("/v1/chat/completions", json={**with_user(Q, "How do I reset my password?"), "user": "alice"})
        bob = client.post("/v1/chat/completions", json={**with_user(Q, "How do I reset my password?"), "user": "bob"})
        pirate = {**Q, "user": "alice", "messages": [{"role": "system", "content": "You are a pirate."},
                                                     {"role": "user", "content": "How do I reset my password?"}]}
        other_conv = client.post("/v1/chat/completions", json=pirate)
    assert para.headers["x-tokenlane-cache"] == "hit"
    assert 0.9 <= float(para.headers["x-tokenlane-cache-similarity"]) < 1
    assert bob.headers["x-tokenlane-cache"] == other_conv.headers["x-tokenlane-cache"] == "miss"
    assert provider.calls == 3


def test_shared_route_serves_every_tenant(tmp_path):
    rt, provider, app = make(tmp_path, cache="exact", route_settings={"^/v1/chat": {"cache_shared": True}})
    with TestClient(app) as client:
        client.post("/v1/chat/completions", json={**Q, "user": "alice"})
        r = client.post("/v1/chat/completions", json={**Q, "user": "bob"})
    assert r.headers["x-tokenlane-cache"] == "hit" and provider.calls == 1


def test_concurrent_identical_misses_call_the_model_once(tmp_path):
    provider = CountingProvider()
    provider.time_scale, provider.ttft_s = 1.0, 0.2  # a model call that takes a while
    rt = Tokenlane(db=str(tmp_path / "ledger.db"), cache="exact")
    app = build_app(rt, provider=provider)

    async def run() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            replies = await asyncio.gather(*(client.post("/v1/chat/completions", json={**Q, "max_tokens": 5})
                                             for _ in range(4)))
        return sorted(r.headers["x-tokenlane-cache"] for r in replies)
    assert asyncio.run(run()) == ["hit", "hit", "hit", "miss"]
    assert provider.calls == 1


def test_tier_caps_413_clamp_and_trim(tmp_path):
    rt, provider, app = make(tmp_path, tier_caps={"free": {"max_input_tokens": 50, "max_output_tokens": 20},
                                                  "pro": {"max_output_tokens": 1000}},
                             tenant_tiers={"anonymous": "free"}, route_settings={"^/v1/trimmed": {"trim": True}})
    long = [{"role": "user", "content": "tell me about queues " * 20}]
    with TestClient(app) as client:
        too_big = client.post("/v1/chat/completions", json={**Q, "messages": long, "user": "alice"})
        clamped = client.post("/v1/chat/completions", json={**Q, "max_tokens": 500, "user": "alice"})
        injected = client.post("/v1/chat/completions",
                               json={"model": "gpt-4o-mini", "messages": Q["messages"], "user": "zed"},
                               headers={"x-tokenlane-tier": "pro"})
        bad_tier = client.post("/v1/chat/completions", json=Q, headers={"x-tokenlane-tier": "gold"})
    exact = tokenlane.count_chat_tokens(long, "gpt-4o-mini")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["message"] == f"the prompt has {exact} tokens; tier 'free' accepts at most 50"
    assert clamped.headers["x-tokenlane-max-tokens-clamped"] == "20"
    assert clamped.json()["usage"]["completion_tokens"] <= 20
    assert rt.ledger.get_request(clamped.headers["x-tokenlane-request-id"])["max_tokens"] == 20
    assert injected.headers["x-tokenlane-max-tokens-clamped"] == "1000"
    assert bad_tier.status_code == 400 and bad_tier.json()["error"]["param"] == "X-Tokenlane-Tier"


def test_trimmed_route_records_tokens_before_and_after(tmp_path):
    rt, provider, app = make(tmp_path, tier_caps={"free": {"max_input_tokens": 60}}, default_tier="free",
                             route_settings={"/trimmed/": {"trim": True}})
    seen = []

    @app.post("/trimmed/chat/completions")
    async def trimmed(request: Request):
        body = await request.json()
        seen.append(body["messages"])
        return await provider.chat(body)

    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i} " + "blah " * 8}, {"role": "assistant", "content": "ok " * 8}]
    msgs.append({"role": "user", "content": "last?"})
    with TestClient(app) as client:
        r = client.post("/trimmed/chat/completions", json={**Q, "messages": msgs})
    assert r.status_code == 200, r.text
    sent = tokenlane.count_chat_tokens(seen[0], "gpt-4o-mini")
    assert sent <= 60 and seen[0][0] == msgs[0] and seen[0][-1] == msgs[-1]
    row = rt.ledger.get_request(r.headers["x-tokenlane-request-id"])
    assert row["untrimmed_input_tokens"] == tokenlane.count_chat_tokens(msgs, "gpt-4o-mini")
    assert row["est_input_tokens"] == sent == r.json()["usage"]["prompt_tokens"]
