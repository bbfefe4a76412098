"""The Python ledger API: dict shapes, URLs, errors, and budgets shared by real processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tokenlane
from tokenlane import InvalidArgumentError, Ledger, StorageError

NOON = 1_763_899_200.0  # 2025-11-23T12:00:00Z
DAY = 86_400.0


@pytest.fixture
def led(ledger_url: str) -> Ledger:
    return Ledger(ledger_url)  # SQLite, or PostgreSQL in scripts/test's second pass


def test_public_names() -> None:
    assert "Ledger" in tokenlane.__all__
    assert "StorageError" in tokenlane.__all__
    assert issubclass(StorageError, OSError)


def test_urls_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = Ledger("sqlite:///rel.db")
    assert a.path == "rel.db" and (tmp_path / "rel.db").exists()
    b = Ledger(f"sqlite:///{tmp_path}/abs.db")  # sqlite:////abs/path.db
    assert b.path == f"{tmp_path}/abs.db"
    assert Ledger("sqlite://").path == ":memory:"
    assert Ledger(str(tmp_path / "plain.db")).schema_version == tokenlane._core.Ledger.latest_schema_version
    for url in ("mysql://h/db", "redis://localhost"):
        with pytest.raises(InvalidArgumentError, match="not supported"):
            Ledger(url)
    with pytest.raises(StorageError, match="cannot open ledger"):
        Ledger(tmp_path / "missing-dir" / "x.db")


def test_close(tmp_path: Path) -> None:
    with Ledger(tmp_path / "c.db") as led:
        led.create_user("c@example.com")
    with pytest.raises(StorageError, match="closed"):
        led.list_users()
    assert Ledger(tmp_path / "c.db").get_user_by_email("c@example.com") is not None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path)
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    with pytest.raises(StorageError, match="newer than this tokenlane"):
        Ledger(path)


def test_users(led: Ledger) -> None:
    uid = led.create_user("ada@example.com", password_hash="$argon2id$x", role="admin", name="Ada")
    u = led.get_user(uid)
    assert u is not None
    assert set(u) >= {"id", "email", "name", "role", "disabled", "created_at", "password_hash"}
    assert (u["email"], u["role"], u["name"], u["disabled"]) == ("ada@example.com", "admin", "Ada", False)
    assert u["password_hash"] == "$argon2id$x"
    assert led.get_user_by_email("ADA@example.com")["id"] == uid
    assert led.get_user(12345) is None and led.get_user_by_email("x@y.z") is None
    assert led.update_user(uid, role="client", disabled=True, name=None)
    u = led.get_user(uid)
    assert (u["role"], u["disabled"], u["name"]) == ("client", True, None)
    assert not led.update_user(999, role="admin")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        led.create_user("ada@example.com")
    with pytest.raises(InvalidArgumentError, match="role must be"):
        led.update_user(uid, role="superuser")
    with pytest.raises(InvalidArgumentError, match="cannot update user field"):
        led.update_user(uid, email="other@example.com")
    assert all("password_hash" not in row for row in led.list_users())


def test_api_keys(led: Ledger, tmp_path: Path) -> None:
    uid = led.create_user("k@example.com")
    key_id, key = led.create_api_key(uid, name="ci")
    assert key.startswith("tl-") and len(key) == 43
    info = led.verify_api_key(key)
    assert info is not None
    assert {k: info[k] for k in ("key_id", "user_id", "tenant", "name")} == {
        "key_id": key_id,
        "user_id": uid,
        "tenant": "k@example.com",
        "name": "ci",
    }
    assert led.verify_api_key(key[:-1] + ("a" if key[-1] != "a" else "b")) is None
    assert led.verify_api_key("Bearer " + key) is None
    assert led.verify_api_key(None) is None  # type: ignore[arg-type]
    keys = led.list_api_keys(uid)
    assert len(keys) == 1 and keys[0]["prefix"] == key[:9] and keys[0]["active"] is True
    assert not any(key in str(v) for v in keys[0].values())
    if (tmp_path / "ledger.db").exists():  # SQLite (on PostgreSQL the same columns hold the same hash)
        raw = (tmp_path / "ledger.db").read_bytes() + (tmp_path / "ledger.db-wal").read_bytes()
        assert key.encode() not in raw  # only the hash is stored
    assert not led.revoke_api_key(key_id, user_id=uid + 1)
    assert led.revoke_api_key(key_id, user_id=uid)
    assert led.verify_api_key(key) is None
    assert led.list_api_keys(uid)[0]["active"] is False


def test_requests(led: Ledger) -> None:
    uid = led.create_user("r@example.com")
    base = {
        "tenant": "r@example.com",
        "user_id": uid,
        "key_id": None,
        "route": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "status": "queued",
        "decision": "queue",
        "reason": "queued",
        "priority": "interactive",
        "deadline_s": NOON + 30,
        "est_input_tokens": 1000,
        "est_output_p50": 200,
        "est_output_p90": 400,
        "est_cost_pico_usd": 390_000_000,
        "prompt_preview": "Say hi",
    }
    for i in range(5):
        led.insert_request({**base, "id": f"req-{i}", "created_at": NOON + i})
    assert led.update_request(
        "req-0",
        status="succeeded",
        started_at=NOON + 0.5,
        finished_at=NOON + 2,
        queue_ms=500,
        input_tokens=1000,
        output_tokens=180,
        cached_input_tokens=0,
        reasoning_tokens=0,
        cost_pico_usd=258_000_000,
        response_preview="Hi!",
    )
    r = led.get_request("req-0")
    assert r is not None
    assert r["status"] == "succeeded" and r["output_tokens"] == 180 and r["queue_ms"] == 500.0
    assert r["est_output_p90"] == 400 and r["prompt_preview"] == "Say hi"
    assert led.get_request("nope") is None
    assert not led.update_request("nope", status="failed")

    assert [x["id"] for x in led.list_requests(limit=2)] == ["req-4", "req-3"]
    assert [x["id"] for x in led.list_requests(limit=2, offset=4)] == ["req-0"]
    assert [x["id"] for x in led.list_requests(status="succeeded")] == ["req-0"]
    assert len(led.list_requests(since=NOON + 1, until=NOON + 3)) == 2
    since = dt.datetime.fromtimestamp(NOON + 3, tz=dt.timezone.utc)
    assert len(led.list_requests(since=since)) == 2
    assert led.count_requests(tenant="r@example.com") == 5
    assert led.list_requests(user_id=uid, model="other") == []

    with pytest.raises(InvalidArgumentError, match="already exists"):
        led.insert_request({**base, "id": "req-0"})
    with pytest.raises(InvalidArgumentError, match="unknown request field"):
        led.insert_request({**base, "id": "x", "colour": "red"})
    with pytest.raises(InvalidArgumentError, match="unknown request status"):
        led.update_request("req-1", status="done")
    with pytest.raises(InvalidArgumentError, match="must be an integer"):
        led.update_request("req-1", output_tokens=1.5)
    with pytest.raises(InvalidArgumentError, match="must be None, bool, int, float or str"):
        led.update_request("req-1", error=["a list"])
    with pytest.raises(InvalidArgumentError, match="existing user"):
        led.insert_request({**base, "id": "x", "user_id": 999})
    with pytest.raises(InvalidArgumentError, match="naive datetime"):
        led.list_requests(since=dt.datetime(2025, 1, 1))


def test_reports(led: Ledger) -> None:
    uid = led.create_user("u@example.com")
    rows = [
        ("a", "gpt-4o", NOON, "succeeded", 100, 80, 2000),
        ("b", "gpt-4o-mini", NOON + 60, "succeeded", 50, 40, 100),
        ("c", "gpt-4o", NOON + DAY, "failed", None, None, None),
    ]
    for rid, model, t, status, inp, out, cost in rows:
        led.insert_request(
            {
                "id": rid,
                "tenant": "u@example.com",
                "user_id": uid,
                "model": model,
                "status": status,
                "created_at": t,
                "est_output_p50": 60,
                "est_cost_pico_usd": 1000,
                "input_tokens": inp,
                "output_tokens": out,
                "cost_pico_usd": cost,
            }
        )
    days = led.report_by_day()
    assert [d["day"] for d in days] == ["2025-11-23", "2025-11-24"]
    assert days[0]["requests"] == 2 and days[0]["output_tokens"] == 120 and days[0]["cost_pico_usd"] == 2100
    assert days[1]["failed"] == 1 and days[1]["cost_pico_usd"] == 0
    models = led.report_by_model(tenant="u@example.com")
    assert models[0]["model"] == "gpt-4o" and models[0]["requests"] == 2
    assert models[0]["est_output_p50_matched"] == 60 and models[0]["output_tokens_matched"] == 80
    users = led.report_by_user(since=NOON)
    assert users[0]["email"] == "u@example.com" and users[0]["requests"] == 3
    assert led.status_counts()["succeeded"] == 2
    assert led.status_counts(tenant="nobody") == {
        s: 0 for s in ("queued", "running", "succeeded", "failed", "rejected", "cancelled", "deferred")
    }
    assert led.report_by_day(since=NOON + DAY)[0]["day"] == "2025-11-24"


def test_budget_arithmetic_and_rollover(led: Ledger) -> None:
    led.set_budget("t", 1000, window="day", now=NOON)
    assert led.get_budget("t")["window"] == "day"
    assert led.reserve("t", 700, NOON)
    assert not led.reserve("t", 301, NOON)
    led.settle("t", 700, 500, NOON)
    usage = led.usage("t", NOON)
    assert {k: usage[k] for k in ("spent_pico_usd", "reserved_pico_usd", "limit_pico_usd", "remaining_pico_usd")} == {
        "spent_pico_usd": 500,
        "reserved_pico_usd": 0,
        "limit_pico_usd": 1000,
        "remaining_pico_usd": 500,
    }
    assert usage["window"] == "day" and usage["resets_at"] == 1_763_942_400  # next UTC midnight
    assert led.reserve("t", 500, NOON)
    assert not led.reserve("t", 1, NOON)
    assert led.reserve("t", 500, NOON + DAY)  # new day: spent reset, the open 500 carries over
    assert not led.reserve("t", 1, NOON + DAY)
    led.release("t", 500, NOON + DAY)
    led.release("t", 500, NOON + DAY)
    assert led.usage("t", NOON + DAY)["reserved_pico_usd"] == 0
    assert [e["kind"] for e in led.budget_events("t")][:2] == ["release", "release"]
    with pytest.raises(InvalidArgumentError, match="budget window"):
        led.set_budget("t", 1, window="week")
    with pytest.raises(InvalidArgumentError):
        led.reserve("t", -5, NOON)
    led.set_budget("t", None, window="total")
    assert led.usage("t")["limit_pico_usd"] is None


def test_config(led: Ledger) -> None:
    assert led.get_config("pricing", default={}) == {}
    led.set_config("pricing", {"gpt-4o": {"input": 2.5, "output": 10}}, actor="admin@example.com")
    led.set_config("policy", "fifo")
    led.set_config("policy", "deadline", actor="ops")
    led.set_config("policy", "deadline", actor="ops")  # unchanged: not recorded
    assert led.get_config("pricing") == {"gpt-4o": {"input": 2.5, "output": 10}}
    hist = led.config_history()
    assert [(h["key"], h["old_value"], h["new_value"], h["actor"]) for h in hist] == [
        ("policy", "fifo", "deadline", "ops"),
        ("policy", None, "fifo", None),
        ("pricing", None, {"gpt-4o": {"input": 2.5, "output": 10}}, "admin@example.com"),
    ]
    assert len(led.config_history(limit=1, key="pricing")) == 1
    assert {c["key"]: c["value"] for c in led.list_config()} == {
        "policy": "deadline",
        "pricing": {"gpt-4o": {"input": 2.5, "output": 10}},
    }
    with pytest.raises(InvalidArgumentError, match="not JSON-serialisable"):
        led.set_config("bad", {1, 2})
    with pytest.raises(InvalidArgumentError, match="not JSON-serialisable"):
        led.set_config("bad", float("nan"))


def test_threads_share_one_ledger(led: Ledger) -> None:
    led.set_budget("t", 5_000, now=NOON)
    granted: list[int] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(50):
            amount = rng.randint(50, 200)
            if led.reserve("t", amount, NOON):
                led.settle("t", amount, amount, NOON)
                with lock:
                    granted.append(amount)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = led.usage("t", NOON)
    assert usage["spent_pico_usd"] == sum(granted) <= 5_000
    assert usage["spent_pico_usd"] > 4_800 and usage["reserved_pico_usd"] == 0


def test_waiting_for_the_write_lock_releases_the_gil(tmp_path: Path) -> None:
    path = tmp_path / "lock.db"
    led = Ledger(path, busy_timeout_ms=10_000)
    led.set_budget("t", 100, now=NOON)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another "process" holds the write lock
    done = threading.Event()

    def reserve() -> None:
        assert led.reserve("t", 1, NOON)
        done.set()

    worker = threading.Thread(target=reserve)
    worker.start()
    ticks, start = 0, time.monotonic()
    while time.monotonic() - start < 0.3:  # Python keeps running while reserve waits
        ticks += 1
    assert not done.is_set()
    other.execute("COMMIT")
    worker.join(timeout=10)
    assert done.is_set() and ticks > 1000
    other.close()


def test_lock_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    led = Ledger(path, busy_timeout_ms=50)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StorageError, match="reserve failed.*locked"):
        led.reserve("t", 1, NOON)
    other.execute("ROLLBACK")
    other.close()
    assert led.reserve("t", 1, NOON)


# ---- several processes on one file ------------------------------------------------------------

LIMIT = 20_000
PROCESSES, THREADS, ATTEMPTS = 4, 5, 15  # 4 processes x 75 concurrent attempts each


def _worker_process(path: str, seed: int, barrier, results) -> None:
    led = Ledger(path)  # every process opens its own connection(s)
    charged: list[int] = []
    lock = threading.Lock()

    def attempts(thread_seed: int) -> None:
        rng = random.Random(thread_seed)
        for _ in range(ATTEMPTS):
            amount = rng.randint(200, 900)
            if not led.reserve("shared", amount, NOON):
                continue
            if rng.random() < 0.6:
                actual = rng.randint(0, amount)
                led.settle("shared", amount, actual, NOON)
                with lock:
                    charged.append(actual)
            else:
                led.release("shared", amount, NOON)

    barrier.wait()  # start all processes together so they really contend
    threads = [threading.Thread(target=attempts, args=(seed * 100 + i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(sum(charged))


def test_processes_never_overspend(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    Ledger(path).set_budget("shared", LIMIT, window="day", now=NOON)
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding SQLite connections
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker_process, args=(path, i, barrier, results)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    charged = sum(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    usage = Ledger(path).usage("shared", NOON)
    assert usage["reserved_pico_usd"] == 0  # nothing left behind
    assert usage["spent_pico_usd"] == charged  # every charge counted exactly once
    assert usage["spent_pico_usd"] <= LIMIT
    events = Ledger(path).budget_events("shared", limit=10_000)
    reserves = [e for e in events if e["kind"] == "reserve"]
    assert len(reserves) < PROCESSES * THREADS * ATTEMPTS  # the budget really ran out: some were refused
    # Replay the audit trail: at no point did spent + reserved exceed the limit.
    spent = reserved = 0
    for e in sorted(events, key=lambda e: e["id"]):
        if e["kind"] == "reserve":
            reserved += e["amount_pico_usd"]
        elif e["kind"] == "settle":
            reserved -= e["reserved_pico_usd"]
            spent += e["amount_pico_usd"]
        elif e["kind"] == "release":
            reserved -= e["amount_pico_usd"]
        assert spent + reserved <= LIMIT
    assert (spent, reserved) == (charged, 0)


def test_members_carry_team_and_org_and_requests_their_end_user(tmp_path):
    led = Ledger(str(tmp_path / "h.db"))
    uid = led.create_user("ann@example.com")
    assert led.update_user(uid, team="eng", org="acme")
    _, key = led.create_api_key(uid)
    record = led.verify_api_key(key)
    assert (record["team"], record["org"]) == ("eng", "acme")
    assert [(u["team"], u["org"]) for u in led.list_users()] == [("eng", "acme")]
    led.insert_request({"id": "r1", "status": "running", "tenant": "ann@example.com", "end_user": "u-7"})
    assert led.get_request("r1")["end_user"] == "u-7"


def test_cost_lever_columns_are_validated_and_summed(tmp_path):
    led = Ledger(str(tmp_path / "levers.db"))
    led.insert_request({"id": "a", "status": "succeeded", "tenant": "t", "created_at": 100.0, "cost_pico_usd": 0,
                        "cache": "hit", "cache_saved_pico_usd": 700})
    led.insert_request({"id": "b", "status": "succeeded", "tenant": "t", "created_at": 101.0, "cost_pico_usd": 900,
                        "cache": "miss", "prompt_cache_saved_pico_usd": 50, "untrimmed_input_tokens": 4000,
                        "input_tokens": 1000})
    with pytest.raises(tokenlane.InvalidArgumentError, match="cache outcome"):
        led.update_request("a", cache="maybe")
    (day,) = led.report_by_day(tenant="t")
    assert (day["cache_hits"], day["cache_misses"], day["cache_saved_pico_usd"], day["prompt_cache_saved_pico_usd"]) \
        == (1, 1, 700, 50)
    assert led.get_request("b")["untrimmed_input_tokens"] == 4000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loads the system libsqlite3 by name")
def test_sqlite_memory_statistics_are_off_once_tokenlane_is_imported(tmp_path):
    # Their process-wide allocation mutex made the answering thread wait for the journal applier.
    code = ("import ctypes, sys, tokenlane\n"
            "lib = ctypes.CDLL('libsqlite3.so.0'); lib.sqlite3_memory_used.restype = ctypes.c_int64\n"
            "led = tokenlane.Ledger(sys.argv[1]); led.set_budget('acme', 1, 'day', 0.0)\n"
            "print(lib.sqlite3_memory_used())\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.db")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_budget_version_sees_another_process_at_once(tmp_path: Path) -> None:
    """budget_version() answers from a counter beside the file while no budget changes (no SQLite
    read on every request), and sees a budget set by another process at once."""
    db = str(tmp_path / "ledger.db")
    led = Ledger(db)
    v = led.budget_version()
    assert led.budget_version() == v
    subprocess.run([sys.executable, "-c", f"from tokenlane import Ledger; Ledger({db!r}).set_budget('acme', 5, 'day')"],
                   check=True)
    assert led.budget_version() == v + 1
    led.set_budget("acme", None, "day")
    assert led.budget_version() == v + 2
