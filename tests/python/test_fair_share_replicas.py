"""Fair share across replicas: two runtimes sharing one real Redis (as two replicas would). A tenant
served heavily on replica A is ordered behind a light tenant on replica B, because B's fair-share
counters add the service every replica reported to Redis (counted in the settlement script, read
off the request path)."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest
from middleware_app import build_app

from tokenlane import InvalidArgumentError, Scheduler, Tokenlane

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me about tea. " * 20}],
        "max_tokens": 60}


def _tenant(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _weighted(rows: list[dict], tenant: str) -> int:
    """The VTC service of a tenant's rows with the default weights (input 1, output 2)."""
    return sum(r["input_tokens"] + 2 * r["output_tokens"] for r in rows if r["tenant"] == tenant)


def test_a_tenant_served_heavily_elsewhere_waits_behind_a_light_one(tmp_path, redis_db) -> None:
    a = Tokenlane(db=str(tmp_path / "a.db"), state=redis_db, policy="fair")
    b = Tokenlane(db=str(tmp_path / "b.db"), state=redis_db, policy="fair")
    heavy, light = _tenant("sk-heavy"), _tenant("sk-light")

    async def main() -> None:
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(rt)), base_url="http://test")
                   for rt in (a, b)]
        on_a, on_b = clients

        async def ask(client: httpx.AsyncClient, key: str) -> httpx.Response:
            r = await client.post("/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            return r

        # B has served the light tenant twice itself. Then, paused (so both wait in its queue), B
        # receives a request of the heavy tenant, then one of the light tenant: heavy is first.
        await ask(on_b, "sk-light")
        await ask(on_b, "sk-light")
        b.scheduler.pause()
        first = asyncio.ensure_future(ask(on_b, "sk-heavy"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(ask(on_b, "sk-light"))
        await asyncio.sleep(0.05)

        waiting = {e["id"]: e["tenant"] for e in b.scheduler.snapshot(b.clock())["queue"]}
        assert sorted(waiting.values()) == sorted([heavy, light])

        # Meanwhile replica A serves the heavy tenant a lot (and the light one once).
        await asyncio.gather(*(ask(on_a, "sk-heavy") for _ in range(8)), ask(on_a, "sk-light"))
        await a.shared.admission.drain()
        await b.shared.admission.drain()
        assert await b.shared.fleet.sync() >= 1  # (its background sync may have been first)
        # B's counters are the fleet's service: A's added to B's own, B's own not counted twice.
        rows_a, rows_b = a.ledger.list_requests(limit=50), b.ledger.list_requests(limit=50, status="succeeded")
        counters = {t["tenant"]: t["vtc_counter"] for t in b.scheduler.snapshot(b.clock())["tenants"]}
        assert counters[heavy] == _weighted(rows_a, heavy) > 0
        assert counters[light] == _weighted(rows_a, light) + _weighted(rows_b, light)
        assert await b.shared.fleet.sync() == 0  # nothing new: nothing added again

        # Resumed: the scheduler starts the light tenant's request first (the order pop_ready
        # returns is the order the dispatcher wakes them in), though the heavy one came first.
        b.scheduler.resume()
        started = b.scheduler.pop_ready(b.clock())
        assert [waiting[i] for i in started] == [light, heavy]
        for request_id in started:
            b.schedule._resolve(request_id, None)  # what the dispatcher does with them
        await asyncio.gather(first, second)
        for client in clients:
            await client.aclose()
        for rt in (a, b):
            rt.shared.fleet.stop()
            await rt.shared.admission.redis.close()

    asyncio.run(main())


def test_add_service_reorders_a_waiting_queue() -> None:
    """Without the fleet's figures arrival order decides between tenants with the same service
    here; service added from elsewhere (what a sync does) moves the tenant that got it behind."""
    def start_order(remote_service: bool) -> list[str]:
        s = Scheduler(policy="fair")
        s.pause()
        for i, tenant in enumerate(("heavy", "light")):
            decision = s.submit({"id": tenant, "tenant": tenant, "model": "gpt-4o-mini", "input_tokens": 100,
                                 "est_output_p50": 50, "est_output_p90": 80, "max_tokens": 60,
                                 "cost_p50_pico_usd": 1, "cost_p90_pico_usd": 2, "cost_max_pico_usd": 3},
                                1000.0 + i)
            assert decision.kind == "queue"
        if remote_service:
            s.add_service("heavy", 5_000, 1_000)
        s.resume()
        return s.pop_ready(1002.0)

    assert start_order(remote_service=False) == ["heavy", "light"]
    assert start_order(remote_service=True) == ["light", "heavy"]
    with pytest.raises(InvalidArgumentError):
        Scheduler(policy="fair").add_service("t", -1, 0)
