"""kill -9 of one worker of a multi-worker uvicorn on one SQLite ledger, under load: every response a
client received has its ledger row (the row is written before the response completes), and the
surviving worker keeps serving from the same file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tokenlane import Ledger

HERE = Path(__file__).resolve().parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to five"}], "max_tokens": 30}


def app_factory():  # uvicorn --factory: each worker builds its own app on the shared file
    from tokenlane.providers import SimulatedProvider

    from middleware_app import build_app

    return build_app(provider=SimulatedProvider(ttft_s=0.05, tokens_per_s=300), db=os.environ["SOAK_DB"])


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
    port = free_port()
    env = {**os.environ, "SOAK_DB": db, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "test_worker_kill:app_factory",
                               "--workers", "2", "--port", str(port), "--log-level", "error"], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(worker_pids(server.pid)) < 2 or not _listening(port):
            assert time.monotonic() < deadline, "uvicorn did not start two workers"
            time.sleep(0.2)
        time.sleep(2)  # both workers import and open the ledger

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
    finally:
        server.terminate()
        server.wait(timeout=30)
    answered = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    led = Ledger(db)
    for r in answered:
        row = led.get_request(r.headers["x-tokenlane-request-id"])
        assert row is not None and row["status"] == "succeeded", r.headers["x-tokenlane-request-id"]
        assert row["cost_pico_usd"] > 0
    # The survivor served to the end: answered requests outnumber what one worker had in flight.
    assert len(answered) > 75


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
