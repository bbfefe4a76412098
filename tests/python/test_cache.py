"""The cache stage: what is cacheable, keys scoped per principal, exact and semantic hits,
coalescing of identical misses, SSE replay."""

from __future__ import annotations

import asyncio
import json

import pytest

from tokenlane.formats import OPENAI_CHAT, OPENAI_EMBEDDINGS, StreamReader, parse_request
from tokenlane.stages.cache import CachedResponse, ResponseCache, replay_sse
from tokenlane.state.cache import SQLiteCacheStore

PATH = "/v1/chat/completions"


@pytest.fixture
def cache(tmp_path) -> ResponseCache:
    c = ResponseCache(SQLiteCacheStore(str(tmp_path / "c.db")), mode="semantic", ttl_s=60.0, semantic_threshold=0.9,
                      routes={"^/shared": {"cache_shared": True}, "^/creative": {"cache_any_temperature": True},
                              "^/nocache": {"cache": "off"}})
    yield c
    c.close()


def chat(content: str, *, system: str = "You are helpful.", history: list | None = None, **extra: object) -> dict:
    return {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "system", "content": system}, *(history or []), {"role": "user", "content": content}],
            **extra}


def plan(cache: ResponseCache, body: dict, principal: str = "alice", path: str = PATH, headers: dict | None = None):
    return cache.plan(parse_request(OPENAI_CHAT, body), body, principal, path, headers or {})


def answer(text: str) -> CachedResponse:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
    return CachedResponse(json.dumps(body).encode(), "gpt-4o-mini", cost_pico_usd=1234, created_at=1.0)


async def fill(cache: ResponseCache, body: dict, text: str, principal: str = "alice", path: str = PATH) -> None:
    p = await cache.lookup(plan(cache, body, principal, path))
    assert p.status == "miss"
    await cache.save(p, answer(text))


def test_what_is_cacheable(cache: ResponseCache) -> None:
    assert plan(cache, chat("hi")).status == "miss"
    warm = chat("hi")
    warm["temperature"] = 0.7
    assert plan(cache, warm).status == "bypass"
    assert plan(cache, warm, path="/creative/chat/completions").status == "miss"
    assert plan(cache, chat("hi"), path="/nocache/chat/completions").status == "bypass"
    assert plan(cache, chat("hi"), headers={"cache-control": "no-store"}).store is False
    refresh = plan(cache, chat("hi"), headers={"cache-control": "no-cache"})
    assert (refresh.status, refresh.store) == ("bypass", True)
    emb = {"model": "text-embedding-3-small", "input": "x"}
    assert cache.plan(parse_request(OPENAI_EMBEDDINGS, emb), emb, "a", "/v1/embeddings", {}).status == "miss"


def test_key_ignores_transport_fields_but_not_output_ones(cache: ResponseCache) -> None:
    base = plan(cache, chat("hi")).key
    assert plan(cache, chat("hi", stream=True, user="u1", stream_options={"include_usage": True})).key == base
    assert plan(cache, chat("hi", max_tokens=5)).key != base
    assert plan(cache, chat("hi", model="gpt-4o")).key != base


def test_exact_hit_scoped_per_principal(cache: ResponseCache) -> None:
    async def run() -> None:
        await fill(cache, chat("What is 2+2?"), "4")
        hit = await cache.lookup(plan(cache, chat("What is 2+2?")))
        assert (hit.status, hit.reason, hit.similarity) == ("hit", "exact", 1.0)
        assert json.loads(hit.entry.body)["choices"][0]["message"]["content"] == "4"
        other = await cache.lookup(plan(cache, chat("What is 2+2?"), principal="bob"))
        assert other.status == "miss"  # another tenant never sees alice's answer
        await cache.save(other, None)
        # unless the route shares entries
        await fill(cache, chat("Capital of France?"), "Paris", path="/shared/chat/completions")
        shared = await cache.lookup(plan(cache, chat("Capital of France?"), principal="bob",
                                         path="/shared/chat/completions"))
        assert shared.status == "hit"
    asyncio.run(run())


def test_semantic_hit_only_within_the_same_conversation(cache: ResponseCache) -> None:
    async def run() -> None:
        await fill(cache, chat("How can I reset my password?"), "Use the link.")
        para = await cache.lookup(plan(cache, chat("How do I reset my password?")))
        assert para.status == "hit" and para.reason == "semantic" and 0.9 <= para.similarity < 1.0
        unrelated = await cache.lookup(plan(cache, chat("What is the weather in Paris tomorrow?")))
        assert unrelated.status == "miss"
        await cache.save(unrelated, None)
        other_context = await cache.lookup(plan(cache, chat("How do I reset my password?", system="You are a pirate.")))
        assert other_context.status == "miss"
        await cache.save(other_context, None)
        later_turn = chat("How do I reset my password?", history=[{"role": "user", "content": "hello"},
                                                                    {"role": "assistant", "content": "hi"}])
        assert (await cache.lookup(plan(cache, later_turn))).status == "miss"
        assert (await cache.lookup(plan(cache, chat("How do I reset my password?"), principal="bob"))).status == "miss"
    asyncio.run(run())


def test_expired_entries_are_not_served(tmp_path) -> None:
    now = [1000.0]
    c = ResponseCache(SQLiteCacheStore(str(tmp_path / "c.db")), mode="exact", ttl_s=10.0, clock=lambda: now[0])

    async def run() -> None:
        await fill(c, chat("q"), "a")
        assert (await c.lookup(plan(c, chat("q")))).status == "hit"
        now[0] += 11
        assert (await c.lookup(plan(c, chat("q")))).status == "miss"
    asyncio.run(run())
    c.close()


def test_identical_concurrent_misses_call_once(cache: ResponseCache) -> None:
    calls = 0

    async def request() -> str:
        nonlocal calls
        p = await cache.lookup(plan(cache, chat("Tell me a fact")))
        if p.status == "hit":
            return "hit:" + p.reason
        calls += 1
        await asyncio.sleep(0.05)  # the model call
        await cache.save(p, answer("fact"))
        return "miss"

    async def run() -> list[str]:
        return await asyncio.gather(*(request() for _ in range(5)))
    results = asyncio.run(run())
    assert calls == 1 and sorted(results) == ["hit:coalesced"] * 4 + ["miss"]


def test_failed_leader_lets_followers_call(cache: ResponseCache) -> None:
    async def run() -> list[str]:
        first = await cache.lookup(plan(cache, chat("flaky")))
        follower = asyncio.ensure_future(cache.lookup(plan(cache, chat("flaky"))))
        await asyncio.sleep(0.01)
        await cache.save(first, None)  # the call failed: nothing stored
        second = await follower
        await cache.save(second, None)
        return [first.status, second.status]
    assert asyncio.run(run()) == ["miss", "miss"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_sse_replay_is_a_well_formed_stream(include_usage: bool) -> None:
    stream = replay_sse(answer("Hello there"), include_usage)
    reader = StreamReader()
    reader.feed(stream)
    reader.close()
    assert reader.complete
    assert reader.result.text == "Hello there"
    assert reader.result.usage["total_tokens"] == 25
    events = [json.loads(line[6:]) for line in stream.decode().split("\n\n") if line.startswith("data: {")]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (events[-1]["choices"] == []) == include_usage  # usage-only chunk only when asked for


def test_replicas_share_entries_through_redis(tmp_path) -> None:
    from cache_support import redis_server
    from tokenlane.state.cache import RedisCacheStore, open_cache_store

    with redis_server(tmp_path) as url:
        store = open_cache_store(str(tmp_path / "ledger.db"), url)  # the `state` URL wins over the SQLite file
        assert isinstance(store, RedisCacheStore)
        store.close()
        one = ResponseCache(RedisCacheStore(url), mode="semantic", semantic_threshold=0.9)
        two = ResponseCache(RedisCacheStore(url), mode="semantic", semantic_threshold=0.9)

        async def run() -> tuple[str, str, str]:
            await fill(one, chat("How can I reset my password?"), "Use the link.")
            exact = await two.lookup(plan(two, chat("How can I reset my password?")))
            para = await two.lookup(plan(two, chat("How do I reset my password?")))
            other = await two.lookup(plan(two, chat("How do I reset my password?"), principal="bob"))
            await two.save(other, None)
            return exact.reason, para.reason, other.status
        assert asyncio.run(run()) == ("exact", "semantic", "miss")
        one.close()
        two.close()


def test_a_cache_that_is_down_bypasses_instead_of_failing() -> None:
    from cache_support import _free_port
    from tokenlane.state.cache import RedisCacheStore

    down = ResponseCache(RedisCacheStore(f"redis://127.0.0.1:{_free_port()}/0"), mode="exact")

    async def run() -> tuple[str, str]:
        p = await down.lookup(plan(down, chat("anything")))
        await down.save(p, answer("x"))  # nothing raised
        return p.status, p.reason
    assert asyncio.run(run()) == ("bypass", "cache unavailable")
    down.close()


def test_provider_embeddings_endpoint_as_the_embedder(tmp_path) -> None:
    """cache_embeddings_url: the semantic cache embeds through an OpenAI-compatible /embeddings
    served over real HTTP (here by a local app that answers with WordLlama vectors)."""
    import socket
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from tokenlane.config import load_settings
    from tokenlane.embeddings import default_embedder

    calls = []
    api = FastAPI()

    @api.post("/v1/embeddings")
    async def embeddings(body: dict) -> dict:
        calls.append(body)
        vectors = default_embedder().embed(body["input"])
        return {"object": "list", "model": body["model"],
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        settings = load_settings(environ={}, db=str(tmp_path / "p.db"), cache="semantic", semantic_threshold=0.9,
                                 cache_embeddings_url=f"http://127.0.0.1:{port}/v1", cache_embeddings_model="emb-1")
        cache = ResponseCache.from_settings(settings)

        async def run() -> str:
            await fill(cache, chat("How can I reset my password?"), "Use the link.")
            return (await cache.lookup(plan(cache, chat("How do I reset my password?")))).reason
        assert asyncio.run(run()) == "semantic"
        assert calls and all(c["model"] == "emb-1" for c in calls)
        cache.close()
    finally:
        server.should_exit = True
        thread.join(5)


def test_cache_settings_from_env_and_validated(tmp_path) -> None:
    from tokenlane.config import ConfigError, load_settings

    assert load_settings(environ={"TOKENLANE_CACHE": "semantic", "TOKENLANE_CACHE_TTL_S": "60"}).cache == "semantic"
    assert load_settings(environ={}).cache == "off"
    assert ResponseCache.from_settings(load_settings(environ={}, db=str(tmp_path / "x.db"))) is None
    for bad in ({"cache": "lru"}, {"semantic_threshold": 1.5}, {"cache_ttl_s": 0},
                {"route_settings": {"^/v1": {"cache": "sometimes"}}}, {"route_settings": {"^/v1": {"colour": 1}}},
                {"route_settings": {"(": {"cache": "off"}}}):
        with pytest.raises(ConfigError):
            load_settings(environ={}, **bad)
    on_one_route = load_settings(environ={}, db=str(tmp_path / "y.db"), route_settings={"^/faq": {"cache": "exact"}})
    cache = ResponseCache.from_settings(on_one_route)
    assert cache is not None and cache.options("/faq/chat/completions").mode == "exact"
    assert cache.options("/v1/chat/completions").mode == "off"
    cache.close()
