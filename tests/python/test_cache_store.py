"""Cache stores: TTL, LRU bounds on entries and bytes, scope vectors; SQLite file and real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cache_support import redis_server
from tokenlane.state.cache import RedisCacheStore, SQLiteCacheStore, open_cache_store


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[object]:
    stores = []
    if request.param == "sqlite":
        def make(**bounds: int) -> SQLiteCacheStore:
            stores.append(SQLiteCacheStore(str(tmp_path / "cache.db"), **bounds))  # type: ignore[operator]
            return stores[-1]
        yield make
    else:
        with redis_server(tmp_path) as url:
            def make(**bounds: int) -> RedisCacheStore:
                stores.append(RedisCacheStore(url, **bounds))
                return stores[-1]
            yield make
    for s in stores:
        s.close()


def test_get_put_and_expiry(make_store) -> None:
    store = make_store()
    assert store.get("k", 100.0) is None
    store.put("k", b"value", expires_at=200.0, now=100.0)
    assert store.get("k", 150.0) == b"value"
    assert store.get("k", 200.0) is None  # expired
    store.put("k", b"other", expires_at=10**10, now=100.0)  # replaced, not doubled
    assert store.get("k", 150.0) == b"other"
    assert store.stats() == {"entries": 1, "bytes": 5}


def test_lru_eviction_by_entries_and_bytes(make_store) -> None:
    store = make_store(max_entries=3, max_bytes=1000)
    far = 10**10
    for i, key in enumerate("abc"):
        store.put(key, b"x" * 10, far, 100.0 + i)
    store.get("a", 110.0)                     # a is now the most recently used
    store.put("d", b"x" * 10, far, 120.0)     # evicts b, the least recently used
    assert [store.get(k, 121.0) is not None for k in "abcd"] == [True, False, True, True]
    assert store.stats()["entries"] == 3
    store.put("big", b"y" * 990, far, 130.0)  # over the byte bound: older entries go
    assert store.get("big", 131.0) == b"y" * 990
    assert store.stats()["bytes"] <= 1000


def test_scope_vectors_follow_entries(make_store) -> None:
    store = make_store(max_entries=2)
    far = 10**10
    store.put("a", b"1", far, 1.0, scope="s", vector=b"\x01" * 8)
    store.put("b", b"2", far, 2.0, scope="s", vector=b"\x02" * 8)
    store.put("c", b"3", far, 3.0, scope="t", vector=b"\x03" * 8)  # evicts a
    assert sorted(store.vectors("s", 4.0)) == [("b", b"\x02" * 8)]
    assert store.vector_count("s") == 1 and store.vector_count("t") == 1


def test_two_sqlite_processes_share_one_file(tmp_path) -> None:
    path = str(tmp_path / "shared.db")
    one, two = SQLiteCacheStore(path), SQLiteCacheStore(path)
    one.put("k", b"v", 10**10, 1.0)
    assert two.get("k", 2.0) == b"v"
    assert isinstance(open_cache_store(f"sqlite:///{path}"), SQLiteCacheStore)
