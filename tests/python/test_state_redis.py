"""The Redis state scripts on a real Redis: all-or-nothing reservations over principal levels,
concurrency slots, rate buckets, leases that return when a replica dies, never-twice releases."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tokenlane.state.redis import BudgetHold, BudgetSeed, Limits, RedisState, StateUnavailable


def state(url: str, prefix: str, **kw) -> RedisState:
    return RedisState(url, prefix=prefix, **kw)


@pytest.fixture
def prefix() -> str:
    return f"tltest:{uuid.uuid4().hex[:8]}:"


def hold(principal: str, amount: int, tokens: int = 0) -> BudgetHold:
    return BudgetHold(principal, amount, tokens)


def ledger(limits: dict[str, int | None], spent: int = 0, *, tokens: dict[str, int] | None = None,
           window: str = "day", reads: list[str] | None = None):
    """A stand-in for the ledger's budget rows: ``seed(principals) -> [BudgetSeed]``."""
    async def seed(principals: list[str]) -> list[BudgetSeed]:
        if reads is not None:
            reads.extend(principals)
        return [BudgetSeed(limits.get(p), (tokens or {}).get(p), window, spent, 0) for p in principals]
    return seed


zero = ledger({})


def test_reservation_is_all_levels_or_none(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix)
        levels = ["org:a", "team:a", "key:1", "user:u"]
        seed = ledger({"org:a": 100, "team:a": 80, "key:1": 1000, "user:u": 70})
        ok = await s.acquire("l1", levels, [hold(p, 60) for p in levels], 10, seed)
        assert ok.ok
        # The team has 20 left: refused at that level, and no other level reserved anything.
        refused = await s.acquire("l2", levels, [hold("org:a", 30), hold("team:a", 30), hold("key:1", 30),
                                                 hold("user:u", 5)], 10, seed)
        assert (refused.ok, refused.reason, refused.level) == (False, "budget", 1)
        assert refused.usage == {"limit_pico_usd": 80, "limit_tokens": None, "window": "day", "spent_pico_usd": 0,
                                 "spent_tokens": 0, "reserved_pico_usd": 60, "reserved_tokens": 0}
        snap = await s.snapshot()
        assert snap["reserved"] == {level: (60, 0) for level in levels}
        await s.settle("l1", 25, 8)  # charged 25 at every level, reservation given back
        snap = await s.snapshot()
        assert set(snap["reserved"].values()) == {(0, 0)} and snap["leases"] == 0
        again = await s.acquire("l3", levels, [hold("org:a", 75), hold("team:a", 55), hold("key:1", 75),
                                               hold("user:u", 45)], 10, seed)
        assert again.ok  # 25 spent + 75 ≤ 100, 25 + 55 ≤ 80, 25 + 45 ≤ 70
        assert s.round_trips == 3 + 1 + 1 + 1  # acquire+seed+acquire, acquire, settle, acquire
        await s.close()

    asyncio.run(run())


def test_token_budgets_and_unlimited_levels(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix)
        seed = ledger({}, tokens={"key:1": 1000})  # a token budget on the key, nothing on the tenant
        assert (await s.acquire("a", ["t"], [hold("t", 5, 600), hold("key:1", 5, 600)], 1, seed)).ok
        refused = await s.acquire("b", ["t"], [hold("t", 5, 600), hold("key:1", 5, 600)], 1, seed)
        assert (refused.reason, refused.level, refused.usage["reserved_tokens"]) == ("budget", 1, 600)
        await s.settle("a", 5, 300)
        assert (await s.acquire("c", ["t"], [hold("t", 5, 600), hold("key:1", 5, 600)], 1, seed)).ok
        assert (await s.snapshot())["reserved"] == {"t": (0, 0), "key:1": (5, 600)}  # unlimited: nothing held
        await s.close()

    asyncio.run(run())


def test_seed_comes_from_the_ledger_once(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        reads: list[str] = []
        s = state(redis_url, prefix)
        seed = ledger({"k": 100}, spent=90, reads=reads)
        refused = await s.acquire("a", ["k"], [hold("k", 20)], 1, seed)
        assert (refused.ok, refused.reason, refused.usage["spent_pico_usd"]) == (False, "budget", 90)
        assert (await s.acquire("b", ["k"], [hold("k", 10)], 1, seed)).ok
        assert reads == ["k"]
        await s.close()

    asyncio.run(run())


def test_the_window_rolls_over_and_budget_changes_reach_redis(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix)
        day = 86400.0 * 20_000
        seed = ledger({"k": 100})
        assert (await s.acquire("a", ["k"], [hold("k", 80)], 1, seed, now=day + 10)).ok
        await s.settle("a", 80, 1, now=day + 20)
        assert (await s.acquire("b", ["k"], [hold("k", 30)], 1, seed, now=day + 30)).reason == "budget"
        assert (await s.acquire("c", ["k"], [hold("k", 30)], 1, seed, now=day + 86400 + 5)).ok  # a new day
        await s.settle("c", 0, 0)
        # Another replica's admin raised the limit: the ledger's new row reaches the hash, spend stays.
        s.sync_budget("k", BudgetSeed(200, None, "day", 999, 0), day + 86400 + 6)
        assert (await s.acquire("d", ["k"], [hold("k", 190)], 1, seed, now=day + 86400 + 7)).ok
        assert s.held("k") == (190, 0)
        await s.close()

    asyncio.run(run())


def test_concurrency_slots_global_and_per_principal(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix, limits=Limits(concurrency=3, principal_concurrency=2))
        assert (await s.acquire("1", ["k:a"], [], 1)).ok
        assert (await s.acquire("2", ["k:a"], [], 1)).ok
        third = await s.acquire("3", ["k:a"], [], 1)
        assert (third.ok, third.reason) == (False, "concurrency")
        assert (await s.acquire("4", ["k:b"], [], 1)).ok
        assert (await s.acquire("5", ["k:c"], [], 1)).reason == "concurrency"  # global 3 reached
        await s.settle("1", 0, 1)
        assert (await s.acquire("6", ["k:c"], [], 1)).ok
        await s.close()

    asyncio.run(run())


def test_rate_buckets_refuse_with_retry_after(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix, limits=Limits(rpm=2, tpm=1000))
        assert (await s.acquire("1", ["k"], [], 400)).ok
        assert (await s.acquire("2", ["k"], [], 400)).ok
        third = await s.acquire("3", ["k"], [], 1)
        assert third.reason == "rate" and 0 < third.retry_after_s <= 30
        too_big = await s.acquire("4", ["k"], [], 5000)
        assert too_big.reason in ("too_large", "rate")
        await s.close()

    asyncio.run(run())


def test_a_dead_replicas_leases_return_within_the_ttl(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        limits = Limits(concurrency=2)
        dead = state(redis_url, prefix, lease_s=0.6, limits=limits)
        alive = state(redis_url, prefix, lease_s=0.6, limits=limits)
        seed = ledger({"k": 100})
        assert (await dead.acquire("d1", ["k"], [hold("k", 40)], 1, seed)).ok
        assert (await dead.acquire("d2", ["k"], [hold("k", 40)], 1, seed)).ok
        dead._renewer.cancel()  # kill -9: no more renewals, no settle
        assert (await alive.acquire("a1", ["k"], [], 1)).reason == "concurrency"
        # The living replica renews its own lease past the TTL; the dead one's expire.
        assert (await alive.acquire("a0", ["other"], [], 1)).reason == "concurrency"
        await asyncio.sleep(0.8)
        assert (await alive.acquire("a1", ["k"], [hold("k", 90)], 1, seed)).ok
        assert (await alive.acquire("a2", ["k"], [], 1)).ok
        await asyncio.sleep(0.8)  # past the TTL again: renewed, so still held
        assert (await alive.snapshot())["leases"] == 2
        # The dead replica's late settle charges its spend but never gives back twice.
        await dead.settle("d1", 10, 1)
        snap = await alive.snapshot()
        assert snap["reserved"]["k"] == (90, 0)
        await alive.close()
        await dead.close()

    asyncio.run(run())


def test_final_records_stay_until_committed_and_a_dead_replicas_are_adopted(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        dead = state(redis_url, prefix, lease_s=0.6)
        alive = state(redis_url, prefix, lease_s=0.6)
        adopted: list[tuple[str, bytes]] = []
        dead.on_orphans = alive.on_orphans = adopted.extend
        r = dead._redis
        for i in range(3):
            assert (await dead.acquire(f"r{i}", ["k"], [], 1, zero)).ok
            assert await dead.settle(f"r{i}", 5, 1, record=b'{"id":"r%d"}' % i)
        dead.committed("r0")  # the ledger committed r0: the next call forgets it
        assert await alive.renew() == 0 and not adopted  # not expired: nobody else takes them
        await dead.renew()
        assert sorted(await r.hkeys(f"{prefix}records")) == [b"r1", b"r2"]
        dead._renewer.cancel()  # kill -9 before the ledger committed r1 and r2
        await asyncio.sleep(0.8)
        await alive.renew()
        assert sorted(adopted) == [("r1", b'{"id":"r1"}'), ("r2", b'{"id":"r2"}')]
        await alive.renew()
        assert len(adopted) == 2  # claimed for a lease: not handed out twice while it applies them
        alive.committed("r1")
        alive.committed("r2")
        await alive.forget_committed()
        assert await r.zcard(f"{prefix}records:at") == 0 and await r.hlen(f"{prefix}records") == 0
        await alive.close()
        await dead.close()

    asyncio.run(run())


def test_a_budget_set_while_redis_is_away_reaches_it_when_it_is_back(tmp_path, redis_db) -> None:
    """The ledger takes the change at once; Redis, whose hash would keep the old limit, takes it
    (and the window's spend) once it answers again."""
    from tokenlane import Tokenlane

    rt = Tokenlane(db=str(tmp_path / "ledger.db"), state=redis_db, state_failure="local")
    hashes = rt.shared.admission.redis
    hashes.sync_budget("k", BudgetSeed(100, None, "day", 0, 0), 0.0)  # (no hash yet: nothing to do)
    hashes._sync().hset(hashes.budget_key("k"), mapping={"lim": 100, "win": "day", "ws": 0, "sp": 0, "spk": 0})
    real_url = hashes._sync_url
    hashes._sync().close()
    hashes._sync_client, hashes._sync_url = None, "redis://127.0.0.1:1/0"  # Redis away
    rt.set_budget("k", "0.000000000050")  # 50 pico-USD
    assert rt.ledger.get_budget("k")["limit_pico_usd"] == 50 and rt.shared._stale == {"k"}
    assert rt.shared.admission.degraded
    hashes._sync().close()
    hashes._sync_client, hashes._sync_url = None, real_url  # back: the next answer resyncs
    rt.shared.admission._recovered()
    rt.thread.flush()
    rt.thread.submit(lambda: None).result()
    assert int(hashes._sync().hget(hashes.budget_key("k"), "lim")) == 50 and not rt.shared._stale
    hashes._sync().close()
    rt.thread.close()


def test_unreachable_redis_is_an_error_not_a_grant() -> None:
    async def run() -> None:
        s = RedisState("redis://127.0.0.1:1/0", timeout_s=0.5)
        with pytest.raises(StateUnavailable):
            await s.acquire("x", ["k"], [hold("k", 1)], 1, zero)
        await s.close()

    asyncio.run(run())


def test_a_slot_taken_in_redis_is_given_back_when_the_ledger_then_fails(tmp_path, redis_db) -> None:
    """Admission takes the Redis concurrency slot and budget reservation first, then the budget
    stage's own part (the ledger). When that fails (503), the slot must come back at once: with
    one slot, the next request is served rather than refused after waiting for a slot nobody holds."""
    import httpx
    from middleware_app import build_app

    from tokenlane import StorageError, Tokenlane
    from tokenlane.errors import ledger_unavailable

    rt = Tokenlane(db=str(tmp_path / "ledger.db"), state=redis_db, max_concurrency=1, max_wait_s=1.0,
                   budget_usd=100)
    real = rt.budget.reserve

    async def broken(*args, **kwargs):
        raise ledger_unavailable(StorageError("database is locked"))

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(rt)), base_url="http://t") as client:
            rt.budget.reserve = broken
            r = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"})
            assert r.status_code == 503, r.text
            await rt.shared.admission.drain()
            assert (await rt.shared.admission.redis.snapshot())["slots"].get("*", 0) == 0
            rt.budget.reserve = real
            r = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"})
            assert r.status_code == 200, r.text
        await rt.shared.admission.drain()
        assert (await rt.shared.admission.redis.snapshot())["slots"].get("*", 0) == 0
        await rt.shared.admission.redis.close()

    asyncio.run(run())
    rt.thread.close()


def test_an_acquire_interrupted_mid_call_gives_its_lease_back_at_once(redis_url: str, prefix: str) -> None:
    """A request cancelled while its acquire script is on the server (the client hung up, the
    process shuts down) gives back what that script took at once, not when the lease expires (a
    global slot held for the lease's 15 s): with one slot, the next request gets it. Cancelled at
    any point (before the call, while it is in flight), it raises the cancellation rather than
    swallowing it."""
    import time

    from tokenlane.state.shared import SharedAdmission

    async def run() -> None:
        admission = SharedAdmission(redis_url, limits=Limits(concurrency=1), failure="closed", replicas=1,
                                    lease_s=60)
        admission.redis.prefix = prefix
        for steps in range(12):  # cancelled before the call, while it is in flight, or answered
            task = asyncio.ensure_future(admission.acquire(f"l{steps}", ["k:a"], [], 1, seed=zero,
                                                           deadline=time.monotonic() + 5))
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.cancel():
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:  # answered before the cancellation: an admitted request given back as usual
                assert (await task).ok
                admission.settle(f"l{steps}", 0, 0)
            for _ in range(50):  # the call completes in the background, then its give-back
                await asyncio.sleep(0.002)
                await admission.drain()
            snap = await admission.redis.snapshot()
            assert (snap["leases"], snap["slots"].get("*", 0)) == (0, 0), steps
        assert (await admission.acquire("last", ["k:a"], [], 1, seed=zero, deadline=time.monotonic() + 1)).ok
        await admission.redis.close()

    asyncio.run(run())
