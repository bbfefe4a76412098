"""Test setup: verified rank files from ../shared/vocab for tokenlane and for tiktoken (the reference)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import anyio._core._fileio  # noqa: F401 - see below
import pytest
from store_support import fresh_database, services_module

# anyio (a pytest plugin, so pytest rewrites its modules on import) imports this module lazily, the
# first time a static file is served: compiled then, beside the ledger and Redis threads, CPython
# 3.11.7 can fail with "SystemError: AST constructor recursion depth mismatch" (fixed in 3.11.8).

REPO = Path(__file__).resolve().parents[2]
SHARED_VOCAB = REPO.parent / "shared" / "vocab"
OFFICIAL = "https://openaipublic.blob.core.windows.net/encodings/"

os.environ.setdefault("TOKENLANE_VOCAB_DIR", str(SHARED_VOCAB))
VOCAB_DIR = Path(os.environ["TOKENLANE_VOCAB_DIR"])


@pytest.fixture(scope="session")
def tiktoken_module(tmp_path_factory: pytest.TempPathFactory):
    """tiktoken reading the same verified files, offline (its cache is keyed by sha1 of the URL)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ("cl100k_base", "o200k_base", "p50k_base", "r50k_base"):
        key = hashlib.sha1((OFFICIAL + name + ".tiktoken").encode()).hexdigest()
        shutil.copy(VOCAB_DIR / f"{name}.tiktoken", cache / key)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken


# --- PostgreSQL and Redis (scripts/services.py starts private servers; scripts/test exports them) ---

@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """(PostgreSQL admin URL, Redis URL): the ones scripts/test started, else private ones."""
    pg, redis_url = os.environ.get("TOKENLANE_TEST_PG"), os.environ.get("TOKENLANE_TEST_REDIS")
    if pg and redis_url:
        yield pg, redis_url
        return
    services = services_module()
    if not services.available():
        pytest.skip("PostgreSQL and Redis are not installed (scripts/setup.sh installs them)")
    running = services.Services(tmp_path_factory.mktemp("services")).start()
    try:
        yield running.pg_url, running.redis_url
    finally:
        running.stop()


@pytest.fixture(autouse=True, scope="session")
def _export_servers(request: pytest.FixtureRequest) -> None:
    """In the PostgreSQL pass, the servers' URLs are in the environment (app_support.make_app
    reads them), started here when scripts/test did not."""
    if os.environ.get("TOKENLANE_TEST_STORE") == "postgres":
        os.environ["TOKENLANE_TEST_PG"], os.environ["TOKENLANE_TEST_REDIS"] = request.getfixturevalue("servers")


@pytest.fixture
def pg_url(servers) -> str:
    return fresh_database(servers[0])


@pytest.fixture
def redis_url(servers) -> str:
    """The Redis server (tests keep apart by key prefix)."""
    return servers[1]


@pytest.fixture
def ledger_url(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a test's ledger lives: an SQLite file, or (second pass of scripts/test, with
    TOKENLANE_TEST_STORE=postgres) a fresh PostgreSQL database."""
    monkeypatch.setenv("TOKENLANE_SPOOL", str(tmp_path / "spool.db"))
    if os.environ.get("TOKENLANE_TEST_STORE") == "postgres":
        return fresh_database(request.getfixturevalue("servers")[0])
    return str(tmp_path / "ledger.db")


@pytest.fixture
def redis_db(servers) -> str:
    """A Redis database of this test alone on the shared server (1..15, emptied first)."""
    import redis

    base = servers[1].rsplit("/", 1)[0]
    n = redis.Redis.from_url(base + "/0").incr("tokenlane-tests:next-db") % 15 + 1
    url = f"{base}/{n}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def store(ledger_url: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Where a test's Tokenlane keeps its state: the ledger, and in scripts/test's second pass
    (TOKENLANE_TEST_STORE=postgres) the shared state on Redis too."""
    if os.environ.get("TOKENLANE_TEST_STORE") == "postgres":
        return {"db": ledger_url, "state": request.getfixturevalue("redis_db")}
    return {"db": ledger_url}
