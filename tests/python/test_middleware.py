"""The ASGI middleware end to end: a FastAPI app with one add_middleware line, the real scheduler,
estimator and SQLite ledger, the simulated provider; plus the official openai SDK over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

import tokenlane
from tokenlane import Tokenlane

from middleware_app import build_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "List three colours"}], "max_tokens": 40}


@pytest.fixture
def runtime(store):
    return Tokenlane(**store)


def rows(rt):
    return rt.ledger.list_requests(limit=1000)


def test_one_line_defaults_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with TestClient(build_app()) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert client.get("/health").json() == {"status": "ok"}
    assert (tmp_path / "tokenlane.db").exists()  # the default ledger, in the working directory


def test_json_request_is_priced_recorded_and_learned(runtime):
    with TestClient(build_app(runtime)) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    rid = r.headers["x-tokenlane-request-id"]
    cost = runtime.pricing.cost("gpt-4o-mini", input_tokens=usage["prompt_tokens"],
                                output_tokens=usage["completion_tokens"])
    assert r.headers["x-tokenlane-cost"] == str(cost.decimal)
    assert float(r.headers["x-tokenlane-estimated-cost"]) > 0
    assert float(r.headers["x-tokenlane-queue-ms"]) >= 0
    row = runtime.ledger.get_request(rid)
    # `user` names the end user inside the payer (here the anonymous principal), never a payer.
    assert row["status"] == "succeeded" and (row["tenant"], row["end_user"]) == ("anonymous", "alice")
    assert (row["input_tokens"], row["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost_pico_usd"] == cost.total_pico_usd
    assert row["est_input_tokens"] == usage["prompt_tokens"]  # the pre-call count was exact
    assert runtime.usage("anonymous")["requests"] == 1
    assert runtime.usage("anonymous/user:alice")["spent_pico_usd"] == cost.total_pico_usd


def test_streaming_is_charged_from_the_usage_chunk_the_client_never_sees(runtime):
    with TestClient(build_app(runtime)) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            raw = b"".join(r.iter_bytes())
            rid = r.headers["x-tokenlane-request-id"]
    chunks = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]
    assert chunks and all(c["choices"] for c in chunks)  # the usage-only chunk was not forwarded
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    row = runtime.ledger.get_request(rid)
    assert row["status"] == "succeeded"
    assert row["output_tokens"] == len(tokenlane.encoding_for_model("gpt-4o-mini").encode(text))
    assert row["cost_pico_usd"] > 0


def test_streaming_client_that_asked_for_usage_gets_it(runtime):
    with TestClient(build_app(runtime)) as client:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = b"".join(r.iter_bytes())
    assert b'"usage": {"prompt_tokens"' in raw


def test_handler_that_calls_the_model_is_charged_what_it_reported(runtime):
    with TestClient(build_app(runtime)) as client:
        r = client.post("/ask", json={"question": "Explain queues in one sentence"})
    assert r.status_code == 200
    row = runtime.ledger.get_request(r.headers["x-tokenlane-request-id"])
    # The handler's own body has no usage: the tokens come from the provider's report of its call.
    assert row["output_tokens"] == len(tokenlane.encoding_for_model("gpt-4o-mini").encode(r.json()["answer"]))
    assert row["status"] == "succeeded" and row["cost_pico_usd"] > 0


@pytest.mark.parametrize(
    "content, headers, status, code",
    [
        (b"{not json", {}, 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), {}, 400, None),
        (json.dumps({**CHAT, "model": "no-such-model-9"}).encode(), {}, 400, "model_not_found"),
        (json.dumps(CHAT).encode(), {"x-tokenlane-priority": "urgent"}, 400, None),
        (json.dumps(CHAT).encode(), {"x-tokenlane-deadline-ms": "-5"}, 400, None),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}).encode(), {}, 400, None),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}).encode(),
         {}, 400, None),
    ],
)
def test_bad_requests_get_openai_shaped_4xx(runtime, content, headers, status, code):
    with TestClient(build_app(runtime)) as client:
        r = client.post("/v1/chat/completions", content=content,
                        headers={"content-type": "application/json", **headers})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"] == code


def test_oversized_body_is_refused_before_it_is_read(store):
    rt = Tokenlane(**store, max_body_bytes=1000)
    with TestClient(build_app(rt)) as client:
        r = client.post("/v1/chat/completions",
                        json={**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_prompt_over_the_token_cap_is_413(store):
    rt = Tokenlane(**store, max_input_tokens=50)
    with TestClient(build_app(rt)) as client:
        r = client.post("/v1/chat/completions",
                        json={**CHAT, "messages": [{"role": "user", "content": "word " * 200}]})
    assert r.status_code == 413 and "at most 50" in r.json()["error"]["message"]


def test_budget_refusal_is_429_insufficient_quota_with_retry_after(store):
    rt = Tokenlane(**store, budget_usd="0.00006", budget_window="day")
    with TestClient(build_app(rt)) as client:
        statuses = [client.post("/v1/chat/completions", json={**CHAT, "user": "bob"}) for _ in range(6)]
    refused = [r for r in statuses if r.status_code == 429]
    assert refused, [r.status_code for r in statuses]
    assert refused[0].json()["error"]["code"] == "insufficient_quota"
    assert int(refused[0].headers["retry-after"]) >= 1
    usage = rt.usage("bob")
    assert usage["spent_pico_usd"] <= 60_000_000 and usage["reserved_pico_usd"] == 0


@pytest.mark.parametrize("reserve", ["p90", "max"])
def test_300_concurrent_requests_never_overspend_and_leak_nothing(store, reserve):
    limit_pico = 3_000_000_00  # $0.0003 for the tenant: room for a fraction of the 300 requests
    rt = Tokenlane(**store, budget_usd="0.0003", max_wait_s=30, budget_reserve=reserve)
    app = build_app(rt)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def one(i):
                body = {**CHAT, "max_tokens": 12, "user": "team",
                        "messages": [{"role": "user", "content": f"Request {i}: list colours"}]}
                return await client.post("/v1/chat/completions", json=body)
            return await asyncio.gather(*(one(i) for i in range(300)))

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(200) > 0 and codes.count(429) > 0
    usage = rt.usage("anonymous")
    recorded = rows(rt)
    assert len(recorded) == 300  # a ledger row for every request that got a response
    for level in ("anonymous", "anonymous/user:team"):  # charged at every level, nothing left reserved
        u = rt.usage(level)
        assert (u["spent_pico_usd"], u["reserved_pico_usd"]) == (sum(r["cost_pico_usd"] or 0 for r in recorded), 0)
    # Admission reserves the p90 cost, so spend may pass the budget only by what admitted requests
    # cost beyond their reservations, and never by more.
    beyond = sum(max(0, r["cost_pico_usd"] - r["reserved_pico_usd"]) for r in recorded if r["status"] == "succeeded")
    assert usage["spent_pico_usd"] <= limit_pico + beyond
    if reserve == "max":  # worst-case reservations: the budget is a hard cap
        assert usage["spent_pico_usd"] <= limit_pico


def test_queued_request_waits_without_blocking_and_reports_queue_time(store):
    from tokenlane.providers import SimulatedProvider

    rt = Tokenlane(**store, max_concurrency=1)
    app = build_app(rt, provider=SimulatedProvider(ttft_s=0.05, tokens_per_s=2000))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT) for _ in range(3)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200, 200, 200]
    waits = sorted(float(r.headers["x-tokenlane-queue-ms"]) for r in responses)
    # One slot, three requests at once: someone waited for another's >= 50 ms of service, and the
    # waits differ (lower bounds only, so a loaded machine cannot make this fail).
    assert waits[-1] >= 45 and waits[0] < waits[-1]


def test_client_disconnect_mid_stream_is_charged_and_releases(store):
    from tokenlane.providers import SimulatedProvider

    rt = Tokenlane(**store, budget_usd="1")
    app = build_app(rt, provider=SimulatedProvider(ttft_s=0, tokens_per_s=500))
    body = json.dumps({**CHAT, "max_tokens": 400, "stream": True,
                       "messages": [{"role": "user", "content": "Write an essay about tea"}]}).encode()

    async def main():
        sent = []
        gone = asyncio.Event()

        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        chunks = []

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) == 5:
                    gone.set()
                    raise OSError("client went away")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("test", 80),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                             (b"authorization", b"Bearer sk-client")]}
        with pytest.raises(OSError):
            await app(scope, receive, send)

    asyncio.run(main())
    (row,) = rows(rt)
    assert row["status"] == "failed" and row["output_tokens"] > 0 and row["cost_pico_usd"] > 0
    assert row["input_tokens"] > 0  # a stream cut short still paid for its prompt
    usage = rt.usage(row["tenant"])
    assert usage["reserved_pico_usd"] == 0 and usage["spent_pico_usd"] == row["cost_pico_usd"]


def test_usage_route_and_metrics(runtime):
    with TestClient(build_app(runtime)) as client:
        client.post("/v1/chat/completions", json={**CHAT, "user": "carol"})
        mine = client.get("/tokenlane/usage").json()  # the caller: anonymous, with its end users
        assert mine["principal"] == "anonymous" and mine["requests"] == 1
        assert [u["end_user"] for u in mine["end_users"]] == ["carol"]
        usage = client.get("/tokenlane/usage", params={"user": "carol"}).json()
        assert set(usage) >= {"spent_usd", "reserved_usd", "remaining_usd", "requests"}
        assert usage["spent_usd"] == mine["spent_usd"] > 0 and usage["reserved_usd"] == 0
        metrics = client.get("/metrics").text
    assert 'tokenlane_requests_total{decision="admit"' in metrics
    assert 'gen_ai_token_type="output"' in metrics


def test_submitted_job_runs_in_the_background(runtime):
    with TestClient(build_app(runtime)) as client:
        async def submit():
            return await runtime.submit("/v1/chat/completions", CHAT, tenant="dave", user_id=None)

        job = client.portal.call(submit)
        assert job["decision"] == "admit" and job["status_url"].endswith(job["id"])
        for _ in range(100):
            view = client.get(job["status_url"]).json()
            if view["status"] == "succeeded":
                break
            time.sleep(0.02)
    assert view["status"] == "succeeded" and view["response"]["usage"]["completion_tokens"] > 0
    assert runtime.ledger.get_request(job["id"])["tenant"] == "dave"


@pytest.fixture
def server(store):
    """The app behind a real uvicorn server on a loopback port."""
    rt = Tokenlane(**store, end_user_budget_usd="0.000001")
    config = uvicorn.Config(build_app(rt), host="127.0.0.1", port=_free_port(), log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{config.port}/v1", rt
    srv.should_exit = True
    thread.join(5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_official_openai_sdk_normal_streamed_and_refused(server):
    base_url, rt = server
    client = openai.OpenAI(base_url=base_url, api_key="sk-anything", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], max_tokens=30)
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], user="poor")
    assert info.value.code == "insufficient_quota"
    # The stream's row is final once the app's last (empty) chunk is through, which may be just
    # after the client read the end marker: give the ledger thread a moment.
    deadline = time.monotonic() + 5
    while sorted(r["status"] for r in rows(rt)) != ["rejected", "succeeded", "succeeded"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(r["status"] for r in rows(rt)) == ["rejected", "succeeded", "succeeded"], rows(rt)


def test_rate_limit_headers_follow_openai_names(store):
    rt = Tokenlane(**store, rpm=100, tpm=100_000)
    with TestClient(build_app(rt)) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
    assert r.headers["x-ratelimit-limit-requests"] == "100"
    assert int(r.headers["x-ratelimit-remaining-requests"]) == 99
    assert r.headers["x-ratelimit-limit-tokens"] == "100000"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


@pytest.mark.parametrize("freeze", [True, False])
def test_gc_freeze_freezes_the_startup_heap_once_per_process(store, monkeypatch, freeze):
    import tokenlane.asgi as asgi

    frozen = []
    monkeypatch.setattr(asgi, "_gc_frozen", False)  # as in a fresh process
    monkeypatch.setattr(asgi.gc, "freeze", lambda: frozen.append(True))
    with TestClient(build_app(Tokenlane(**store, gc_freeze=freeze))) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.get("/health").status_code == 200
    assert frozen == ([True] if freeze else [])
