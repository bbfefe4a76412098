"""The Redis state scripts on a real Redis: all-or-nothing reservations over principal levels,
concurrency slots, rate buckets, leases that return when a replica dies, never-twice releases."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tokenlane.state.redis import BudgetHold, Limits, RedisState, StateUnavailable


def state(url: str, prefix: str, **kw) -> RedisState:
    return RedisState(url, prefix=prefix, **kw)


@pytest.fixture
def prefix() -> str:
    return f"tltest:{uuid.uuid4().hex[:8]}:"


def hold(principal: str, limit: int | None, amount: int) -> BudgetHold:
    return BudgetHold(principal, limit, window_start=0, window_ttl_s=3600, amount=amount)


async def zero(_principal: str) -> int:
    return 0


def test_reservation_is_all_levels_or_none(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        s = state(redis_url, prefix)
        levels = ["org:a", "team:a", "key:1", "user:u"]
        ok = await s.acquire("l1", levels, [hold("org:a", 100, 60), hold("team:a", 80, 60),
                                            hold("key:1", 1000, 60), hold("user:u", 70, 60)], 10, zero)
        assert ok.ok
        # The team has 20 left: refused at that level, and no other level reserved anything.
        refused = await s.acquire("l2", levels, [hold("org:a", 100, 30), hold("team:a", 80, 30),
                                                 hold("key:1", 1000, 30), hold("user:u", 70, 5)], 10, zero)
        assert (refused.ok, refused.reason, refused.level) == (False, "budget", 1)
        snap = await s.snapshot()
        assert snap["reserved"] == {"org:a": 60, "team:a": 60, "key:1": 60, "user:u": 60}
        await s.settle("l1", 25, 8)  # charged 25 at every level, reservation given back
        snap = await s.snapshot()
        assert set(snap["reserved"].values()) == {0} and snap["leases"] == 0
        again = await s.acquire("l3", levels, [hold("org:a", 100, 75), hold("team:a", 80, 55),
                                               hold("key:1", 1000, 75), hold("user:u", 70, 45)], 10, zero)
        assert again.ok  # 25 spent + 75 ≤ 100, 25 + 55 ≤ 80, 25 + 45 ≤ 70
        assert s.round_trips == 3 + 1 + 1 + 1  # acquire+seed+acquire, acquire, settle, acquire
        await s.close()

    asyncio.run(run())


def test_seed_comes_from_the_ledger_once(redis_url: str, prefix: str) -> None:
    seeded: list[str] = []

    async def ledger_spent(principal: str) -> int:
        seeded.append(principal)
        return 90

    async def run() -> None:
        s = state(redis_url, prefix)
        refused = await s.acquire("a", ["k"], [hold("k", 100, 20)], 1, ledger_spent)
        assert (refused.ok, refused.reason, refused.spent) == (False, "budget", 90)
        assert (await s.acquire("b", ["k"], [hold("k", 100, 10)], 1, ledger_spent)).ok
        assert seeded == ["k"]
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
        assert (await dead.acquire("d1", ["k"], [hold("k", 100, 40)], 1, zero)).ok
        assert (await dead.acquire("d2", ["k"], [hold("k", 100, 40)], 1, zero)).ok
        dead._renewer.cancel()  # kill -9: no more renewals, no settle
        assert (await alive.acquire("a1", ["k"], [], 1)).reason == "concurrency"
        # The living replica renews its own lease past the TTL; the dead one's expire.
        assert (await alive.acquire("a0", ["other"], [], 1)).reason == "concurrency"
        await asyncio.sleep(0.8)
        assert (await alive.acquire("a1", ["k"], [hold("k", 100, 90)], 1, zero)).ok
        assert (await alive.acquire("a2", ["k"], [], 1)).ok
        await asyncio.sleep(0.8)  # past the TTL again: renewed, so still held
        assert (await alive.snapshot())["leases"] == 2
        # The dead replica's late settle charges its spend but never gives back twice.
        await dead.settle("d1", 10, 1)
        snap = await alive.snapshot()
        assert snap["reserved"]["k"] == 90
        await alive.close()
        await dead.close()

    asyncio.run(run())


def test_unreachable_redis_is_an_error_not_a_grant() -> None:
    async def run() -> None:
        s = RedisState("redis://127.0.0.1:1/0", timeout_s=0.5)
        with pytest.raises(StateUnavailable):
            await s.acquire("x", ["k"], [hold("k", 10, 1)], 1, zero)
        await s.close()

    asyncio.run(run())


def test_a_slot_taken_in_redis_is_given_back_when_the_ledger_then_fails(tmp_path, redis_db) -> None:
    """Admission takes the Redis concurrency slot first, then the budget reservation in the
    ledger. When the ledger fails there (503), the slot must come back at once: with one slot, the
    next request is served rather than refused after waiting for a slot nobody holds."""
    import httpx
    from middleware_app import build_app

    from tokenlane import StorageError, Tokenlane

    rt = Tokenlane(db=str(tmp_path / "ledger.db"), state=redis_db, max_concurrency=1, max_wait_s=1.0,
                   budget_usd=100)
    rt.thread.retry_s = 0.1  # the ledger's retries give up quickly here
    real = rt.ledger.reserve_all

    def broken(*args, **kwargs):
        raise StorageError("database is locked")

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(rt)), base_url="http://t") as client:
            rt.ledger.reserve_all = broken
            r = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-a"})
            assert r.status_code == 503, r.text
            await rt.shared.admission.drain()
            assert (await rt.shared.admission.redis.snapshot())["slots"].get("*", 0) == 0
            rt.ledger.reserve_all = real
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
