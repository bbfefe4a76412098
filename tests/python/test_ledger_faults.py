"""The ledger unavailable under a running middleware: another process holds the SQLite write lock
(a real second connection, as a stuck worker or a backup would). Writes are retried in order on the
ledger thread and counted in a metric; the process recovers by itself when the lock goes; past the
retry window a budget cannot be checked, so requests are refused with 503, never run unchecked."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tokenlane import Ledger, Tokenlane
from tokenlane.providers import SimulatedProvider

from middleware_app import build_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a colour"}], "max_tokens": 20}


def lock(db: str) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")  # no other connection may write until COMMIT
    return con


def errors(rt: Tokenlane, outcome: str) -> float:
    return rt.metrics.ledger_errors.labels(outcome)._value.get()


@pytest.fixture
def rt(tmp_path):
    return Tokenlane(ledger=Ledger(str(tmp_path / "ledger.db"), busy_timeout_ms=50))


def test_a_lock_held_for_a_while_delays_the_rows_and_loses_none(rt):
    with TestClient(build_app(rt)) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # warm: tenant known
        holder = lock(rt.ledger.path)
        threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
        t0 = time.monotonic()
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert time.monotonic() - t0 >= 0.9  # the row was written after the lock went, not skipped
    row = rt.ledger.get_request(r.headers["x-tokenlane-request-id"])
    assert row["status"] == "succeeded" and row["cost_pico_usd"] > 0
    assert errors(rt, "retried") > 0 and errors(rt, "gave_up") == 0
    assert "tokenlane_ledger_errors_total" in client.get("/metrics").text


def test_past_the_retry_window_admission_refuses_with_503_and_the_process_recovers(rt, caplog):
    rt.thread.retry_s = 0.3
    rt.set_budget("alice", "5")
    slow = SimulatedProvider(ttft_s=1.0, tokens_per_s=1000)  # the model call outlasts the lock's start
    with TestClient(build_app(rt, provider=slow)) as client:
        holder = lock(rt.ledger.path)
        try:
            refused = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
        finally:
            holder.execute("COMMIT")
        # Budgets cannot be checked: refused, never run unchecked.
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "ledger_unavailable"
        assert refused.headers["retry-after"] == "5"

        # The ledger goes away while a request is with the model: the answer still goes out, and
        # its row, which could not be written, is logged in full (never silently dropped).
        late: dict[str, sqlite3.Connection] = {}
        threading.Timer(0.4, lambda: late.setdefault("holder", lock(rt.ledger.path))).start()
        with caplog.at_level(logging.ERROR, logger="tokenlane"):
            answered = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
        late["holder"].execute("COMMIT")
        assert answered.status_code == 200
        rid = answered.headers["x-tokenlane-request-id"]
        assert any(rid in rec.getMessage() and "not written" in rec.getMessage() for rec in caplog.records)
        assert errors(rt, "gave_up") > 0

        after = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
        assert after.status_code == 200  # the lock is gone: everything works again
    assert rt.ledger.get_request(after.headers["x-tokenlane-request-id"])["status"] == "succeeded"


def test_a_write_whose_waiter_is_cancelled_still_runs():
    """A client that hangs up cancels the task awaiting its ledger write (as the openai SDK does
    right after a stream's [DONE], while the row's final update waits behind the settlement on the
    ledger thread): the write must still happen, in order."""
    import asyncio

    from tokenlane.stages.base import LedgerThread

    thread = LedgerThread()
    busy, done = threading.Event(), []

    async def main() -> None:
        thread.write(busy.wait)  # the ledger thread is busy (a slow settlement)
        waiter = asyncio.ensure_future(thread.write(done.append, "row updated"))
        await asyncio.sleep(0.01)
        waiter.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await waiter
        thread.submit(done.append, "next").cancel()
        busy.set()
        await thread.write(lambda: None)

    try:
        asyncio.run(main())
    finally:
        busy.set()
    assert done == ["row updated", "next"]
