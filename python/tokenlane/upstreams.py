"""Several upstreams at once, and fallback chains across them (see docs/routing.md).

    upstreams = Upstreams.from_config([
        {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
         "models": ["gpt-4o", "gpt-4o-mini"]},
        {"name": "anthropic", "kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY", "models": ["claude-*"]},
    ], fallbacks={"gpt-4o": ["claude-sonnet-4-5", "gpt-4o-mini"]})
    await upstreams.chat(body)          # an OpenAI-shaped answer from the first model that answers

Each upstream has its own client, retry policy and circuit breaker (:mod:`tokenlane.providers`).
A call walks the chain ``[served model, *fallbacks[served model]]``: on 429, 5xx, a timeout, an
unreachable host or an open circuit it moves to the next model; on a prompt too long for a model
it skips to one whose context fits (the price table knows every model's context). Every attempt is
reported to the request's accounting, so an attempt the provider billed (a stream cut off
half-way) is charged, and the request learns how many attempts and fallbacks it took
(``x-tokenlane-attempts``, ``x-tokenlane-fallback``).

Retries: within one upstream tokenlane's own :class:`~tokenlane.providers.RetryPolicy` (jittered
exponential backoff honouring ``Retry-After``); the official SDKs' loops would hide attempts that
must each be accounted, so they are not used here. Across upstreams there is no retry loop, only
the chain.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .providers import (
    CircuitBreaker,
    OpenAICompatibleProvider,
    ProviderError,
    RetryPolicy,
    SimulatedProvider,
    _current_reports,
    _sse_json,
    counted_usage,
    report_usage,
)

KINDS = ("openai", "anthropic", "simulated")
FALLBACK_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class UpstreamConfigError(ValueError):
    """An ``upstreams`` or ``fallbacks`` entry is invalid; the message names it."""


# --- Anthropic's Messages API behind the Chat Completions shape ------------------------------------


def to_anthropic(body: Mapping[str, Any], default_max_tokens: int = 4096) -> dict[str, Any]:
    """A Chat Completions body as an Anthropic Messages body (system prompt lifted out)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in body.get("messages") or []:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        if role in ("system", "developer"):
            system.append(str(content or ""))
        else:
            messages.append({"role": "assistant" if role == "assistant" else "user", "content": str(content or "")})
    out: dict[str, Any] = {"model": body["model"], "messages": messages,
                           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if key in body:
            out[key] = body[key]
    if body.get("stop"):
        out["stop_sequences"] = [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
    if body.get("stream"):
        out["stream"] = True
    return out


_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage in OpenAI's convention (prompt tokens include cache reads and writes)."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read}}


class AnthropicProvider(OpenAICompatibleProvider):
    """Chat Completions in and out, Anthropic's Messages API (``/v1/messages``) on the wire.

    The raw Anthropic ``usage`` is what gets reported (cache writes priced exactly); the answer the
    caller sees is OpenAI-shaped."""

    def __init__(self, base_url: str = "https://api.anthropic.com/v1", api_key: str | None = None, *,
                 timeout_s: float = 120.0, retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 client: Any = None, seed: int | None = None, version: str = "2023-06-01") -> None:
        headers = {"anthropic-version": version, **({"x-api-key": api_key} if api_key else {})}
        client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers)
        super().__init__(base_url, None, retry=retry, breaker=breaker, client=client, seed=seed)
        self.path = "/messages"

    def _body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return to_anthropic(body)

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        response = await self._send({**body, "stream": False}, stream=False)
        try:
            data = json.loads(await response.aread())
        finally:
            await response.aclose()
        usage = data.get("usage") or {}
        report_usage(body.get("model", ""), usage)
        text = "".join(b.get("text", "") for b in data.get("content") or [] if b.get("type") == "text")
        return {"id": data.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": data.get("model") or body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": _FINISH.get(data.get("stop_reason"), "stop")}],
                "usage": openai_usage(usage)}

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        response = await self._send({**body, "stream": True}, stream=True)
        usage: dict[str, Any] = {}
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model")}
        text: list[str] = []
        try:
            buffer = b""
            async for raw in response.aiter_bytes():
                *events, buffer = re.split(rb"\r?\n\r?\n", buffer + raw)
                for event in events:
                    data = _sse_json(event)
                    if data is None:
                        continue
                    kind = data.get("type")
                    if kind == "message_start":
                        usage.update((data.get("message") or {}).get("usage") or {})
                        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                    "finish_reason": None}]}
                    elif kind == "content_block_delta" and (data.get("delta") or {}).get("type") == "text_delta":
                        text.append(data["delta"].get("text", ""))
                        yield {**base, "choices": [{"index": 0, "delta": {"content": data["delta"].get("text", "")},
                                                    "finish_reason": None}]}
                    elif kind == "message_delta":
                        usage.update(data.get("usage") or {})
                        reason = _FINISH.get((data.get("delta") or {}).get("stop_reason"), "stop")
                        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
        finally:
            await response.aclose()
            if "output_tokens" not in usage:  # cut short: count what was generated
                usage.update(output_tokens=counted_usage(body, "".join(text))["completion_tokens"])
            report_usage(body.get("model", ""), usage)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {**base, "choices": [], "usage": openai_usage(usage)}


# --- several upstreams and the chains across them ----------------------------------------------------


@dataclass
class Upstream:
    name: str
    kind: str
    provider: Any
    models: tuple[str, ...] = ("*",)        # model names or shell patterns this upstream serves
    max_concurrency: int | None = None      # calls in flight at once; more wait for a slot
    _slots: asyncio.Semaphore | None = None

    def slots(self) -> asyncio.Semaphore | None:
        # Made on first use, inside the event loop that will wait on it.
        if self.max_concurrency and self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        return self._slots

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class AllUpstreamsFailed(ProviderError):
    """Every model of the chain failed; ``attempts`` lists what was tried and how it ended."""

    def __init__(self, message: str, status: int, attempts: list[dict[str, Any]], body: Any = None) -> None:
        super().__init__(message, status=status, body=body)
        self.attempts = attempts


class Upstreams:
    """Routes each call to the upstream serving its model, and falls back along the chain."""

    simulated = False

    def __init__(self, upstreams: Sequence[Upstream], fallbacks: Mapping[str, Sequence[str]] | None = None,
                 pricing: Any = None) -> None:
        if not upstreams:
            raise UpstreamConfigError("upstreams: at least one upstream is needed")
        self.upstreams = list(upstreams)
        self.fallbacks = {m: tuple(chain) for m, chain in (fallbacks or {}).items()}
        self.pricing = pricing
        self.simulated = all(getattr(u.provider, "simulated", False) for u in self.upstreams)

    @classmethod
    def from_config(cls, upstreams: Sequence[Mapping[str, Any]], fallbacks: Mapping[str, Sequence[str]] | None = None,
                    pricing: Any = None, environ: Mapping[str, str] | None = None) -> Upstreams:
        env = os.environ if environ is None else environ
        built = []
        for i, u in enumerate(upstreams):
            if not isinstance(u, Mapping):
                raise UpstreamConfigError(f"upstreams[{i}] must be a table")
            name = str(u.get("name") or f"upstream-{i + 1}")
            kind = u.get("kind", "openai")
            where = f"upstreams[{i}] ({name})"
            unknown = set(u) - {"name", "kind", "base_url", "api_key_env", "models", "timeout_s", "max_retries",
                                "breaker_threshold", "breaker_cooldown_s", "send_max_tokens", "time_scale",
                                "max_concurrency"}
            if unknown:
                raise UpstreamConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            if kind not in KINDS:
                raise UpstreamConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
            models = u.get("models", ["*"])
            if isinstance(models, str):
                models = [models]
            if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
                raise UpstreamConfigError(f"{where}: models must be a list of model names or patterns")
            retry = RetryPolicy(max_retries=int(u.get("max_retries", 1)))
            breaker = CircuitBreaker(int(u.get("breaker_threshold", 5)), float(u.get("breaker_cooldown_s", 30.0)))
            key = env.get(u["api_key_env"]) if u.get("api_key_env") else None
            timeout = float(u.get("timeout_s", 120.0))
            if kind == "simulated":
                provider: Any = SimulatedProvider(time_scale=float(u.get("time_scale", 1.0)))
            elif not isinstance(u.get("base_url", "" if kind == "openai" else "x"), str):
                raise UpstreamConfigError(f"{where}: base_url must be a URL")
            elif kind == "anthropic":
                provider = AnthropicProvider(u.get("base_url") or "https://api.anthropic.com/v1", key,
                                             timeout_s=timeout, retry=retry, breaker=breaker)
            else:
                if not u.get("base_url"):
                    raise UpstreamConfigError(f"{where}: base_url is required (an OpenAI-compatible .../v1)")
                provider = OpenAICompatibleProvider(u["base_url"], key, timeout_s=timeout, retry=retry, breaker=breaker,
                                                    send_max_tokens=bool(u.get("send_max_tokens", False)))
            limit = u.get("max_concurrency")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise UpstreamConfigError(f"{where}: max_concurrency must be a whole number >= 1")
            built.append(Upstream(name, kind, provider, tuple(models), limit))
        for model, chain in (fallbacks or {}).items():
            if not isinstance(chain, (list, tuple)) or not all(isinstance(m, str) and m for m in chain):
                raise UpstreamConfigError(f"fallbacks.{model} must be a list of model names")
        return cls(built, fallbacks, pricing)

    def upstream_for(self, model: str) -> Upstream | None:
        return next((u for u in self.upstreams if u.serves(model)), None)

    def chain(self, model: str) -> list[str]:
        seen: list[str] = []
        for m in (model, *self.fallbacks.get(model, ())):
            if m not in seen:
                seen.append(m)
        return seen

    def _fits(self, model: str, prompt_tokens: int) -> bool:
        if self.pricing is None:
            return True
        limit = self.pricing.max_input_tokens(model) if model in self.pricing else None
        return limit is None or prompt_tokens <= limit

    async def _walk(self, body: Mapping[str, Any], stream: bool) -> Any:
        attempts: list[dict[str, Any]] = []
        prompt_tokens = counted_usage(body, "")["prompt_tokens"] if self.pricing is not None else 0
        last: ProviderError | None = None
        requested = str(body.get("model", ""))
        for model in self.chain(requested):
            upstream = self.upstream_for(model)
            if upstream is None:
                attempts.append({"model": model, "upstream": None, "outcome": "no upstream serves it"})
                continue
            if not self._fits(model, prompt_tokens):
                attempts.append({"model": model, "upstream": upstream.name, "outcome": "context too small"})
                continue
            call = {**body, "model": model}
            started = time.monotonic()
            slots = upstream.slots()
            if slots is not None:
                await slots.acquire()
            try:
                if stream:
                    gen = upstream.provider.stream_chat(call)
                    first = await gen.__anext__()  # the upstream answered: commit to it
                    result: Any = (gen, first, slots)
                    slots = None  # the stream holds its slot until it ends
                else:
                    result = await upstream.provider.chat(call)
            except ProviderError as exc:
                attempts.append({"model": model, "upstream": upstream.name, "outcome": f"HTTP {exc.status}",
                                 "ms": round((time.monotonic() - started) * 1e3, 1)})
                last = exc
                if exc.status in FALLBACK_STATUSES or _context_exceeded(exc):
                    continue
                self._note(attempts, requested, model)
                raise
            except StopAsyncIteration:
                attempts.append({"model": model, "upstream": upstream.name, "outcome": "empty stream"})
                continue
            finally:
                if slots is not None:
                    slots.release()
            attempts.append({"model": model, "upstream": upstream.name, "outcome": "ok",
                             "ms": round((time.monotonic() - started) * 1e3, 1)})
            self._note(attempts, requested, model)
            return result
        self._note(attempts, requested, None)
        status = last.status if last is not None else 503
        raise AllUpstreamsFailed(f"every model of the chain {self.chain(requested)} failed: "
                                 + "; ".join(f"{a['model']}: {a['outcome']}" for a in attempts),
                                 status if status >= 400 else 502, attempts, body=last.body if last else None)

    @staticmethod
    def _note(attempts: list[dict[str, Any]], requested: str, served: str | None) -> None:
        reports = _current_reports.get()
        if reports is not None:
            reports.attempts.extend(attempts)
            if served is not None:
                reports.served_model = served

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._walk(body, stream=False)

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        gen, first, slots = await self._walk(body, stream=True)
        try:
            yield first
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()
            if slots is not None:
                slots.release()

    async def aclose(self) -> None:
        for u in self.upstreams:
            close = getattr(u.provider, "aclose", None)
            if close is not None:
                await close()


def _context_exceeded(exc: ProviderError) -> bool:
    body = exc.body if isinstance(exc.body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    return exc.status == 400 and (error.get("code") == "context_length_exceeded"
                                  or "context" in str(error.get("message", "")).lower())


__all__ = ["AllUpstreamsFailed", "AnthropicProvider", "KINDS", "Upstream", "UpstreamConfigError", "Upstreams",
           "openai_usage", "to_anthropic"]
