"""Several upstreams and fallback chains, against real local fault-injecting servers over HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from loopback import serve
from tokenlane import Pricing
from tokenlane.providers import SimulatedProvider, UsageReports, _current_reports
from tokenlane.upstream_server import Faults, upstream_app
from tokenlane.upstreams import AllUpstreamsFailed, Upstreams, UpstreamConfigError, to_anthropic

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Give me a list of three fruits"}],
        "max_tokens": 40}


async def call(upstreams, body, stream=False):
    """One call in its own accounting context: (answer or chunks, reports); an error lands in
    reports.error (a stream cut mid-way surfaces after some chunks)."""
    reports = UsageReports()
    reports.error = None
    token = _current_reports.set(reports)
    result = [] if stream else None
    try:
        if stream:
            async for c in upstreams.stream_chat(body):
                result.append(c)
        else:
            result = await upstreams.chat(body)
    except Exception as exc:  # noqa: BLE001
        reports.error = exc
    finally:
        _current_reports.reset(token)
    return result, reports


def calls(upstreams, *bodies, stream=False):
    """Each body through ``upstreams`` in turn, on one event loop; the clients are closed after."""
    async def go():
        try:
            return [await call(upstreams, b, bool(b.get("stream")) if stream is None else stream) for b in bodies]
        finally:
            await upstreams.aclose()
    return asyncio.run(go())


@pytest.fixture
def two_upstreams():
    primary, backup = Faults(), Faults()
    sim = SimulatedProvider(time_scale=0)
    with serve(upstream_app(sim, primary)) as a, serve(upstream_app(sim, backup)) as b:
        config = [
            {"name": "primary", "base_url": a + "/v1", "models": ["gpt-4o", "gpt-4.1"], "max_retries": 0},
            {"name": "backup", "base_url": b + "/v1", "models": ["gpt-4o-mini", "claude-*"], "max_retries": 0},
        ]
        yield config, primary, backup


def test_429_falls_back_to_the_next_model_and_every_attempt_is_accounted(two_upstreams):
    config, primary, backup = two_upstreams
    primary.statuses = [429]
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]}, pricing=Pricing.default())
    [(reply, reports)] = calls(ups, CHAT)
    assert reply["model"] == "gpt-4o-mini" and reply["choices"][0]["message"]["content"]
    assert [a["outcome"] for a in reports.attempts] == ["HTTP 429", "ok"]
    assert reports.served_model == "gpt-4o-mini"
    # the refused attempt was not billed; the answer was, at the model that gave it
    assert [m for m, _ in reports.calls] == ["gpt-4o-mini"]
    assert len(primary.log) == 1 and len(backup.log) == 1


def test_5xx_on_every_model_fails_with_the_attempts(two_upstreams):
    config, primary, backup = two_upstreams
    primary.statuses, backup.statuses = [503], [500]
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    [(_, reports)] = calls(ups, CHAT)
    error = reports.error
    assert isinstance(error, AllUpstreamsFailed) and error.status == 500
    assert [a["outcome"] for a in error.attempts] == ["HTTP 503", "HTTP 500"] == [a["outcome"] for a in reports.attempts]


def test_400_is_not_a_reason_to_fall_back(two_upstreams):
    config, primary, _ = two_upstreams
    primary.statuses = [400]
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    [(_, reports)] = calls(ups, CHAT)
    assert getattr(reports.error, "status", None) == 400 and len(reports.attempts) == 1


def test_context_too_long_goes_to_a_longer_context_model(two_upstreams):
    config, primary, backup = two_upstreams
    primary.context_limit = 5  # the upstream says so (400 context_length_exceeded)
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    [(reply, reports)] = calls(ups, CHAT)
    assert reply["model"] == "gpt-4o-mini" and reports.attempts[0]["outcome"] == "HTTP 400"
    # known from the price table before any call: a 2,000,000-token prompt fits no gpt-4o
    pricing = Pricing.default().with_overrides({"models": {"gpt-4o": {"max_input_tokens": 4}}})
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4.1"]}, pricing=pricing)
    primary.context_limit = None
    [(reply, reports)] = calls(ups, CHAT)
    assert reply["model"] == "gpt-4.1" and reports.attempts[0]["outcome"] == "context too small"
    assert len([e for e in primary.log if e["model"] == "gpt-4o"]) == 1  # only the first test's call


def test_a_stream_cut_short_is_billed_and_the_next_model_answers(two_upstreams):
    config, primary, backup = two_upstreams
    primary.cut_stream_after = 2
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    body = {**CHAT, "stream": True}
    primary.statuses = [None, 502]  # the first call streams (and is cut); the second fails first
    # The cut happened after the first chunk was accepted: the stream ends early, and what the
    # provider generated up to the cut is charged (counted from the streamed text).
    (chunks, reports), second = calls(ups, body, body, stream=True)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert reports.error is not None and len(primary.log) == 2 and len(backup.log) == 1
    assert text and reports.calls and reports.calls[0][0] == "gpt-4o"
    assert reports.calls[0][1]["completion_tokens"] > 0
    # A stream that fails before its first chunk falls back.
    chunks, reports = second
    assert chunks[0]["model"] == "gpt-4o-mini" and [a["outcome"] for a in reports.attempts] == ["HTTP 502", "ok"]


def test_open_circuit_skips_the_upstream(two_upstreams):
    config, primary, backup = two_upstreams
    config[0]["breaker_threshold"] = 1
    primary.statuses = [500]
    ups = Upstreams.from_config(config, fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    _, (_, reports) = calls(ups, CHAT, CHAT)  # after the first failure the breaker is open
    assert reports.attempts[0]["outcome"] == "HTTP 503" and len(primary.log) == 1


def test_config_errors_name_the_entry():
    with pytest.raises(UpstreamConfigError, match="kind must be one of"):
        Upstreams.from_config([{"name": "x", "kind": "grpc"}])
    with pytest.raises(UpstreamConfigError, match="base_url is required"):
        Upstreams.from_config([{"name": "x"}])
    with pytest.raises(UpstreamConfigError, match="unknown key"):
        Upstreams.from_config([{"name": "x", "kind": "simulated", "colour": 1}])


def anthropic_app(seen):
    """A local server speaking Anthropic's Messages API (JSON and SSE), answering from the simulator."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    sim = SimulatedProvider(time_scale=0)

    async def messages(request):
        body = await request.json()
        seen.append((dict(request.headers), body))
        chat = {"model": body["model"], "messages": [{"role": "system", "content": body.get("system", "")}]
                + body["messages"], "max_tokens": body["max_tokens"]}
        answer = await sim.chat(chat)
        text = answer["choices"][0]["message"]["content"]
        usage = {"input_tokens": answer["usage"]["prompt_tokens"], "cache_read_input_tokens": 10,
                 "cache_creation_input_tokens": 0, "output_tokens": answer["usage"]["completion_tokens"]}
        if not body.get("stream"):
            return JSONResponse({"id": "msg_1", "type": "message", "model": body["model"], "role": "assistant",
                                 "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                 "usage": usage})

        async def events():
            def ev(name, data):
                return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            yield ev("message_start", {"type": "message_start", "message": {"usage": {
                k: v for k, v in usage.items() if k != "output_tokens"} | {"output_tokens": 1}}})
            for word in text.split(" "):
                yield ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                                          "text": word + " "}})
            yield ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": usage["output_tokens"]}})
            yield ev("message_stop", {"type": "message_stop"})
        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def test_anthropic_upstream_json_and_stream(monkeypatch):
    seen = []
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-test")
    with serve(anthropic_app(seen)) as base:
        ups = Upstreams.from_config([{"name": "anthropic", "kind": "anthropic", "base_url": base + "/v1",
                                      "api_key_env": "TEST_ANTHROPIC_KEY", "models": ["claude-*"]}])
        body = {"model": "claude-haiku-4-5", "max_tokens": 50,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit"}]}
        (reply, reports), (chunks, sreports) = calls(
            ups, body, {**body, "stream": True, "stream_options": {"include_usage": True}}, stream=None)
        headers, sent = seen[0]
        assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"]
        assert sent["system"] == "Be brief." and sent["messages"] == [{"role": "user", "content": "Name a fruit"}]
        assert reply["choices"][0]["message"]["content"] and reply["usage"]["prompt_tokens_details"]["cached_tokens"] == 10
        # the raw Anthropic usage is reported, so cache reads price at Anthropic's convention
        model, usage = reports.calls[0]
        assert model == "claude-haiku-4-5" and usage["cache_read_input_tokens"] == 10
        cost = Pricing.default().cost_of_usage(model, usage)
        assert cost.cached_input_tokens == 10 and cost.input_tokens == reply["usage"]["prompt_tokens"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text.strip() == reply["choices"][0]["message"]["content"].strip()
        assert chunks[-1]["usage"]["completion_tokens"] == reply["usage"]["completion_tokens"]
        assert sreports.calls[0][1]["output_tokens"] == reply["usage"]["completion_tokens"]


def test_to_anthropic_shapes():
    out = to_anthropic({"model": "claude-x", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                        "stop": "END", "max_completion_tokens": 9})
    assert out == {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
                   "stop_sequences": ["END"]}


def test_an_upstream_limits_its_calls_in_flight(two_upstreams):
    config, primary, _ = two_upstreams
    config[0]["max_concurrency"] = 1
    primary.delay_s = 0.2
    ups = Upstreams.from_config(config)

    async def go():
        try:
            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(call(ups, CHAT) for _ in range(3)))
            return asyncio.get_running_loop().time() - started
        finally:
            await ups.aclose()

    elapsed = asyncio.run(go())
    # one at a time: three 0.2 s calls cannot overlap (an ordering fact, not a speed claim)
    assert elapsed >= 0.6 and len(primary.log) == 3
