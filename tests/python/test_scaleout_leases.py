"""Budget reservations under leases, with real replicas: ``kill -9`` of a replica under load, and
its reservations (in Redis, at every level) come back within the lease time; the ledger holds none
(it reserves only while Redis is unreachable). Opt-in with the other replica tests:
TOKENLANE_TEST_REPLICAS=1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import redis
from store_support import Replicas
from test_scaleout import (Load, held_in_redis, ledger_rows, pytestmark, replica_env, state_left,  # noqa: F401
                           until_or_raise, wait_until)

LEASE_S = 2.0


def reservations(state: str) -> tuple[int, int]:
    """(live leases in Redis, what budget reservations hold there summed over every principal)."""
    r = redis.Redis.from_url(state)
    return int(r.zcard("tokenlane:leases")), held_in_redis(r)


def ledger_holds(pg: str) -> tuple[int, int]:
    """(holds in the ledger, reserved pico-USD summed over every budget row there)."""
    with psycopg.connect(pg) as conn:
        holds = conn.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
        reserved = conn.execute("SELECT COALESCE(SUM(reserved_pico_usd), 0) FROM budgets").fetchone()[0]
    return int(holds), int(reserved)


def test_kill_9_gives_back_the_replicas_budget_reservations_within_the_lease(servers, pg_url: str, redis_db: str,
                                                                             tmp_path: Path) -> None:
    env = replica_env(pg_url, redis_db, redis_db, tmp_path, TOKENLANE_BUDGET_USD="5",
                      TOKENLANE_STATE_LEASE_S=str(LEASE_S))
    replicas = Replicas(3, env, tmp_path)
    load = Load(replicas.urls)
    held_at_kill: list[tuple[int, int]] = []
    try:
        async def run() -> float:
            stop = asyncio.Event()
            task = asyncio.ensure_future(load.steady(30, stop))
            while len(load.answers) < 150:
                await until_or_raise(task)
            # The load holds reservations (polled: a sample may fall between requests)
            for _ in range(100):
                held_at_kill[:] = [await asyncio.to_thread(reservations, redis_db)]
                if min(held_at_kill[0]) > 0:
                    break
                await until_or_raise(task)
            await asyncio.to_thread(replicas.kill, 0)
            killed = time.monotonic()
            while len([a for a in load.answers if a["at"] > killed]) < 150:
                await until_or_raise(task)
            stop.set()
            await task
            return killed

        killed = asyncio.run(run())
        # Within the lease (plus one renewal interval of the survivors' sweep and a poll), nothing
        # is held any more: the dead replica's reservations were released at every level.
        back = wait_until(lambda: reservations(redis_db) == (0, 0), LEASE_S * 2 + 2)
        waited = time.monotonic() - killed
        # The final records it left in Redis (answered, not committed yet) are claimed once their
        # own claim runs out, which can be up to a renewal interval after its leases: the others
        # apply them to the ledger before the replicas stop.
        applied = wait_until(lambda: state_left(redis_db)["records"] == 0, LEASE_S * 2 + 10)
    finally:
        replicas.stop()
    assert min(held_at_kill[0]) > 0, f"the load held no reservation before the kill: {held_at_kill}"
    assert back, f"reservations still held {waited:.1f} s after the kill: {reservations(redis_db)}"
    assert applied, f"final records still kept in Redis: {state_left(redis_db)}"
    assert ledger_holds(pg_url) == (0, 0)
    rows = ledger_rows(pg_url)
    for a in load.answers:  # every response a client received is on the ledger, once, succeeded
        assert a["status"] == 200
        assert rows[a["headers"]["x-tokenlane-request-id"]]["status"] == "succeeded"
    assert not [r for r in rows.values() if r["status"] in ("running", "queued")]  # the dead one's: failed
