"""The ledger unavailable under a running middleware, by real conditions: another process holds the
SQLite write lock (a real second connection, as a stuck worker or a backup would); the disk is full
(a small tmpfs filled up: ENOSPC) or the file may not grow (RLIMIT_FSIZE: EFBIG); the database file
is read-only to the server (a uvicorn process without the capabilities that let root ignore file
modes). Writes are retried in order on the ledger thread and counted in a metric; the process
recovers by itself when the condition clears; past the retry window a budget cannot be checked, so
requests are refused with 503, never run unchecked; an answered request's row is written once the
condition clears within the window, else logged in full."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
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
        assert r.status_code == 200  # answered at once: its row is in the journal (write-behind)
        row = rt.ledger.get_request(r.headers["x-tokenlane-request-id"])  # waits until it is applied
        assert time.monotonic() - t0 >= 0.9  # the row was written after the lock went, not skipped
    assert row["status"] == "succeeded" and row["cost_pico_usd"] > 0
    assert errors(rt, "retried") > 0 and errors(rt, "gave_up") == 0
    assert "tokenlane_ledger_errors_total" in client.get("/metrics").text


def test_past_the_retry_window_admission_refuses_with_503_and_the_process_recovers(rt, caplog):
    rt.thread.retry_s = 0.3
    rt.set_budget("anonymous", "5")  # the payer of these requests: each one reserves in the ledger
    slow = SimulatedProvider(ttft_s=1.0, tokens_per_s=1000)  # the model call outlasts the lock's start
    with TestClient(build_app(rt, provider=slow)) as client:
        holder = lock(rt.ledger.path)
        try:
            refused = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
        finally:
            holder.execute("COMMIT")
        # Budgets cannot be checked: refused, never run unchecked.
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "ledger_unavailable"
        assert int(refused.headers["retry-after"]) > 0

        # The ledger goes away while a request is with the model and stays away past the retry
        # window: the answer still goes out (its row is in the journal), and the row is kept and
        # applied once the ledger is back (never dropped).
        late: dict[str, sqlite3.Connection] = {}
        threading.Timer(0.4, lambda: late.setdefault("holder", lock(rt.ledger.path))).start()
        with caplog.at_level(logging.ERROR, logger="tokenlane"):
            answered = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
            time.sleep(1.0)  # the batch with its row gives up meanwhile
        late["holder"].execute("COMMIT")
        assert answered.status_code == 200
        rid = answered.headers["x-tokenlane-request-id"]
        assert any("kept until the ledger comes back" in rec.getMessage() for rec in caplog.records)
        assert errors(rt, "gave_up") > 0

        after = client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})
        assert after.status_code == 200  # the lock is gone: everything works again
    assert rt.ledger.get_request(after.headers["x-tokenlane-request-id"])["status"] == "succeeded"
    assert rt.ledger.get_request(rid)["status"] == "succeeded"
    assert rt.usage("anonymous")["reserved_pico_usd"] == 0


# --- real OS conditions, against a uvicorn process -------------------------------------------------

HERE = Path(__file__).resolve().parent
SLOW_S = 1.5  # the model's time to first token: a request is with the model this long


def app_factory():  # uvicorn --factory
    from middleware_app import build_app

    rt = Tokenlane(db=os.environ["FAULTS_DB"], budget_usd=5)
    rt.thread.retry_s = float(os.environ["FAULTS_RETRY_S"])
    return build_app(rt, provider=SimulatedProvider(ttft_s=float(os.environ["FAULTS_TTFT_S"]), tokens_per_s=1000))


class Server:
    """uvicorn serving app_factory on ``db``; ``preexec`` runs in the child before exec."""

    def __init__(self, db: str, *, retry_s: float, ttft_s: float = 0.0, preexec=None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "FAULTS_DB": db, "FAULTS_RETRY_S": str(retry_s), "FAULTS_TTFT_S": str(ttft_s),
               "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        # stderr is a pipe, not a file: a file-size limit must not stop the server's own logging
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "test_ledger_faults:app_factory",
                                      "--port", str(self.port), "--log-level", "warning"],
                                     env=env, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        self.log: list[str] = []
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._reader.start()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, "".join(self.log)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)

    def chat(self) -> httpx.Response:
        return self.client.post("/v1/chat/completions", json={**CHAT, "user": "alice"})

    def errors(self, outcome: str) -> float:
        found = re.search(rf'^tokenlane_ledger_errors_total{{outcome="{outcome}"}} (\S+)$',
                          self.client.get("/metrics").text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> str:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        self.proc.stderr.close()
        return "".join(self.log)


def assert_ledger_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "ledger_unavailable" and r.json()["error"]["type"] == "service_unavailable"
    assert int(r.headers["retry-after"]) > 0


class TmpfsFull:
    """A 4 MB tmpfs holds the ledger; filling it leaves no block for the ledger's next write."""

    name = "enospc"

    def __init__(self, root: Path) -> None:
        self.dir = root / "disk"
        self.dir.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tokenlane-test", str(self.dir)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE variant runs")
        self.filler = self.dir / "filler"

    def full(self, server: Server) -> None:
        with open(self.filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def clear(self, server: Server) -> None:
        self.filler.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.dir)], check=False)


class FileSizeLimit:
    """The server may not write past the first byte of any file (RLIMIT_FSIZE set on the running
    process, SIGXFSZ ignored): every write the ledger makes fails with EFBIG until it is lifted."""

    name = "efbig"

    def __init__(self, root: Path) -> None:
        self.dir = root

    @staticmethod
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def full(self, server: Server) -> None:
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    def clear(self, server: Server) -> None:
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def close(self) -> None:
        pass


@pytest.fixture(params=[TmpfsFull, FileSizeLimit], ids=lambda c: c.name)
def disk(request, tmp_path):
    condition = request.param(tmp_path)
    try:
        yield condition
    finally:
        condition.close()


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs, prlimit")
def test_disk_full_refuses_with_503_keeps_answered_rows_and_recovers(disk):
    db = str(disk.dir / "ledger.db")
    Ledger(db)
    # A 2 s retry window: the clearing below comes 0.3 s after the model answers, and a loaded machine
    # (a CI run beside compiles) once delayed it by more than 0.7 s.
    server = Server(db, retry_s=2.0, ttft_s=SLOW_S, preexec=getattr(disk, "preexec", None))
    reader = Ledger(db)  # the test's own view of the file (reads need no space)
    try:
        assert server.chat().status_code == 200  # warm: alice's budget is set up

        # Full: a budget cannot be reserved, so the request is refused, never run unchecked.
        disk.full(server)
        assert_ledger_unavailable(server.chat())
        assert server.errors("gave_up") > 0 and server.errors("retried") > 0

        # Full while a request is with the model, cleared within the retry window: the row (in the
        # journal, or waited for when even the journal is full) is written once there is room again.
        disk.clear(server)
        answered: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: answered.setdefault("r", server.chat()))
        sent = time.monotonic()
        t.start()
        wait_for(lambda: reader.status_counts()["running"] == 1, "the request was not admitted")
        disk.full(server)
        # The model answered (SLOW_S after the request was sent, or later on a loaded machine); the
        # row's write is being retried. Timed from the send, not from when this thread saw the row
        # running (that lag, under load, once put the clearing past the 1 s retry window).
        time.sleep(max(0.0, sent + SLOW_S + 0.3 - time.monotonic()))
        disk.clear(server)
        t.join(timeout=60)
        r = answered["r"]
        assert r.status_code == 200 and "x-tokenlane-cost" in r.headers
        wait_for(lambda: reader.get_request(r.headers["x-tokenlane-request-id"])["status"] == "succeeded",
                 "the answered row was not written")
        assert reader.get_request(r.headers["x-tokenlane-request-id"])["cost_pico_usd"] > 0

        # Full past the window while a request is with the model: the answer still goes out, and
        # its row, which could not be written then, is kept and written once the disk has room.
        t = threading.Thread(target=lambda: answered.__setitem__("r", server.chat()))
        t.start()
        wait_for(lambda: reader.status_counts()["running"] == 1, "the request was not admitted")
        disk.full(server)
        t.join(timeout=60)
        lost = answered["r"]
        assert lost.status_code == 200
        disk.clear(server)

        # Cleared: the same process serves and records again, by itself.
        after = server.chat()
        assert after.status_code == 200
        for rid in (after.headers["x-tokenlane-request-id"], lost.headers["x-tokenlane-request-id"]):
            wait_for(lambda: reader.get_request(rid)["status"] == "succeeded", f"row {rid} not written")
        assert all(b["reserved_pico_usd"] == 0 for b in reader.list_budgets()), reader.list_budgets()
    finally:
        server.stop()


def drop_file_mode_override() -> None:
    """Runs in the server's child before exec: root keeps its uid but loses the capabilities that
    let it ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), as any service
    user would be. Nothing to drop when not root."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(sys.platform != "linux", reason="capabilities")
def test_read_only_database_refuses_with_503_and_recovers_when_made_writable(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger(db).close()
    os.chmod(db, 0o444)
    server = Server(db, retry_s=0.5, preexec=drop_file_mode_override)
    try:
        refused = server.chat()
        assert_ledger_unavailable(refused)
        assert "readonly" in refused.json()["error"]["message"]
        assert server.errors("gave_up") > 0

        os.chmod(db, 0o644)  # an operator fixes the file's mode; the process is not restarted
        after = server.chat()
        assert after.status_code == 200, after.text
    finally:
        log = server.stop()
    assert "readonly" in log  # the failures were logged
    assert Ledger(db).get_request(after.headers["x-tokenlane-request-id"])["status"] == "succeeded"



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


def test_a_records_callback_sees_the_ledger_as_of_its_own_batch():
    """A record's callback that reads the ledger (a budget alert's check: the read flushes first)
    runs before the callbacks of records queued after it, and does not apply them: the alerts of
    a sequence of requests are checked in request order."""
    from tokenlane.stages.base import LedgerThread

    class Ledger:
        def __init__(self) -> None:
            self.applied: list[bytes] = []

        def apply_journal(self, data: bytes) -> list[str]:
            self.applied += data.splitlines()
            return []

    ledger = Ledger()
    thread = LedgerThread(ledger=ledger)
    seen: list[tuple[str, list[bytes]]] = []

    def first() -> None:
        thread.record(b'{"id": "b"}\n', after=lambda: seen.append(("b", list(ledger.applied))))
        thread.flush()  # as a ledger read does
        seen.append(("a", list(ledger.applied)))

    try:
        thread.record(b'{"id": "a"}\n', after=first).result(timeout=10)
        thread.flush()
    finally:
        thread.close()
    assert seen == [("a", [b'{"id": "a"}']), ("b", [b'{"id": "a"}', b'{"id": "b"}'])]
