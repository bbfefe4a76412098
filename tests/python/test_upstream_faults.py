"""Upstream faults, end to end: a local HTTP server that misbehaves on purpose (a raw asyncio server,
so it can reset connections and cut streams) behind tokenlane's OpenAI-compatible provider, called
by an app behind the middleware with its real SQLite ledger.

For each fault: the retries (bounded, honouring Retry-After), the circuit breaker, the status the
client gets, and what the ledger charges (a cut stream for what was relayed, failed attempts that
the provider does not bill at nothing)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

import tokenlane
from tokenlane import Tokenlane
from tokenlane.providers import CircuitBreaker, OpenAICompatibleProvider, RetryPolicy

from middleware_app import build_app

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a colour"}], "max_tokens": 20}


def _json_ok(usage: bool = True) -> dict:
    body = {"id": "chatcmpl-fault", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Teal is calm."},
                         "finish_reason": "stop"}]}
    if usage:
        body["usage"] = USAGE
    return body


def _chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "model": "gpt-4o-mini",
                                   "choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


@dataclass
class FaultyUpstream:
    """Answers each request with the next fault of `script` ("ok" once the script is used up)."""

    script: list[str] = field(default_factory=list)
    seen: list[tuple[float, str]] = field(default_factory=list)  # (arrival time, fault served)
    port: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        request = json.loads(await reader.readexactly(length))
        fault = self.script.pop(0) if self.script else "ok"
        self.seen.append((time.monotonic(), fault))

        def respond(status: str, body: bytes, extra: str = "", content_type: str = "application/json") -> None:
            writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                         f"connection: close\r\n{extra}\r\n".encode() + body)

        if fault == "429":
            respond("429 Too Many Requests", b'{"error": {"message": "slow down"}}', "retry-after: 1\r\n")
        elif fault in ("500", "503"):
            respond(f"{fault} Oops", b'{"error": {"message": "upstream trouble"}}')
        elif fault == "reset":
            writer.transport.abort()  # no response at all: the connection just goes away
            return
        elif fault == "hang":
            await asyncio.sleep(5)  # longer than the client's timeout: nothing before the first byte
        elif fault == "malformed":
            respond("200 OK", b'{"id": "x", "choices": [')
        elif fault == "no_usage":
            respond("200 OK", json.dumps(_json_ok(usage=False)).encode())
        elif request.get("stream"):
            # Chunked, as real providers send streams: a cut connection is then a visible error, not
            # an ordinary end of body.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                         b"connection: close\r\n\r\n")

            def send_chunk(data: bytes) -> None:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))

            words = ["Teal ", "is ", "a ", "calm ", "colour."]
            for i, word in enumerate(words):
                send_chunk(_chunk(word))
                await writer.drain()
                if fault == "cut" and i == 2:
                    writer.transport.abort()  # cut mid-way: 3 chunks relayed, no usage chunk, no [DONE]
                    return
                if fault == "slow":
                    await asyncio.sleep(0.3)
            send_chunk(b"data: " + json.dumps({"object": "chat.completion.chunk", "model": "gpt-4o-mini",
                                               "choices": [], "usage": USAGE}).encode() + b"\n\ndata: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
        else:
            respond("200 OK", json.dumps(_json_ok()).encode())
        try:
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)


@pytest.fixture(scope="module")
def upstream():
    up = FaultyUpstream()
    up.start()
    return up


@pytest.fixture
def setup(upstream, tmp_path):
    upstream.script.clear()
    upstream.seen.clear()
    provider = OpenAICompatibleProvider(
        f"http://127.0.0.1:{upstream.port}/v1", api_key="test", timeout_s=0.5,
        retry=RetryPolicy(max_retries=3, base_s=0.01, max_s=0.05, max_total_wait_s=5.0),
        breaker=CircuitBreaker(threshold=4, cooldown_s=0.5))
    rt = Tokenlane(db=str(tmp_path / "ledger.db"))
    with TestClient(build_app(rt, provider=provider), raise_server_exceptions=False) as client:
        yield client, rt, upstream, provider


def row_of(rt, response):
    return rt.ledger.get_request(response.headers["x-tokenlane-request-id"])


def cost_of(rt, input_tokens, output_tokens):
    return rt.pricing.cost("gpt-4o-mini", input_tokens=input_tokens, output_tokens=output_tokens).total_pico_usd


def test_429_storm_is_retried_after_retry_after_and_charged_once(setup):
    client, rt, up, _ = setup
    up.script[:] = ["429", "429"]
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    times = [t for t, _ in up.seen]
    assert [f for _, f in up.seen] == ["429", "429", "ok"]
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # Retry-After: 1 honoured
    row = row_of(rt, r)
    # The two refused attempts are not billed by the provider; the one that answered is, once.
    assert row["status"] == "succeeded" and row["cost_pico_usd"] == cost_of(rt, 11, 7)


def test_retries_are_bounded_and_the_client_gets_the_upstreams_status(setup):
    client, rt, up, _ = setup
    up.script[:] = ["503"] * 10
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.json()["error"]["type"] == "upstream_error"
    assert len(up.seen) == 4  # the first try and max_retries = 3
    row = row_of(rt, r)
    assert row["status"] == "failed" and row["cost_pico_usd"] == 0
    assert rt.usage("anonymous")["reserved_pico_usd"] == 0


@pytest.mark.parametrize("fault", ["500", "reset", "hang"])
def test_transient_faults_are_retried(setup, fault):
    client, rt, up, _ = setup
    up.script[:] = [fault]
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert [f for _, f in up.seen] == [fault, "ok"]
    assert row_of(rt, r)["cost_pico_usd"] == cost_of(rt, 11, 7)


def test_the_circuit_opens_after_repeated_failures_and_closes_after_the_cool_down(setup):
    client, rt, up, provider = setup
    up.script[:] = ["500"] * 4
    first = client.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 502 and provider.breaker.state == "open"
    served = len(up.seen)
    fast = client.post("/v1/chat/completions", json=CHAT)
    assert fast.status_code == 503 and "circuit open" in fast.json()["error"]["message"]
    assert int(fast.headers["retry-after"]) >= 1
    assert len(up.seen) == served  # failing fast: the upstream was not called
    time.sleep(0.6)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # half-open trial succeeds
    assert provider.breaker.state == "closed"
    for r in (first, fast):
        assert row_of(rt, r)["status"] == "failed" and row_of(rt, r)["cost_pico_usd"] == 0


def test_malformed_json_is_a_502_not_a_crash(setup):
    client, rt, up, _ = setup
    up.script[:] = ["malformed"]
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and "not a JSON object" in r.json()["error"]["message"]
    assert row_of(rt, r)["status"] == "failed"
    assert rt.usage("anonymous")["reserved_pico_usd"] == 0


def test_missing_usage_is_counted_from_the_text(setup):
    client, rt, up, _ = setup
    up.script[:] = ["no_usage"]
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    row = row_of(rt, r)
    out_tokens = tokenlane.encoding_for_model("gpt-4o-mini").count("Teal is calm.")  # exact: the model's tokenizer
    assert row["output_tokens"] == out_tokens and row["input_tokens"] == row["est_input_tokens"]
    assert row["cost_pico_usd"] == cost_of(rt, row["est_input_tokens"], out_tokens)


def test_a_stream_cut_mid_way_is_charged_for_what_was_relayed(setup):
    client, rt, up, _ = setup
    up.script[:] = ["cut"]
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        text = b"".join(r.iter_raw()) if r.status_code == 200 else b""
        rid = r.headers["x-tokenlane-request-id"]
    assert b"Teal " in text and b"[DONE]" not in text
    row = rt.ledger.get_request(rid)
    relayed = tokenlane.encoding_for_model("gpt-4o-mini").count("Teal is a ")
    assert row["status"] == "failed"
    assert row["output_tokens"] == relayed  # what the client got, not 0 and not the whole answer
    assert row["cost_pico_usd"] == cost_of(rt, row["est_input_tokens"], relayed) > 0
    assert rt.usage("anonymous")["reserved_pico_usd"] == 0


def test_a_slow_stream_flows_and_is_charged_from_its_usage_chunk(setup):
    client, rt, up, _ = setup
    up.script[:] = ["slow"]
    arrivals = []
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        for chunk in r.iter_raw():
            if b"Teal" in chunk or b"calm" in chunk:
                arrivals.append(time.monotonic())
        rid = r.headers["x-tokenlane-request-id"]
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] > 0.5  # relayed as it came, not buffered
    row = rt.ledger.get_request(rid)
    assert row["status"] == "succeeded" and row["cost_pico_usd"] == cost_of(rt, 11, 7)


def test_provider_errors_map_to_openai_shaped_statuses():
    from tokenlane.providers import ProviderError

    assert ProviderError("x", status=429, retry_after_s=2.2).response()[0::2] == (429, {"retry-after": "3"})
    assert ProviderError("x", status=500).response()[0] == 502
    assert ProviderError("x", status=400).response()[1]["error"]["type"] == "upstream_error"
