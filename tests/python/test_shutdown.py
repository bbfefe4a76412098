"""SIGTERM of a real uvicorn under load: requests that can finish within the grace period finish
and are recorded; the rest (running or still queued) are interrupted and settled: no row stays
`running` or `queued`, nothing stays reserved, and a cut stream is charged for what it sent."""

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


def app_factory():  # uvicorn --factory
    from tokenlane.providers import SimulatedProvider

    from middleware_app import build_app

    # 10 tokens/s: max_tokens=8 answers in about a second, an unbounded answer takes several.
    return build_app(provider=SimulatedProvider(ttft_s=0.1, tokens_per_s=10), db=os.environ["SHUTDOWN_DB"],
                     budget_usd=5, max_concurrency=6)


def chat(max_tokens: int | None, user: str, stream: bool = False) -> dict:
    body = {"model": "gpt-4o-mini", "user": user, "stream": stream,
            "messages": [{"role": "user", "content": "Tell me about the tides of the North Sea"}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")
def test_sigterm_under_load_finishes_what_it_can_and_settles_the_rest(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger(db)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SHUTDOWN_DB": db, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log_path = tmp_path / "server.log"  # a file, not a pipe nobody drains while the server runs
    with open(log_path, "w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "test_shutdown:app_factory",
                                   "--port", str(port), "--log-level", "warning", "--timeout-graceful-shutdown", "2"],
                                  env=env, stderr=log_file)
    try:
        _wait_listening(port, server, log_path)

        async def load() -> dict[str, list]:
            out: dict[str, list] = {"short": [], "long": [], "queued": []}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                async def one(kind: str, body: dict) -> None:
                    try:
                        if body["stream"]:
                            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                                text = b"".join([part async for part in r.aiter_raw()])
                                out[kind].append((r.status_code, r.headers.get("x-tokenlane-request-id"),
                                                  b"[DONE]" in text))
                        else:
                            r = await client.post("/v1/chat/completions", json=body)
                            out[kind].append((r.status_code, r.headers.get("x-tokenlane-request-id"), True))
                    except httpx.HTTPError as exc:  # cut by the shutdown
                        out[kind].append((None, None, type(exc).__name__))

                tasks = [one("short", chat(8, f"s{i}")) for i in range(2)]
                tasks += [one("long", chat(None, f"l{i}", stream=i % 2 == 0)) for i in range(4)]
                running = [asyncio.ensure_future(t) for t in tasks]
                await asyncio.sleep(0.3)  # these six hold every slot: the next four wait in the queue, two of
                # them get the short ones' slots, two are still queued when the grace period ends
                running += [asyncio.ensure_future(one("queued", chat(None, f"q{i}", stream=True))) for i in range(4)]
                await asyncio.sleep(0.3)
                server.send_signal(signal.SIGTERM)
                await asyncio.gather(*running)
            return out

        results = asyncio.run(load())
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log = log_path.read_text()
    assert server.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal it handled

    led = Ledger(db)
    counts = led.status_counts()
    assert counts["running"] == 0 and counts["queued"] == 0, (counts, log)
    assert all(b["reserved_pico_usd"] == 0 for b in led.list_budgets()), led.list_budgets()
    # The short ones finished within the grace period, answered and recorded.
    assert [status for status, _, _ in results["short"]] == [200, 200], results
    for _, rid, _ in results["short"]:
        assert led.get_request(rid)["status"] == "succeeded"
    # The long ones (and the two queued that got a slot) were interrupted: settled as failed, a cut
    # stream charged for what it sent.
    rows = led.list_requests(limit=100)
    interrupted = [r for r in rows if r["status"] == "failed"]
    assert len(interrupted) == 6, [(r["status"], r["error"]) for r in rows]
    assert all("ancel" in (r["error"] or "") for r in interrupted), [r["error"] for r in interrupted]
    streamed = [r for r in interrupted if (r["output_tokens"] or 0) > 0]
    assert streamed and all(r["cost_pico_usd"] > 0 for r in streamed)
    # The queued ones never ran: cancelled, nothing charged.
    never_ran = [r for r in rows if r["status"] == "cancelled"]
    assert len(never_ran) == 2 and all(not r["cost_pico_usd"] for r in never_ran), never_ran
    assert all(r["reason"] == "interrupted" for r in never_ran)


def _wait_listening(port: int, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, log_path.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)


def test_drain_lets_requests_finish_within_the_grace_and_interrupts_the_rest(tmp_path):
    """Tokenlane.drain's own grace period (a server that does not wait for its requests itself)."""
    from tokenlane import Tokenlane
    from tokenlane.providers import SimulatedProvider

    from middleware_app import build_app

    rt = Tokenlane(db=str(tmp_path / "ledger.db"), budget_usd=5)
    app = build_app(rt, provider=SimulatedProvider(ttft_s=0.05, tokens_per_s=10))

    async def scenario() -> tuple[object, object]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as client:
            quick = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat(3, "q")))
            slow = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat(None, "s")))
            while len(rt._in_flight) < 2 or rt.ledger.status_counts()["running"] < 2:
                await asyncio.sleep(0.02)
            await rt.drain(grace_s=1.5)
            return (await asyncio.gather(quick, slow, return_exceptions=True))

    quick, slow = asyncio.run(scenario())
    assert quick.status_code == 200
    assert rt.ledger.get_request(quick.headers["x-tokenlane-request-id"])["status"] == "succeeded"
    assert isinstance(slow, asyncio.CancelledError)
    [row] = [r for r in rt.ledger.list_requests() if r["status"] != "succeeded"]
    assert row["status"] == "failed" and "interrupted" in row["error"]
    assert all(b["reserved_pico_usd"] == 0 for b in rt.ledger.list_budgets())


def test_a_request_cancelled_while_its_row_waits_for_the_ledger_thread_still_gets_its_row(tmp_path):
    """The soak's rare row left 'running': a stream's handler cancelled (its client gone) while the
    row's final write waited its turn on a busy ledger thread took the write out of the queue."""
    import json as _json

    from tokenlane import Tokenlane
    from tokenlane.providers import SimulatedProvider

    from middleware_app import build_app

    rt = Tokenlane(db=str(tmp_path / "ledger.db"))
    app = build_app(rt, provider=SimulatedProvider(ttft_s=0.0, tokens_per_s=1000))
    body = _json.dumps(chat(16, "u", stream=True)).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "server": ("app", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}

    async def scenario() -> str:
        started: dict[str, str] = {}
        sent = asyncio.Event()

        async def receive() -> dict:
            if not started:
                started["body"] = "given"
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never says it left: the server cancels the task
            return {}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                started["id"] = dict(message["headers"])[b"x-tokenlane-request-id"].decode()
                rt.thread.submit(time.sleep, 1.0)  # the ledger thread is busy when the row's write comes
                sent.set()

        task = asyncio.ensure_future(app(scope, receive, send))
        await sent.wait()
        await asyncio.sleep(0.3)  # the stream ended; its row's write waits behind the busy thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rt.write(lambda: None)  # everything queued before is done
        return started["id"]

    request_id = asyncio.run(scenario())
    assert rt.ledger.get_request(request_id)["status"] != "running"
