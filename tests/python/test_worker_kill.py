"""kill -9 of one worker of a multi-worker uvicorn on one SQLite ledger, under load: every response a
client received has its ledger row (journaled before the response completes, applied by the survivor's
reclaim), the dead worker's budget holds and running rows are reclaimed (by the surviving worker's
sweeper, or at the start of the next process), and the surviving worker keeps serving from the same
file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tokenlane import Ledger, Tokenlane, recovery

HERE = Path(__file__).resolve().parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to five"}], "max_tokens": 30}


def app_factory():  # uvicorn --factory: each worker builds its own app on the shared file
    from tokenlane.providers import SimulatedProvider

    from middleware_app import build_app

    # A budget far from its limit: every request reserves (a hold the worker owns) and settles.
    return build_app(provider=SimulatedProvider(ttft_s=float(os.environ.get("SOAK_TTFT", "0.05")), tokens_per_s=300),
                     db=os.environ["SOAK_DB"], budget_usd=1000, reclaim_interval_s=0.5)


def dead_owners(led: Ledger) -> list[str]:
    return [o for o in led.owners() if recovery.is_alive(o) is False]


def start_server(db: str, workers: int, ttft_s: float = 0.05) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "SOAK_DB": db, "SOAK_TTFT": str(ttft_s),
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "test_worker_kill:app_factory",
                               "--workers", str(workers), "--port", str(port), "--log-level", "error"], env=env)
    deadline = time.monotonic() + 60
    # One worker: uvicorn serves in the process itself (no supervisor)
    while (workers > 1 and len(worker_pids(server.pid)) < workers) or not _listening(port):
        assert time.monotonic() < deadline, f"uvicorn did not start {workers} workers"
        time.sleep(0.2)
    time.sleep(2)  # every worker imports and opens the ledger
    return server, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.skipif(sys.platform != "linux", reason="reads process trees with ps --ppid")
def test_kill_9_of_a_worker_loses_no_answered_row(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger(db)  # create the schema once, before two workers race to
    server, port = start_server(db, 2)
    try:

        async def load() -> list[httpx.Response | Exception]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                async def one(i: int):
                    await asyncio.sleep(i * 0.02)
                    try:
                        return await client.post("/v1/chat/completions", json={**CHAT, "user": f"u{i % 4}"})
                    except httpx.HTTPError as exc:
                        return exc

                async def killer():
                    await asyncio.sleep(1.0)
                    os.kill(worker_pids(server.pid)[0], signal.SIGKILL)

                results = await asyncio.gather(*(one(i) for i in range(150)), killer())
                return list(results[:-1])

        results = asyncio.run(load())
        # The survivor's sweeper (every 0.5 s here) replays the dead worker's journal and frees
        # what it held, while the server still runs.
        led = Ledger(db)
        deadline = time.monotonic() + 60
        while dead_owners(led) or _dead_journals(db):
            assert time.monotonic() < deadline, f"not reclaimed: {dead_owners(led)} {_dead_journals(db)}"
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    answered = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    for r in answered:
        row = led.get_request(r.headers["x-tokenlane-request-id"])
        assert row is not None and row["status"] == "succeeded", r.headers["x-tokenlane-request-id"]
        assert row["cost_pico_usd"] > 0
    # Nothing is left reserved or running: the dead worker's share was freed, the rest settled.
    assert led.owners() == []
    assert all(b["reserved_pico_usd"] == 0 for b in led.list_budgets())
    assert led.count_requests(status="running") == 0
    spent = sum(r["cost_pico_usd"] or 0 for r in led.list_requests(limit=1000))
    assert led.usage("anonymous")["spent_pico_usd"] == spent  # every answered row charged exactly once
    # The survivor served to the end: answered requests outnumber what one worker had in flight.
    assert len(answered) > 75


@pytest.mark.skipif(sys.platform != "linux", reason="reads process trees with ps --ppid")
def test_the_next_process_reclaims_a_killed_workers_holds_and_rows_at_start(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger(db)
    server, port = start_server(db, 1, ttft_s=30.0)  # requests stay in flight until the kill
    try:
        async def in_flight() -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                requests = [asyncio.ensure_future(client.post("/v1/chat/completions", json={**CHAT, "user": f"u{i}"}))
                            for i in range(5)]
                led = Ledger(db)
                deadline = time.monotonic() + 30
                # All admitted (a row is written when its request is admitted, before its hold is
                # taken) and every hold taken: the amount reserved has stopped growing.
                reserved: list[int] = []
                while (led.count_requests(status="running") < 5 or len(reserved) < 3 or reserved[-3] == 0
                       or len(set(reserved[-3:])) > 1):
                    assert time.monotonic() < deadline
                    reserved.append(led.usage("anonymous")["reserved_pico_usd"])
                    await asyncio.sleep(0.1)
                os.kill(server.pid, signal.SIGKILL)
                await asyncio.gather(*requests, return_exceptions=True)

        asyncio.run(in_flight())
    finally:
        server.kill()
        server.wait(timeout=30)
    led = Ledger(db)
    assert len(dead_owners(led)) == 1 and led.usage("anonymous")["reserved_pico_usd"] > 0  # left behind

    Tokenlane(db=db)  # the next process: reclaims at start, before serving
    assert led.owners() == []
    assert led.usage("anonymous")["reserved_pico_usd"] == 0
    rows = led.list_requests()
    assert len(rows) == 5 and {r["status"] for r in rows} == {"failed"}
    assert all("worker process ended" in r["error"] for r in rows)


def test_a_dead_workers_journal_is_replayed_once(tmp_path):
    """Answered rows that only reached the dead worker's journal are applied, each exactly once,
    however often the journal is replayed."""
    db = str(tmp_path / "ledger.db")
    led = Ledger(db)
    led.set_budget("acme", 10**12)
    dead = f"{socket.gethostname()}:{os.getpid()}:1"  # this pid with another start time: not us, gone
    assert recovery.is_alive(dead) is False
    assert led.reserve_all(["acme"], 5000, hold="req_a", owner=dead) == -1
    row = {"id": "req_a", "tenant": "acme", "status": "running", "owner": dead, "created_at": 1.0}
    final = {"status": "succeeded", "finished_at": 2.0, "cost_pico_usd": 1200}
    record = {"id": "req_a", "row": row, "final": final, "budgets": ["acme"], "reserved": 5000, "actual": 1200,
              "now": 2.0}
    journals = recovery.journal_dir(db)
    journals.mkdir()
    (journals / f"{dead}.0.journal").write_text(json.dumps(record) + "\n")
    assert led.get_request("req_a") is None and led.get_budget("acme")["reserved_pico_usd"] == 5000

    assert recovery.sweep(led, journals, recovery.owner_token(), 3.0)["owners"] == 1
    assert led.get_request("req_a")["status"] == "succeeded"
    budget = led.get_budget("acme")
    assert (budget["spent_pico_usd"], budget["reserved_pico_usd"]) == (1200, 0)
    assert list(journals.iterdir()) == [] and led.owners() == []
    led.apply_journal((json.dumps(record) + "\n").encode())  # a second replay changes nothing
    budget = led.get_budget("acme")
    assert (budget["spent_pico_usd"], budget["reserved_pico_usd"]) == (1200, 0)


def _dead_journals(db: str) -> list[str]:
    return [who for who, _ in recovery.journal_files(recovery.journal_dir(db)) if recovery.is_alive(who) is False]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
