"""Upstream providers: retries with Retry-After, the circuit breaker, the simulated provider."""

import asyncio
import json
import random

import httpx
import pytest

import tokenlane
from tokenlane.providers import (
    CircuitBreaker,
    CircuitOpenError,
    OpenAICompatibleProvider,
    ProviderError,
    RetryPolicy,
    SimulatedProvider,
    UsageReports,
    _current_reports,
    parse_retry_after,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Give me a list of three fruits"}]}


def test_parse_retry_after_forms():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    policy = RetryPolicy(base_s=1.0, max_s=8.0)
    rng = random.Random(1)
    for attempt in range(6):
        d = policy.delay(attempt, None, rng)
        assert 0 <= d <= min(8.0, 2**attempt)
    assert policy.delay(0, 5.0, rng) == 5.0


def test_circuit_breaker_opens_then_half_opens():
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    breaker.check()
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match="retry in 10.0 s"):
        breaker.check()
    now[0] = 10.5
    assert breaker.state == "half-open"
    breaker.check()  # one trial may go
    breaker.failure()  # the trial failed: open again
    assert breaker.state == "open"
    now[0] = 21.0
    breaker.success()
    assert breaker.state == "closed"


def _provider(handler, **kw):
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAICompatibleProvider("http://upstream/v1", "sk-test", client=client,
                                    retry=RetryPolicy(base_s=0.001, max_s=0.002), seed=0, **kw)


def test_retries_429_with_retry_after_then_succeeds():
    calls = []

    def handler(request):
        calls.append(json.loads(request.content))
        if len(calls) < 3:
            return httpx.Response(429, headers={"retry-after-ms": "20"}, json={"error": {"message": "slow down"}})
        return httpx.Response(200, json={"model": "gpt-4o-mini", "choices": [{"message": {"content": "ok"}}],
                                         "usage": {"prompt_tokens": 9, "completion_tokens": 1}})

    async def run():
        reports = UsageReports()
        token = _current_reports.set(reports)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            resp = await _provider(handler).chat(CHAT)
            return resp, loop.time() - start, reports
        finally:
            _current_reports.reset(token)

    resp, elapsed, reports = asyncio.run(run())
    assert resp["choices"][0]["message"]["content"] == "ok"
    assert len(calls) == 3 and elapsed >= 0.04  # waited the server's 20 ms twice, not the 1-2 ms backoff
    assert reports.calls == [("gpt-4o-mini", {"prompt_tokens": 9, "completion_tokens": 1})]


def test_client_errors_are_not_retried():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "bad model"}})

    with pytest.raises(ProviderError) as info:
        asyncio.run(_provider(handler).chat(CHAT))
    assert info.value.status == 400 and info.value.body["error"]["message"] == "bad model"
    assert len(calls) == 1


def test_breaker_fails_fast_after_repeated_outages():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503)

    provider = _provider(handler, breaker=CircuitBreaker(threshold=2, cooldown_s=60))
    with pytest.raises(ProviderError):
        asyncio.run(provider.chat(CHAT))
    with pytest.raises(CircuitOpenError):
        asyncio.run(provider.chat(CHAT))
    assert len(calls) == 2


def test_stream_asks_for_usage_and_reports_it():
    seen = {}

    def handler(request):
        seen.update(json.loads(request.content))
        chunks = [{"choices": [{"delta": {"content": "hi"}}]},
                  {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}]
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    async def run():
        reports = UsageReports()
        token = _current_reports.set(reports)
        try:
            return [c async for c in _provider(handler).stream_chat({**CHAT, "stream": True})], reports
        finally:
            _current_reports.reset(token)

    chunks, reports = asyncio.run(run())
    assert seen["stream_options"] == {"include_usage": True}
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    assert reports.calls[0][1]["prompt_tokens"] == 4


def test_simulated_provider_counts_exactly_and_respects_max_tokens():
    sim = SimulatedProvider(time_scale=0)
    resp = asyncio.run(sim.chat({**CHAT, "max_tokens": 5}))
    text = resp["choices"][0]["message"]["content"]
    enc = tokenlane.encoding_for_model("gpt-4o-mini")
    assert resp["usage"]["completion_tokens"] == len(enc.encode(text))
    assert resp["usage"]["prompt_tokens"] == tokenlane.count_chat_tokens(CHAT["messages"], "gpt-4o-mini")
    assert resp["choices"][0]["finish_reason"] == "length" and resp["simulated"] is True
    again = asyncio.run(sim.chat({**CHAT, "max_tokens": 5}))
    assert again["choices"][0]["message"]["content"] == text  # same prompt, same answer


def test_simulated_stream_matches_its_usage():
    sim = SimulatedProvider(time_scale=0)

    async def run():
        return [c async for c in sim.stream_chat({**CHAT, "stream": True, "stream_options": {"include_usage": True}})]

    chunks = asyncio.run(run())
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(tokenlane.encoding_for_model("gpt-4o-mini").encode(text))


def test_openai_sdk_hook_reports_json_and_stream_usage():
    from tokenlane.providers import UsageReportingTransport

    def handler(request):
        body = json.loads(request.content)
        if body.get("stream"):
            assert body["stream_options"] == {"include_usage": True}  # added by the hook
            chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o",
                       "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
                      {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o",
                       "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}]
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}})

    async def run():
        import openai

        reports = UsageReports()
        token = _current_reports.set(reports)
        try:
            http = httpx.AsyncClient(transport=UsageReportingTransport(httpx.MockTransport(handler)))
            client = openai.AsyncOpenAI(base_url="http://up/v1", api_key="sk", http_client=http)
            msgs = [{"role": "user", "content": "hello"}]
            reply = await client.chat.completions.create(model="gpt-4o", messages=msgs)
            stream = await client.chat.completions.create(model="gpt-4o", messages=msgs, stream=True)
            chunks = [c async for c in stream]
            return reply, chunks, reports
        finally:
            _current_reports.reset(token)

    reply, chunks, reports = asyncio.run(run())
    assert reply.choices[0].message.content == "ok"
    assert all(c.choices for c in chunks)  # the usage-only chunk the caller did not ask for is gone
    assert [u["completion_tokens"] for _, u in reports.calls] == [2, 1]
