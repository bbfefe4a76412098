"""The shared-state interface on its one-host backend: holds are all-or-nothing across budget
levels, rate buckets and concurrency slots; settle charges every level and frees the rest."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tokenlane import Ledger
from tokenlane.state import Hold, LocalState, Rate, Slots

NOW = 1_700_000_000.0


@pytest.fixture()
def ledger(tmp_path):
    return Ledger(str(tmp_path / "state.db"))


def run(call):
    """Runs ``call()`` (an awaitable-returning call) on a fresh event loop."""

    async def go():
        return await call()

    return asyncio.run(go())


def test_a_hold_takes_every_budget_level_or_none(ledger):
    st = LocalState(ledger)
    chain = ("org:acme", "team:acme/eng", "key:k1")
    ledger.set_budget("org:acme", 1000, "day", NOW)
    ledger.set_budget("key:k1", 300, "day", NOW)
    assert run(lambda: st.acquire(Hold("r1", chain, 200), NOW)) is None
    denied = run(lambda: st.acquire(Hold("r2", chain, 200), NOW))  # the key has 100 left
    assert denied is not None and denied.kind == "budget" and denied.key == "key:k1"
    # Nothing of r2 was kept at the levels above the one without room.
    assert ledger.usage("org:acme", NOW)["reserved_pico_usd"] == 200
    assert ledger.usage("team:acme/eng", NOW)["reserved_pico_usd"] == 200
    run(lambda: st.settle(Hold("r1", chain, 200), 150, 0, NOW))
    for level in chain:
        u = ledger.usage(level, NOW)
        assert (u["spent_pico_usd"], u["reserved_pico_usd"]) == (150, 0), level
    run(lambda: st.release(Hold("r3", chain, 0), NOW))
    assert ledger.usage("org:acme", NOW)["spent_pico_usd"] == 150


def test_concurrent_holds_from_several_threads_never_pass_any_level(ledger, tmp_path):
    # Two "workers" (own Ledger connections on one file), keys under one team budget.
    ledger.set_budget("team:t", 10_000, "total", NOW)
    ledger.set_budget("key:a", 6_000, "total", NOW)
    ledger.set_budget("key:b", 6_000, "total", NOW)
    path = str(tmp_path / "state.db")
    granted: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(key: str) -> None:
        st = LocalState(Ledger(path))

        async def go() -> None:
            for i in range(40):
                if await st.acquire(Hold(f"{key}{i}", ("team:t", key), 500), NOW) is None:
                    with lock:
                        granted.append((key, f"{key}{i}"))

        asyncio.run(go())

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("key:a", "key:a", "key:b", "key:b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 20  # the team's 10,000 in 500s, whichever key asked
    assert ledger.usage("team:t", NOW)["reserved_pico_usd"] == 10_000
    for key in ("key:a", "key:b"):
        assert ledger.usage(key, NOW)["reserved_pico_usd"] <= 6_000


def test_rates_and_slots_are_all_or_nothing_and_given_back(ledger):
    st = LocalState(ledger)
    rates = (Rate("team:t", rpm=2), Rate("key:k", tpm=1000))
    slots = (Slots("key:k", 1),)
    assert run(lambda: st.acquire(Hold("a", rates=rates, slots=slots, tokens=400), NOW)) is None
    busy = run(lambda: st.acquire(Hold("b", rates=rates, slots=slots, tokens=400), NOW))
    assert busy is not None and busy.kind == "slots"
    run(lambda: st.settle(Hold("a", rates=rates, slots=slots, tokens=400), 0, 900, NOW))  # used 900 tokens, not 400
    over = run(lambda: st.acquire(Hold("c", rates=rates, slots=slots, tokens=400), NOW + 1))
    assert over is not None and over.kind == "rate" and over.key == "key:k" and over.retry_after_s > 0
    # A refused hold took nothing: the team's RPM still has one request of room.
    assert run(lambda: st.acquire(Hold("d", rates=(Rate("team:t", rpm=2),), tokens=1), NOW + 2)) is None
    assert run(lambda: st.acquire(Hold("e", rates=(Rate("team:t", rpm=2),), tokens=1), NOW + 3)) is not None
    # A minute later the buckets are empty again.
    assert run(lambda: st.acquire(Hold("f", rates=rates, slots=slots, tokens=400), NOW + 62)) is None
