"""Upstream model calls for apps that do not call a model themselves (and for the example app).

* :class:`OpenAICompatibleProvider`: any OpenAI-compatible server (OpenAI, Azure OpenAI's v1 API,
  vLLM, Ollama, llama.cpp server, LiteLLM) over httpx, with timeouts, retries with jittered
  exponential backoff that honour ``Retry-After``, and a circuit breaker.
* :class:`SimulatedProvider`: a local stand-in with realistic token counts, streaming and latency,
  for demos and tests. Its responses say they are simulated (``system_fingerprint``, ``simulated``).

Both report each call's usage to the request tokenlane is accounting (see :func:`report_usage`),
which is how a handler that calls the model itself gets charged exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import hashlib
import json
import math
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx

from .formats import StreamReader, content_text, count_output_tokens, read_json_response

# --- usage reporting from inside a request ------------------------------------------------------


@dataclass
class UsageReports:
    """Usage of the upstream calls made while one request is being handled."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # upstream attempts (tokenlane.upstreams)
    served_model: str | None = None                                # the model that finally answered


_current_reports: ContextVar[UsageReports | None] = ContextVar("tokenlane_usage_reports", default=None)


def report_usage(model: str, usage: Mapping[str, Any]) -> bool:
    """Reports one upstream call's raw ``usage`` to the request tokenlane is accounting, if any.

    Call it wherever your handler calls a model (tokenlane's providers do it for you). Returns False
    when no tokenlane request is active (outside the middleware).
    """
    reports = _current_reports.get()
    if reports is None:
        return False
    reports.calls.append((model, dict(usage)))
    return True


# --- errors and retry policy --------------------------------------------------------------------


class ProviderError(Exception):
    """The upstream answered with an error (after retries), or could not be reached."""

    def __init__(self, message: str, status: int = 502, body: Any = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s

    def response(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """What to answer the client: (status, OpenAI-shaped body, headers). Register it for your
        framework, e.g. FastAPI: ``app.exception_handler(ProviderError)`` returning a JSONResponse."""
        status = self.status if self.status in (400, 401, 403, 404, 408, 409, 413, 422, 429) else \
            (503 if self.status == 503 else 502)
        kind = "rate_limit_exceeded" if status == 429 else "upstream_error"
        headers = {} if self.retry_after_s is None else {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}
        return status, {"error": {"message": str(self), "type": kind, "param": None, "code": kind}}, headers


class CircuitOpenError(ProviderError):
    """Too many consecutive failures: calls fail fast until the cool-down ends."""


RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is longer."""

    max_retries: int = 3
    base_s: float = 0.5
    max_s: float = 20.0
    max_total_wait_s: float = 60.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.max_s, self.base_s * (2**attempt)))
        return max(backoff, retry_after_s or 0.0)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown_s`` lets one trial through."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock=time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def check(self) -> None:
        if self.state == "open":
            assert self._opened_at is not None
            wait = self.cooldown_s - (self._clock() - self._opened_at)
            raise CircuitOpenError(
                f"upstream circuit open after {self._failures} consecutive failures; retry in {wait:.1f} s",
                status=503, retry_after_s=wait)

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self.threshold or self._opened_at is not None:
            self._opened_at = self._clock()


# --- OpenAI-compatible upstream -----------------------------------------------------------------


class OpenAICompatibleProvider:
    """Chat Completions against an OpenAI-compatible base URL (``.../v1``)."""

    simulated = False
    path = "/chat/completions"

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 client: Any = None, seed: int | None = None, send_max_tokens: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        # llama.cpp's server and other older OpenAI look-alikes ignore max_completion_tokens.
        self.send_max_tokens = send_max_tokens
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers)
        self._rng = random.Random(seed)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(body)
        if self.send_max_tokens and "max_completion_tokens" in out:
            out["max_tokens"] = out.pop("max_completion_tokens")
        return out

    async def _send(self, body: Mapping[str, Any], stream: bool):
        """POSTs with retries; returns an open response (status < 400) or raises ProviderError."""
        body = self._body(body)
        waited = 0.0
        attempt = 0
        while True:
            self.breaker.check()
            error: ProviderError
            try:
                request = self._client.build_request("POST", f"{self.base_url}{self.path}", json=body)
                response = await self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = ProviderError(f"upstream unreachable: {exc.__class__.__name__}: {exc}", status=502)
            else:
                if response.status_code < 400:
                    self.breaker.success()
                    return response
                content = await response.aread()
                await response.aclose()
                try:
                    payload: Any = json.loads(content)
                except ValueError:
                    payload = content.decode("utf-8", "replace")
                error = ProviderError(f"upstream answered {response.status_code}", status=response.status_code,
                                      body=payload, retry_after_s=parse_retry_after(response.headers))
                if response.status_code not in RETRY_STATUSES:
                    raise error  # the request itself is wrong: retrying cannot help, and it is no outage
            self.breaker.failure()
            delay = self.retry.delay(attempt, error.retry_after_s, self._rng)
            if attempt >= self.retry.max_retries or waited + delay > self.retry.max_total_wait_s:
                raise error
            attempt += 1
            waited += delay
            await asyncio.sleep(delay)

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        response = await self._send({**body, "stream": False}, stream=False)
        try:
            data = json.loads(await response.aread())
        except ValueError:
            data = None
        except httpx.HTTPError as exc:  # the connection broke while the body was being read
            self.breaker.failure()
            raise ProviderError(f"upstream response cut short: {exc.__class__.__name__}", status=502) from None
        finally:
            await response.aclose()
        if not isinstance(data, dict):
            raise ProviderError("upstream answered 200 with a body that is not a JSON object", status=502)
        if isinstance(data.get("usage"), Mapping):
            report_usage(data.get("model") or body.get("model", ""), data["usage"])
        return data

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # without it the stream carries no usage at all
        response = await self._send({**body, "stream": True, "stream_options": options}, stream=True)
        usage = None
        text: list[str] = []
        try:
            buffer = b""
            try:
                async for raw in response.aiter_bytes():
                    *events, buffer = re.split(rb"\r?\n\r?\n", buffer + raw)
                    for event in events:
                        chunk = _sse_json(event)
                        if chunk is not None:
                            usage = chunk.get("usage") or usage
                            for choice in chunk.get("choices") or ():
                                piece = (choice.get("delta") or {}).get("content") if isinstance(choice, Mapping) else None
                                if isinstance(piece, str):
                                    text.append(piece)
                            yield chunk
            except httpx.HTTPError as exc:  # cut mid-way: what was generated so far is counted below
                self.breaker.failure()
                raise ProviderError(f"upstream stream cut short: {exc.__class__.__name__}", status=502) from None
        finally:
            await response.aclose()
            if not isinstance(usage, Mapping):
                # Some servers (llama.cpp's) send no usage in streams: count what was streamed, exactly.
                usage = counted_usage(body, "".join(text))
            report_usage(body.get("model", ""), usage)

    # -- the batch API (OpenAI's /v1/files + /v1/batches shape) -----------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        self.breaker.check()
        try:
            response = await self._client.request(method, f"{self.base_url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            self.breaker.failure()
            raise ProviderError(f"upstream unreachable: {exc.__class__.__name__}: {exc}", status=502) from exc
        if response.status_code >= 400:
            if response.status_code >= 500:
                self.breaker.failure()
            try:
                payload: Any = response.json()
            except ValueError:
                payload = response.text
            raise ProviderError(f"upstream answered {response.status_code} to {method} {path}",
                                status=response.status_code, body=payload,
                                retry_after_s=parse_retry_after(response.headers))
        self.breaker.success()
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        return response.json() if content_type == "application/json" else response.content

    async def upload_file(self, content: bytes, *, purpose: str = "batch", filename: str = "batch.jsonl") -> dict[str, Any]:
        return await self._json("POST", "/files", data={"purpose": purpose},
                                files={"file": (filename, content, "application/jsonl")})

    async def create_batch(self, input_file_id: str, *, endpoint: str = "/v1/chat/completions",
                           completion_window: str = "24h", metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._json("POST", "/batches", json={"input_file_id": input_file_id, "endpoint": endpoint,
                                                          "completion_window": completion_window,
                                                          "metadata": dict(metadata or {})})

    async def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def file_content(self, file_id: str) -> bytes:
        content = await self._json("GET", f"/files/{file_id}/content")
        return content if isinstance(content, bytes) else json.dumps(content).encode()


def _sse_json(event: bytes) -> dict[str, Any] | None:
    data = "\n".join(line[5:].lstrip() for line in event.decode("utf-8", "replace").splitlines()
                     if line.startswith("data:"))
    if not data or data.strip() == "[DONE]":
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# --- the openai SDK's own HTTP client --------------------------------------------------------


class UsageReportingTransport(httpx.AsyncBaseTransport):
    """An httpx async transport that reports the usage of every LLM response passing through it.

    For handlers that call the official ``openai`` SDK themselves::

        client = openai.AsyncOpenAI(http_client=tokenlane.providers.openai_http_client())

    JSON responses are read as they arrive; streamed chat/completions requests get
    ``stream_options.include_usage`` added (without it a stream has no usage), and the usage-only
    chunk is dropped again when the caller did not ask for it, so the SDK sees what it asked for.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        model, drop = "", False
        try:
            body = json.loads(request.content) if request.content else None
        except ValueError:
            body = None
        if isinstance(body, dict):
            model = str(body.get("model", ""))
            if body.get("stream") and request.url.path.endswith("completions") and \
                    not (body.get("stream_options") or {}).get("include_usage"):
                body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
                drop = True
                content = json.dumps(body).encode()
                headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
                request = httpx.Request(request.method, request.url, headers=headers, content=content,
                                        extensions=request.extensions)
        response = await self._inner.handle_async_request(request)
        if not model or response.status_code >= 400:
            return response
        if "text/event-stream" in response.headers.get("content-type", ""):
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=_ReportingStream(response, model, drop), extensions=response.extensions)
        content = await response.aread()
        usage = read_json_response(content).usage
        if usage is not None:
            report_usage(model, usage)
        return httpx.Response(response.status_code, headers=response.headers, content=content,
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReportingStream(httpx.AsyncByteStream):
    def __init__(self, response: Any, model: str, drop: bool) -> None:
        self._response = response
        self._model = model
        self._reader = StreamReader(drop_usage_only_chunks=drop)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.stream:
            out = self._reader.feed(chunk)
            if out:
                yield out
        rest = self._reader.close()
        if rest:
            yield rest
        if self._reader.result.usage is not None:
            report_usage(self._model, self._reader.result.usage)

    async def aclose(self) -> None:
        await self._response.aclose()


def openai_http_client(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``openai.AsyncOpenAI(http_client=...)`` that reports usage."""
    return httpx.AsyncClient(transport=UsageReportingTransport(), **kwargs)


# --- simulated upstream -------------------------------------------------------------------------

_WORDS = (
    "the model answer time data system request token cost budget queue plan result value user "
    "service first next each other new good great small large long short simple clear fast slow "
    "make take give find show keep start run use work call read write check note point part case "
    "and or but so because when while if then also very more most less just only well still"
).split()

_LENGTH_CUES: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\b(one|single) (word|number)\b|\byes or no\b"), 3.0),
    (re.compile(r"\bin (one|a single) sentence\b|\bbriefly\b|\bshort answer\b"), 30.0),
    (re.compile(r"\b(essay|article|story|detailed|in detail|comprehensive)\b"), 700.0),
    (re.compile(r"\b(list|steps|step by step|outline)\b"), 260.0),
    (re.compile(r"\b(code|function|program|script|implement)\b"), 380.0),
)


class SimulatedProvider:
    """A local, labelled stand-in for an OpenAI-compatible model.

    Output length follows the prompt's length cues with log-normal noise, seeded by the prompt
    (the same prompt gives the same answer), capped by ``max_tokens``; usage is counted exactly with
    the model's tokenizer. Latency is ``ttft_s + output_tokens / tokens_per_s``, times ``time_scale``
    (0 in tests).
    """

    simulated = True

    def __init__(self, *, ttft_s: float = 0.3, tokens_per_s: float = 80.0, time_scale: float = 1.0,
                 seed: int = 0) -> None:
        self.ttft_s = ttft_s
        self.tokens_per_s = tokens_per_s
        self.time_scale = time_scale
        self.seed = seed

    def _plan(self, body: Mapping[str, Any]) -> tuple[str, int, str]:
        messages = body.get("messages") or []
        prompt = "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, Mapping))
        digest = hashlib.sha256(f"{self.seed}\0{body.get('model')}\0{prompt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "little"))
        median = 150.0
        lowered = prompt.lower()
        for pattern, cue in _LENGTH_CUES:
            if pattern.search(lowered):
                median = cue
                break
        tokens = max(1, int(rng.lognormvariate(0.0, 0.45) * median))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and limit > 0 and tokens > limit:
            tokens, finish = limit, "length"
        words = " ".join(rng.choice(_WORDS) for _ in range(tokens))
        # Exactly `tokens` tokens of the model's vocabulary, so max_tokens holds as it would upstream.
        encoding = _encoding_for(str(body.get("model", "")))
        ids = encoding.encode_ordinary(("[simulated] " if tokens > 8 else "") + words)[:tokens]
        return encoding.decode(ids), tokens, finish

    def _usage(self, body: Mapping[str, Any], text: str) -> dict[str, int]:
        return counted_usage(body, text)

    async def _sleep(self, seconds: float) -> None:
        if self.time_scale > 0 and seconds > 0:
            await asyncio.sleep(seconds * self.time_scale)

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        completion = self._completion(body)
        await self._sleep(self.ttft_s + completion["usage"]["completion_tokens"] / self.tokens_per_s)
        report_usage(str(body.get("model", "")), completion["usage"])
        return completion

    def _completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        text, tokens, finish = self._plan(body)
        usage = self._usage(body, text)
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "system_fingerprint": "tokenlane-simulated",
            "simulated": True,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": usage,
        }

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        text, _, finish = self._plan(body)
        usage = self._usage(body, text)
        base = {"id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model"),
                "system_fingerprint": "tokenlane-simulated"}
        await self._sleep(self.ttft_s)
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}
        words = text.split(" ")
        per_chunk = 4
        for i in range(0, len(words), per_chunk):
            piece = " ".join(words[i:i + per_chunk]) + (" " if i + per_chunk < len(words) else "")
            await self._sleep(min(per_chunk, len(words) - i) / self.tokens_per_s)
            yield {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        report_usage(str(body.get("model", "")), usage)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {**base, "choices": [], "usage": usage}


    # -- the batch API, in process (OpenAI's /v1/files + /v1/batches semantics) -------------------
    # tokenlane.upstream_server serves these over HTTP, so a batch can round-trip through a real
    # OpenAI-shaped API in tests and demos.

    def _batch_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        if not hasattr(self, "_files"):
            self._files: dict[str, dict[str, Any]] = {}
            self._batches: dict[str, dict[str, Any]] = {}
        return self._files, self._batches

    async def upload_file(self, content: bytes, *, purpose: str = "batch", filename: str = "batch.jsonl") -> dict[str, Any]:
        files, _ = self._batch_state()
        file = {"id": f"file-sim-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose}
        files[file["id"]] = {**file, "content": bytes(content)}
        return file

    async def file_content(self, file_id: str) -> bytes:
        files, _ = self._batch_state()
        if file_id not in files:
            raise ProviderError(f"no such file: {file_id}", status=404)
        return files[file_id]["content"]

    async def create_batch(self, input_file_id: str, *, endpoint: str = "/v1/chat/completions",
                           completion_window: str = "24h", metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
        files, batches = self._batch_state()
        if input_file_id not in files:
            raise ProviderError(f"no such file: {input_file_id}", status=404)
        if endpoint != "/v1/chat/completions":
            raise ProviderError(f"the simulated batch API serves /v1/chat/completions, not {endpoint}", status=400)
        batch = {"id": f"batch_sim_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": endpoint,
                 "input_file_id": input_file_id, "completion_window": completion_window, "status": "in_progress",
                 "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                 "completed_at": None, "metadata": dict(metadata or {}), "simulated": True,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        batches[batch["id"]] = batch
        # The work happens later, as at a provider; a fresh context keeps it out of any request's usage.
        contextvars.Context().run(asyncio.ensure_future, self._run_batch(batch, files[input_file_id]["content"]))
        return dict(batch)

    async def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        _, batches = self._batch_state()
        if batch_id not in batches:
            raise ProviderError(f"no such batch: {batch_id}", status=404)
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in batches[batch_id].items()}

    async def _run_batch(self, batch: dict[str, Any], content: bytes) -> None:
        out: list[bytes] = []
        errors: list[bytes] = []
        lines = [line for line in content.splitlines() if line.strip()]
        batch["request_counts"]["total"] = len(lines)
        for line in lines:
            custom_id = None
            try:
                item = json.loads(line)
                custom_id = item.get("custom_id")
                body = item["body"]
                if item.get("url") != "/v1/chat/completions" or not isinstance(body, dict):
                    raise ValueError("each line needs url /v1/chat/completions and a body")
                completion = self._completion(body)
                await self._sleep(self.ttft_s + completion["usage"]["completion_tokens"] / self.tokens_per_s)
                out.append(json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id,
                                       "response": {"status_code": 200, "request_id": uuid.uuid4().hex,
                                                    "body": completion}, "error": None}).encode())
                batch["request_counts"]["completed"] += 1
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                errors.append(json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id,
                                          "response": None,
                                          "error": {"code": "invalid_request", "message": str(exc)}}).encode())
                batch["request_counts"]["failed"] += 1
        if out:
            batch["output_file_id"] = (await self.upload_file(b"\n".join(out) + b"\n", purpose="batch_output"))["id"]
        if errors:
            batch["error_file_id"] = (await self.upload_file(b"\n".join(errors) + b"\n", purpose="batch_output"))["id"]
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


def counted_usage(body: Mapping[str, Any], text: str) -> dict[str, int]:
    """OpenAI-shaped usage of a chat request and its answer, counted by tokenlane (exact for OpenAI
    models' tokenizers, calibrated otherwise): for upstreams that report none."""
    from .formats import OPENAI_CHAT, count_input_tokens, parse_request

    model = str(body.get("model", ""))
    prompt_tokens = count_input_tokens(parse_request(OPENAI_CHAT, body)).tokens
    completion_tokens = count_output_tokens(text, model)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _encoding_for(model: str) -> Any:
    from .encoding import encoding_for_model, get_encoding

    try:
        return encoding_for_model(model)
    except KeyError:
        return get_encoding("o200k_base")


def provider_from_env() -> OpenAICompatibleProvider | SimulatedProvider:
    """The real upstream when ``OPENAI_BASE_URL`` or ``OPENAI_API_KEY`` is set, else the simulator.

    ``TOKENLANE_SIM_TIME_SCALE`` scales the simulator's latency (0 = instant).
    """
    base_url = os.environ.get("OPENAI_BASE_URL")
    api_key = os.environ.get("OPENAI_API_KEY")
    if base_url or api_key:
        return OpenAICompatibleProvider(base_url or "https://api.openai.com/v1", api_key)
    return SimulatedProvider(time_scale=float(os.environ.get("TOKENLANE_SIM_TIME_SCALE", "1")))


__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "OpenAICompatibleProvider",
    "ProviderError",
    "RetryPolicy",
    "SimulatedProvider",
    "counted_usage",
    "parse_retry_after",
    "UsageReportingTransport",
    "openai_http_client",
    "provider_from_env",
    "report_usage",
]
