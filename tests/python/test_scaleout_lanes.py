"""What replicas share besides limits, on real uvicorn replicas, PostgreSQL and Redis: the deferred
lane (any replica runs a job, exactly one does, a killed replica's job runs again elsewhere once
its lease expires, never while it holds) and the admin's view of every replica's queue."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from store_support import Replicas
from test_scaleout import pytestmark, replica_env, wait_until  # noqa: F401 - the same opt-in

from tokenlane.ledger import Ledger

BATCH = {"x-tokenlane-priority": "batch"}


def ask(question: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": question}]}


def runs(track: redis.Redis, question: str) -> list[dict[str, Any]]:
    """Every upstream call the replicas made for this question: pid and time."""
    return [json.loads(x) for x in track.lrange(f"replica:runs:{question}", 0, -1)]


def test_deferred_jobs_run_once_on_any_replica_and_a_killed_replicas_job_runs_again(
        servers, pg_url: str, redis_db: str, tmp_path: Path) -> None:
    # Replica 0 is paused: it defers batch requests and runs none itself; 1 and 2 run the lane.
    replicas = Replicas(3, replica_env(pg_url, redis_db, redis_db, tmp_path), tmp_path, own=[{"REPLICA_PAUSED": "1"}])
    track = redis.Redis.from_url(redis_db)
    pids = replicas.pids()
    urls = replicas.urls
    try:
        jobs: dict[str, str] = {}
        for i in range(12):
            question = f"Job {i} [slow=0.5]: name a river."
            r = httpx.post(urls[0] + "/v1/chat/completions", json=ask(question), headers=BATCH, timeout=60)
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "deferred" and r.headers["location"] == r.json()["status_url"]
            jobs[question] = r.json()["status_url"]

        def status(url: str, path: str) -> dict[str, Any]:
            return httpx.get(url + path, timeout=30).json()

        assert wait_until(lambda: all(status(urls[1], p)["status"] == "succeeded" for p in jobs.values()), 60)
        for question, path in jobs.items():
            assert len(runs(track, question)) == 1  # exactly one replica ran it, once
            views = [status(url, path) for url in urls]  # the same answer on every replica
            assert {v["status"] for v in views} == {"succeeded"}
            assert len({json.dumps(v["response"], sort_keys=True) for v in views}) == 1
        ran_on = {runs(track, q)[0]["pid"] for q in jobs}
        assert ran_on == {pids[1], pids[2]}  # both working replicas took jobs; the paused one none

        # A job whose replica is killed while it runs: back in the lane once its lease (2 s)
        # expires, run by the other replica, and only then.
        killed_q = "Job killed [slow=120]: name a lake."
        path = httpx.post(urls[0] + "/v1/chat/completions", json=ask(killed_q), headers=BATCH,
                          timeout=60).json()["status_url"]
        assert wait_until(lambda: runs(track, killed_q), 30)
        victim = pids.index(runs(track, killed_q)[0]["pid"])
        assert victim in (1, 2)
        replicas.kill(victim)
        killed_at = time.time()
        survivor = urls[3 - victim]
        assert wait_until(lambda: status(survivor, path)["status"] == "succeeded", 60)
        first, second = runs(track, killed_q)
        assert second["pid"] == pids[3 - victim] and second["at"] > killed_at
        assert status(urls[0], path)["attempts"] == 2

        # A job that runs longer than the lease is renewed, not run twice.
        long_q = "Job long [slow=5]: name a sea."
        path = httpx.post(urls[0] + "/v1/chat/completions", json=ask(long_q), headers=BATCH,
                          timeout=60).json()["status_url"]
        assert wait_until(lambda: status(survivor, path)["status"] == "succeeded", 60)
        assert len(runs(track, long_q)) == 1 and status(urls[0], path)["attempts"] == 1
    finally:
        replicas.stop()
    with psycopg.connect(pg_url) as conn:
        rows = dict(conn.execute("SELECT id, status FROM requests").fetchall())
    ids = [p.rsplit("/", 1)[1] for p in jobs.values()]
    assert all(rows[i] == "succeeded" for i in ids) and len(rows) == len(jobs) + 2  # one row each
    r = redis.Redis.from_url(redis_db)
    assert r.zcard("tokenlane:jobs:pending") == 0 and r.zcard("tokenlane:jobs:running") == 0


def test_the_admin_queue_view_shows_every_replicas_queue(servers, pg_url: str, redis_db: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLANE_SPOOL", str(tmp_path / "test-spool.db"))
    led = Ledger(pg_url)
    admin = led.create_user("root@example.test", role="admin")
    _, admin_key = led.create_api_key(admin)
    client_key = led.create_api_key(led.create_user("client@example.test"))[1]
    led.close()
    replicas = Replicas(2, replica_env(pg_url, redis_db, redis_db, tmp_path), tmp_path, own=[{"REPLICA_PAUSED": "1"}])
    try:
        async def run() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=60) as client:
                # Three requests wait in paused replica 0's queue; replica 1's view lists them.
                waiting = [asyncio.ensure_future(client.post(
                    replicas.urls[0] + "/v1/chat/completions", json=ask(f"Queued {i}"),
                    headers={"authorization": f"Bearer {client_key}"})) for i in range(3)]
                try:
                    deadline = time.monotonic() + 30
                    while True:
                        view = (await client.get(replicas.urls[1] + "/tokenlane/queue",
                                                 headers={"authorization": f"Bearer {admin_key}"})).json()
                        if len(view["queue"]) == 3 or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.2)
                    refused = await client.get(replicas.urls[1] + "/tokenlane/queue",
                                               headers={"authorization": f"Bearer {client_key}"})
                    assert refused.status_code == 403
                    return view
                finally:
                    for task in waiting:
                        task.cancel()
                    await asyncio.gather(*waiting, return_exceptions=True)

        view = asyncio.run(run())
    finally:
        replicas.stop()
    assert len(view["queue"]) == 3 and {e["replica"] for e in view["queue"]} == {view["queue"][0]["replica"]}
    assert view["queue"][0]["replica"] != view["replica"]  # the other replica's queue
    assert len(view["replicas"]) == 2 and sum(r["queue"] for r in view["replicas"].values()) == 3
