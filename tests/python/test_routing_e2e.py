"""Routing, fallbacks and the batch lane end to end: a real uvicorn server running an app behind the
middleware, whose handler calls real local OpenAI-shaped upstreams (with injected faults) through
tokenlane.upstreams; the official openai SDK and httpx as clients; the ledger checked row by row."""

from __future__ import annotations

import contextlib
import json
import time
from decimal import Decimal

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from loopback import serve
from tokenlane import Pricing, Tokenlane, TokenlaneMiddleware
from tokenlane.providers import OpenAICompatibleProvider, ProviderError, SimulatedProvider
from tokenlane.stages.identify import tenant_without_record
from tokenlane.upstream_server import Faults, upstream_app
from tokenlane.upstreams import Upstreams

HELLO = [{"role": "user", "content": "Say hello to the team"}]
CODE = [{"role": "user", "content": "Fix the bug in this Python function: def add(a, b): return a - b"}]


def proxy_app(runtime: Tokenlane, upstreams_config: list, fallbacks: dict, batch_url: str | None = None) -> FastAPI:
    """An OpenAI-compatible proxy route whose handler calls the upstreams itself; with ``batch_url``
    the runtime's batch lane uses that upstream's batch API."""
    holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        holder["ups"] = Upstreams.from_config(upstreams_config, fallbacks, pricing=runtime.pricing)
        batch_api = OpenAICompatibleProvider(batch_url) if batch_url else None
        if batch_api:
            runtime.use_batch_lane(batch_api, flush_after_s=0.05, poll_s=0.05)
        yield
        await holder["ups"].aclose()
        if batch_api:
            await runtime.batch.aclose()
            await batch_api.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        ups = holder["ups"]
        try:
            if body.get("stream"):
                gen = ups.stream_chat(body)
                first = await gen.__anext__()

                async def events():
                    yield f"data: {json.dumps(first)}\n\n"
                    async for chunk in gen:
                        yield f"data: {json.dumps(chunk)}\n\n"
                    yield "data: [DONE]\n\n"
                return StreamingResponse(events(), media_type="text/event-stream")
            return JSONResponse(await ups.chat(body))
        except ProviderError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "api_error", "code": "upstream_error"}},
                                status_code=exc.status)

    app.add_middleware(TokenlaneMiddleware, runtime=runtime)
    return app


@pytest.fixture
def upstreams():
    """Two real local upstreams: 'primary' serves the big models, 'backup' the small ones."""
    primary, backup = Faults(), Faults()
    sim = SimulatedProvider(time_scale=0)
    with serve(upstream_app(sim, primary)) as a, serve(upstream_app(sim, backup)) as b:
        config = [
            {"name": "primary", "base_url": a + "/v1", "models": ["gpt-4o", "gpt-4.1"], "max_retries": 0},
            {"name": "backup", "base_url": b + "/v1", "models": ["gpt-4o-mini"], "max_retries": 0},
        ]
        yield config, primary, backup


def row(rt: Tokenlane, request_id: str) -> dict:
    for _ in range(200):
        r = rt.ledger.get_request(request_id)
        if r and r["status"] not in ("running", "queued", "deferred"):
            return r
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} did not finish: {r}")


ROUTES = [
    {"name": "budget-pressure", "model": "gpt-4o-mini", "budget_remaining_below": 0.9},
    {"name": "expensive", "model": "gpt-4o-mini", "min_cost_usd": 0.01},
    {"name": "code", "model": "gpt-4.1", "models": ["auto"], "tasks": ["code"]},
]


def test_rules_route_by_task_cost_and_budget_pressure(tmp_path, upstreams):
    config, primary, backup = upstreams
    rt = Tokenlane(db=str(tmp_path / "l.db"), routes=ROUTES, model_groups={"auto": ["gpt-4o", "gpt-4o-mini"]})
    with serve(proxy_app(rt, config, {})) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        # task: "auto" with a coding prompt goes to the code rule's model
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=CODE, max_tokens=30)
        reply = raw.parse()
        assert raw.headers["x-tokenlane-model"] == "gpt-4.1" == reply.model
        assert raw.headers["x-tokenlane-route-rule"] == "code"
        r = row(rt, raw.headers["x-tokenlane-request-id"])
        assert (r["model"], r["requested_model"], r["route_rule"]) == ("gpt-4.1", "auto", "code")
        # the same group without a matching rule: its first model
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=HELLO, max_tokens=30)
        assert raw.headers["x-tokenlane-model"] == "gpt-4o" and "x-tokenlane-route-rule" not in raw.headers
        # cost: a prompt whose estimated cost at gpt-4o is over $0.01 is served by gpt-4o-mini
        long_prompt = [{"role": "user", "content": "Summarise this report. " + "The quarterly numbers rose. " * 900}]
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=long_prompt, max_tokens=30)
        assert raw.headers["x-tokenlane-model"] == "gpt-4o-mini" and raw.headers["x-tokenlane-route-rule"] == "expensive"
        r = row(rt, raw.headers["x-tokenlane-request-id"])
        assert r["requested_model"] == "gpt-4o" and r["model"] == "gpt-4o-mini"
        # the ledger charged the served model's price
        assert Decimal(raw.headers["x-tokenlane-cost"]) < Decimal("0.01")
        # budget pressure: the first request of a tight budget gets its model; once 10 % is spent,
        # the tenant is downgraded instead of refused
        tight = openai.OpenAI(base_url=base + "/v1", api_key="sk-tight", max_retries=0)
        rt.set_budget(tenant_without_record("sk-tight"), "0.001")
        first = tight.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=20)
        assert first.headers["x-tokenlane-model"] == "gpt-4o"
        second = tight.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=20)
        assert second.headers["x-tokenlane-model"] == "gpt-4o-mini"
        assert second.headers["x-tokenlane-route-rule"] == "budget-pressure"
    assert all(e["model"] != "gpt-4o-mini" for e in primary.log)
    by_rule = {r["rule"]: r for r in rt.report("rule")}
    assert {k: by_rule[k]["requests"] for k in ("code", "expensive", "budget-pressure")} == \
        {"code": 1, "expensive": 1, "budget-pressure": 1}
    assert by_rule["expensive"]["saved_usd"] > 0  # gpt-4o-mini instead of gpt-4o


def test_fallback_on_429_and_a_cut_stream_are_accounted(tmp_path, upstreams):
    config, primary, backup = upstreams
    rt = Tokenlane(db=str(tmp_path / "l.db"))
    pricing = Pricing.default()
    with serve(proxy_app(rt, config, {"gpt-4o": ["gpt-4o-mini"]})) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        primary.statuses = [429]
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=30)
        reply = raw.parse()
        assert reply.model == "gpt-4o-mini"
        assert (raw.headers["x-tokenlane-attempts"], raw.headers["x-tokenlane-fallback"],
                raw.headers["x-tokenlane-model"]) == ("2", "1", "gpt-4o-mini")
        r = row(rt, raw.headers["x-tokenlane-request-id"])
        assert (r["model"], r["requested_model"], r["attempts"], r["fallbacks"]) == ("gpt-4o-mini", "gpt-4o", 2, 1)
        usage = {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}
        assert r["cost_pico_usd"] == pricing.cost_of_usage("gpt-4o-mini", usage).total_pico_usd

        # A stream that fails before its first chunk falls back, and the headers say so.
        primary.statuses = [503]
        with httpx.stream("POST", base + "/v1/chat/completions", json={
                "model": "gpt-4o", "messages": HELLO, "max_tokens": 30, "stream": True}) as resp:
            text = resp.read().decode()
            assert resp.headers["x-tokenlane-model"] == "gpt-4o-mini" and resp.headers["x-tokenlane-attempts"] == "2"
        assert "[DONE]" in text
        # A stream cut off after two chunks: the provider billed what it generated, and so does the ledger.
        primary.cut_stream_after = 2
        with httpx.stream("POST", base + "/v1/chat/completions", json={
                "model": "gpt-4o", "messages": HELLO, "max_tokens": 60, "stream": True}) as resp:
            request_id = resp.headers["x-tokenlane-request-id"]
            with contextlib.suppress(httpx.HTTPError):
                resp.read()
        r = row(rt, request_id)
        assert r["status"] == "failed" and r["model"] == "gpt-4o" and r["attempts"] == 1
        assert r["output_tokens"] > 0 and r["cost_pico_usd"] > 0


def test_batch_lane_round_trip_at_the_batch_price(tmp_path):
    sim = SimulatedProvider(time_scale=0)
    with serve(upstream_app(sim)) as upstream:
        rt = Tokenlane(db=str(tmp_path / "l.db"))
        app = proxy_app(rt, [{"name": "sim", "kind": "simulated", "time_scale": 0}], {}, batch_url=upstream + "/v1")
        with serve(app) as base:
            body = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 30}
            live = httpx.post(base + "/v1/chat/completions", json=body)
            assert live.status_code == 200
            deferred = httpx.post(base + "/v1/chat/completions", json=body, headers={"x-tokenlane-priority": "batch"})
            assert deferred.status_code == 202, deferred.text
            job = deferred.json()
            assert job["reason"] == "batch_lane" and deferred.headers["location"] == job["status_url"]
            for _ in range(200):
                view = httpx.get(base + job["status_url"]).json()
                if view["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.05)
            assert view["status"] == "succeeded", view
            answer = view["response"]
            assert answer["choices"][0]["message"]["content"] == live.json()["choices"][0]["message"]["content"]
            r = row(rt, job["id"])
            assert r["batch"] == 1 and r["priority"] == "batch"
            usage = answer["usage"]
            pricing = Pricing.default()
            assert r["cost_pico_usd"] == pricing.cost_of_usage("gpt-4o-mini", usage, batch=True).total_pico_usd
            assert r["cost_pico_usd"] * 2 == pricing.cost_of_usage("gpt-4o-mini", usage).total_pico_usd
            assert len(rt.batch.lane.batches) == 1
            lanes = {r["lane"]: r for r in rt.report("lane")}
            assert lanes["batch"]["requests"] == 1 and lanes["live"]["requests"] == 1
            saved = Decimal(r["cost_pico_usd"]) / 10**12  # 50 % off: the saving equals the cost
            assert Decimal(str(lanes["batch"]["saved_usd"])) == Decimal(str(lanes["batch"]["cost_usd"])) == saved
