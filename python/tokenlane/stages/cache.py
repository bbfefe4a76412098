"""Response caches: exact, then semantic. A hit is served without calling the model and costs $0.

What is cacheable: a request whose answer is deterministic enough (``temperature: 0``, embeddings,
or a route that opts in with ``cache_any_temperature``), unless the client sends
``Cache-Control: no-store`` (neither read nor written) or ``no-cache`` (not read, refreshed).

- **Exact key**: SHA-256 of the normalised body (everything that changes the output; not
  ``stream``, ``stream_options``, ``user``, ``metadata``), the route, a namespace the app can bump,
  and the principal: one tenant never sees another's answer unless the route sets ``cache_shared``.
- **Semantic**: the last user turn is embedded and compared with earlier prompts of the same
  *scope*: principal, route, model, the other parameters, and a hash of the system prompt and all
  earlier turns, so a paraphrase in another conversation is never a hit. Nearest neighbour by
  cosine similarity in a usearch index per scope; served at ``similarity >= semantic_threshold``.
- **Coalescing**: concurrent identical misses in one process call the model once; the others wait
  for the first and are served its answer.

The entry keeps the JSON response; a streamed client gets it replayed as SSE (OpenAI chat), with
the usage on the last chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..formats import OPENAI_CHAT, OPENAI_EMBEDDINGS, LLMRequest, content_text
from ..state.cache import CacheStore

log = logging.getLogger("tokenlane")

CACHE_MODES = ("off", "exact", "semantic")
# Default threshold, measured by benchmarks/semantic_cache.py (see docs/caching.md).
DEFAULT_SEMANTIC_THRESHOLD = 0.98

# Body fields that do not change the answer (transport, attribution).
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})


@dataclass
class CachedResponse:
    """One stored answer: the JSON body as the app sent it, its usage and what it cost."""

    body: bytes
    model: str
    cost_pico_usd: int
    created_at: float
    usage: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    def dumps(self) -> bytes:
        return json.dumps({"body": self.body.decode("utf-8"), "model": self.model, "cost": self.cost_pico_usd,
                           "created_at": self.created_at, "usage": self.usage, "in": self.input_tokens,
                           "out": self.output_tokens}).encode()

    @classmethod
    def loads(cls, raw: bytes) -> CachedResponse:
        d = json.loads(raw)
        return cls(d["body"].encode("utf-8"), d["model"], d["cost"], d["created_at"], d.get("usage"),
                   d.get("in", 0), d.get("out", 0))


@dataclass
class CachePlan:
    """The cache's decision for one request, before the call.

    ``status``: "hit" (``entry`` is the answer), "miss" (call, then store if ``store``) or
    "bypass" (not cacheable: ``reason`` says why; may still store on ``no-cache``)."""

    status: str
    reason: str = ""
    key: str | None = None
    scope: str | None = None
    text: str | None = None
    store: bool = False
    ttl_s: float = 0.0
    threshold: float | None = None
    entry: CachedResponse | None = None
    similarity: float | None = None
    vector: Any = None
    leader: asyncio.Future[bool] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RouteCache:
    """Per-route cache options (``route_settings``), over the global ones."""

    mode: str
    ttl_s: float
    threshold: float
    shared: bool = False
    any_temperature: bool = False


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     default=str).encode()).hexdigest()


class ResponseCache:
    """The cache stage; build it with :meth:`from_settings` (``None`` when the cache is off
    everywhere, so that a switched-off cache costs nothing)."""

    def __init__(self, store: CacheStore, *, mode: str = "exact", ttl_s: float = 3600.0,
                 semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD, namespace: str = "1",
                 routes: Mapping[str, Mapping[str, Any]] | None = None,
                 embedder: Callable[[], Any] | None = None, embedder_name: str = "wordllama",
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.default = RouteCache(mode, ttl_s, semantic_threshold)
        self.namespace = namespace
        self.routes = [(re.compile(p), self._route(o)) for p, o in (routes or {}).items()]
        self._embedder_factory = embedder
        self.embedder_name = embedder_name  # in every semantic scope: vectors of two models never mix
        self._embedder: Any = None
        self.clock = clock
        self._indexes: dict[str, _ScopeIndex] = {}
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        # Store and index calls block (SQLite, Redis, embedding): one thread, off the event loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenlane-cache")
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, store: CacheStore | None = None,
                      clock: Callable[[], float] = time.time) -> ResponseCache | None:
        modes = {settings.cache} | {o.get("cache", settings.cache) for o in settings.route_settings.values()}
        if modes == {"off"}:
            return None
        if store is None:
            from ..state.cache import open_cache_store

            store = open_cache_store(settings.db, getattr(settings, "state", None),
                                     max_entries=settings.cache_max_entries, max_bytes=settings.cache_max_bytes)
        embedder = None
        if settings.cache_embeddings_url:
            from ..embeddings import ProviderEmbedder

            def embedder() -> Any:
                return ProviderEmbedder(settings.cache_embeddings_url, settings.cache_embeddings_model,
                                        settings.cache_embeddings_key)
        return cls(store, mode=settings.cache, ttl_s=settings.cache_ttl_s,
                   semantic_threshold=settings.semantic_threshold, namespace=settings.cache_namespace,
                   routes=settings.route_settings, embedder=embedder,
                   embedder_name=f"{settings.cache_embeddings_url}#{settings.cache_embeddings_model}"
                   if embedder else "wordllama", clock=clock)

    def _route(self, options: Mapping[str, Any]) -> RouteCache:
        d = self.default
        return RouteCache(options.get("cache", d.mode), float(options.get("cache_ttl_s", d.ttl_s)),
                          float(options.get("semantic_threshold", d.threshold)),
                          bool(options.get("cache_shared", False)), bool(options.get("cache_any_temperature", False)))

    def options(self, path: str) -> RouteCache:
        for pattern, opts in self.routes:
            if pattern.search(path):
                return opts
        return self.default

    # --- before the call ------------------------------------------------------------------------

    async def __call__(self, request: LLMRequest, data: Any, principal: str, path: str,
                       headers: Mapping[str, str]) -> CachePlan:
        """The stage's entry point: decide, then look up (a hit carries its ``entry``). After a miss
        the runtime calls :meth:`save` on every path, whatever happened."""
        return await self.lookup(self.plan(request, data, principal, path, headers))

    def plan(self, request: LLMRequest, data: Any, principal: str, path: str,
             headers: Mapping[str, str]) -> CachePlan:
        """Decides, from the request alone (no I/O), whether and under which key to look up."""
        opts = self.options(path)
        if opts.mode == "off":
            return CachePlan("bypass", "off for this route")
        directives = {d.strip().lower() for d in headers.get("cache-control", "").split(",")}
        if "no-store" in directives:
            return CachePlan("bypass", "Cache-Control: no-store")
        deterministic = request.api == OPENAI_EMBEDDINGS or (
            isinstance(data, Mapping) and data.get("temperature") == 0)
        if not (deterministic or opts.any_temperature):
            return CachePlan("bypass", "not deterministic (temperature is not 0)")
        if request.stream and request.api != OPENAI_CHAT:
            return CachePlan("bypass", "streamed responses are replayed for OpenAI chat only")
        if request.n > 1 and request.stream:
            return CachePlan("bypass", "streamed n > 1")
        body = ({k: v for k, v in data.items() if k not in _NOT_IN_KEY} if isinstance(data, Mapping)
                else {"raw": data.decode("utf-8", "replace") if isinstance(data, bytes) else data})
        owner = "*" if opts.shared else principal
        key = _digest(["exact", self.namespace, owner, path, body])
        plan = CachePlan("miss", key=key, store=True, ttl_s=opts.ttl_s)
        if opts.mode == "semantic" and request.messages:
            last = max((i for i, m in enumerate(request.messages) if m.get("role") == "user"), default=None)
            if last is not None:
                text = content_text(request.messages[last].get("content"))
                context = {k: v for k, v in body.items() if k not in ("messages", "input")}
                earlier = [request.system, request.messages[:last], request.messages[last + 1:]]
                plan.scope = _digest(["semantic", self.namespace, self.embedder_name, owner, path, context, earlier])
                plan.text, plan.threshold = text, opts.threshold
        if "no-cache" in directives:
            plan.status, plan.reason = "bypass", "Cache-Control: no-cache"
        return plan

    async def lookup(self, plan: CachePlan) -> CachePlan:
        """Exact, then semantic lookup; on a miss, waits for an identical request already calling
        the model (then serves its answer) or becomes the one others wait for."""
        if plan.status != "miss" or plan.key is None:
            return plan
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._find, plan)
        except Exception as exc:  # a cache that is down is a cache that misses, never a failed request
            log.warning("tokenlane cache lookup failed, serving without the cache: %s", exc)
            plan.status, plan.reason, plan.store = "bypass", "cache unavailable", False
            return plan
        if plan.status == "hit":
            return plan
        leader = self._inflight.get(plan.key)
        if leader is not None:
            stored = await asyncio.shield(leader)
            if stored:
                try:
                    await loop.run_in_executor(self._thread, self._find_exact, plan)
                except Exception as exc:
                    log.warning("tokenlane cache lookup failed, serving without the cache: %s", exc)
                if plan.status == "hit":
                    plan.reason = "coalesced"
                    return plan
        if plan.key not in self._inflight:
            plan.leader = self._inflight[plan.key] = loop.create_future()
        return plan

    def _find(self, plan: CachePlan) -> None:
        self._find_exact(plan)
        if plan.status == "hit" or plan.scope is None or plan.text is None:
            return
        vector = self.embedder().embed([plan.text])[0]
        plan.vector = vector
        found = self._index(plan.scope).nearest(vector)
        if found is not None:
            plan.similarity = found[1]  # reported on misses too: the false-hit guard's histogram
        if found is not None and found[1] >= (plan.threshold or 1.0):
            raw = self.store.get(found[0], self.clock())
            if raw is not None:
                plan.status, plan.entry, plan.similarity, plan.reason = "hit", CachedResponse.loads(raw), found[1], "semantic"

    def _find_exact(self, plan: CachePlan) -> None:
        assert plan.key is not None
        raw = self.store.get(plan.key, self.clock())
        if raw is not None:
            plan.status, plan.entry, plan.similarity, plan.reason = "hit", CachedResponse.loads(raw), 1.0, "exact"

    def embedder(self) -> Any:
        if self._embedder is None:
            if self._embedder_factory is not None:
                self._embedder = self._embedder_factory()
            else:
                from ..embeddings import default_embedder

                self._embedder = default_embedder()
        return self._embedder

    def _index(self, scope: str) -> _ScopeIndex:
        with self._lock:
            index = self._indexes.get(scope)
            if index is None:
                if len(self._indexes) > 10_000:  # scopes are many and small: forget them, they reload
                    self._indexes.clear()
                index = self._indexes[scope] = _ScopeIndex(self.embedder().dim)
        index.sync(self.store, scope, self.clock())
        return index

    # --- after the call -------------------------------------------------------------------------

    async def save(self, plan: CachePlan, entry: CachedResponse | None) -> None:
        """Stores the answer of a miss (``None``: the call failed, nothing to store) and wakes the
        identical requests that waited for it. Call it on every path after a miss."""
        stored = False
        try:
            if entry is not None and plan.store and plan.key is not None:
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(self._thread, self._put, plan, entry)
                    stored = True
                except Exception as exc:
                    log.warning("tokenlane cache could not store an answer: %s", exc)
        finally:
            if plan.leader is not None:
                if self._inflight.get(plan.key or "") is plan.leader:
                    del self._inflight[plan.key or ""]
                if not plan.leader.done():
                    plan.leader.set_result(stored)
                plan.leader = None

    def _put(self, plan: CachePlan, entry: CachedResponse) -> None:
        assert plan.key is not None
        now = self.clock()
        vector = None
        if plan.scope is not None and plan.text is not None:
            if plan.vector is None:
                plan.vector = self.embedder().embed([plan.text])[0]
            vector = plan.vector.astype("float32").tobytes()
        self.store.put(plan.key, entry.dumps(), now + plan.ttl_s, now,
                       scope=plan.scope if vector is not None else None, vector=vector)
        if vector is not None and plan.scope is not None:
            with self._lock:
                index = self._indexes.get(plan.scope)
            if index is not None:
                index.add(plan.key, plan.vector, self.store.vector_count(plan.scope))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        if self._embedder is not None and hasattr(self._embedder, "close"):
            self._embedder.close()


class _ScopeIndex:
    """A usearch index of one scope's prompts, reloaded from the store when its count changed (so
    entries stored by other processes or replicas are found, and evicted ones forgotten)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = -1
        self.keys: list[str] = []
        self.index: Any = None

    def sync(self, store: CacheStore, scope: str, now: float) -> None:
        count = store.vector_count(scope)
        if count == self.count:
            return
        import numpy as np
        from usearch.index import Index

        rows = store.vectors(scope, now)
        self.keys = [k for k, _ in rows]
        self.index = Index(ndim=self.dim, metric="cos", dtype="f32")
        if rows:
            vectors = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), self.dim)
            self.index.add(np.arange(len(rows), dtype=np.uint64), vectors)
        self.count = count

    def add(self, key: str, vector: Any, count_now: int) -> None:
        """Adds this process's own new entry without a reload (if nothing else changed meanwhile)."""
        if self.index is None or count_now != self.count + 1:
            return  # out of step: the next lookup reloads
        self.index.add(len(self.keys), vector)
        self.keys.append(key)
        self.count = count_now

    def nearest(self, vector: Any) -> tuple[str, float] | None:
        """(key, cosine similarity) of the closest stored prompt, or None when the scope is empty."""
        if self.index is None or not self.keys:
            return None
        match = self.index.search(vector, 1)
        if len(match.keys) == 0:
            return None
        return self.keys[int(match.keys[0])], 1.0 - float(match.distances[0])


# --- replay -------------------------------------------------------------------------------------


def replay_sse(entry: CachedResponse, include_usage: bool) -> bytes:
    """An OpenAI chat completion as a well-formed SSE stream: the message in one delta per choice,
    then the finish reason with the usage (or, when the client asked for it, a usage-only chunk)."""
    done = json.loads(entry.body)
    base = {"id": done.get("id", "chatcmpl-cached"), "object": "chat.completion.chunk",
            "created": done.get("created", int(entry.created_at)), "model": done.get("model", entry.model)}
    if done.get("system_fingerprint"):
        base["system_fingerprint"] = done["system_fingerprint"]
    events = []
    choices = done.get("choices") or []
    for choice in choices:
        message = dict(choice.get("message") or {})
        delta: dict[str, Any] = {"role": message.pop("role", "assistant"), "content": message.pop("content", None)}
        for name, value in message.items():
            if name == "tool_calls" and isinstance(value, list):
                value = [{"index": i, **call} for i, call in enumerate(value)]
            delta[name] = value
        events.append({**base, "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}]})
    usage = done.get("usage") or entry.usage
    for i, choice in enumerate(choices):
        last = {**base, "choices": [{"index": choice.get("index", 0), "delta": {},
                                     "finish_reason": choice.get("finish_reason") or "stop"}]}
        if i == len(choices) - 1 and usage and not include_usage:
            last["usage"] = usage
        events.append(last)
    if include_usage and usage:
        events.append({**base, "choices": [], "usage": usage})
    out = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


def entry_for(request: LLMRequest, outcome: Any, now: float) -> CachedResponse | None:
    """What a finished call leaves in the cache: a complete 200 answer (JSON as sent, or an OpenAI
    chat stream turned into its JSON), else nothing. Streams with tools are not kept: the stream
    reader keeps their text, not their tool calls."""
    if outcome.error is not None or outcome.status != 200 or outcome.cost_pico_usd is None:
        return None
    body = outcome.body
    if not body and request.stream and request.api == OPENAI_CHAT and outcome.text and not request.tools \
            and not request.extra.get("functions"):
        body = chat_completion_from_stream(outcome.text, outcome.usage, request.model, now)
    if not body:
        return None
    usage = outcome.usage or {}
    return CachedResponse(body, request.model, outcome.cost_pico_usd, now, outcome.usage,
                          int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0),
                          int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0))


def hit_body(plan: CachePlan, request: LLMRequest, data: Any) -> tuple[bytes, str]:
    """What a hit sends: the stored JSON, or its SSE replay when the client streams."""
    assert plan.entry is not None
    if request.stream:
        options = data.get("stream_options") if isinstance(data, Mapping) else None
        include_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
        return replay_sse(plan.entry, include_usage), "text/event-stream"
    return plan.entry.body, "application/json"


def chat_completion_from_stream(text: str, usage: dict[str, Any] | None, model: str, now: float,
                                finish_reason: str = "stop") -> bytes:
    """The JSON answer of a streamed chat completion (what a later JSON or SSE hit replays)."""
    body = {"id": "chatcmpl-cached", "object": "chat.completion", "created": int(now), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}]}
    if usage:
        body["usage"] = usage
    return json.dumps(body).encode()


__all__ = ["CACHE_MODES", "DEFAULT_SEMANTIC_THRESHOLD", "CachePlan", "CachedResponse", "ResponseCache",
           "RouteCache", "chat_completion_from_stream", "entry_for", "hit_body", "replay_sse"]
