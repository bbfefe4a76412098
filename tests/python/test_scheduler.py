"""tokenlane.Scheduler: the contract's Python API over the C++ state machine."""

import threading

import pytest

import tokenlane
from tokenlane import Decision, Scheduler


def req(rid, out=100, cost=1_000, tenant="t", priority="standard", **extra):
    r = {
        "id": rid, "tenant": tenant, "user": None, "priority": priority, "deadline_s": None, "model": "gpt-4o",
        "input_tokens": 10, "est_output_p50": out, "est_output_p90": 2 * out, "max_tokens": None,
        "cost_p50_pico_usd": cost, "cost_p90_pico_usd": 2 * cost, "cost_max_pico_usd": 4 * cost,
    }
    r.update(extra)
    return r


def test_public_names():
    assert {"Scheduler", "Decision", "simulate", "SimulationResult", "load_trace"} <= set(tokenlane.__all__)


def test_admit_queue_complete_cycle():
    s = Scheduler(policy="fifo", max_concurrency=1)
    d = s.submit(req("a"), 0.0)
    assert isinstance(d, Decision)
    assert (d.kind, d.reason, d.reserved_pico_usd) == ("admit", "ok", 2_000)
    q = s.submit(req("b"), 0.0)
    assert (q.kind, q.reason, q.position) == ("queue", "queued", 0)
    assert q.eta_s > 0 and "Queued" in q.message
    assert s.status("b") == "queued"
    assert s.pop_ready(1.0) == []
    assert s.next_wakeup(1.0) is None
    assert s.complete("a", 2.0, 1_500, 10, 80) is True
    assert s.pop_ready(2.0) == ["b"]
    assert s.status("a") is None and s.status("b") == "running"
    assert s.usage("t", 2.0) == {"spent_pico_usd": 1_500, "reserved_pico_usd": 2_000, "limit_pico_usd": None,
                                 "window": None, "resets_at": None}
    assert s.complete("a", 3.0, 1, 1, 1) is False
    assert s.cancel("nope", 3.0) is False
    assert s.cancel("b", 3.0) is True
    assert s.usage("t", 3.0)["reserved_pico_usd"] == 0


def test_budget_day_window_and_retry_after():
    s = Scheduler(policy="default")
    s.set_budget("alice", 10_000, window="day")
    now = 1795463325.0  # 2026-11-23T19:48:45Z
    s.set_spent("alice", 9_000, now)
    d = s.submit(req("x", cost=2_000, tenant="alice"), now)
    assert (d.kind, d.reason) == ("reject", "budget_exceeded")
    assert d.retry_after_s == pytest.approx(1795478400 - now)
    u = s.usage("alice", now)
    assert u["limit_pico_usd"] == 10_000 and u["window"] == "day" and u["resets_at"] == 1795478400
    batch = s.submit(req("y", cost=2_000, tenant="alice", priority="batch"), now)
    assert (batch.kind, batch.reason) == ("defer", "budget_deferred")
    assert s.status("y") == "deferred"
    assert s.pop_ready(1795478400.0) == ["y"]
    s.set_budget("alice", None)
    assert s.usage("alice", now)["limit_pico_usd"] is None


def test_rate_limits_and_rejection_reasons():
    s = Scheduler(policy="fifo", rpm=60, max_queue=0)
    for i in range(60):
        assert s.submit(req(f"r{i}", cost=1), 0.0).kind == "admit"
    d = s.submit(req("over", cost=1), 0.0)
    assert (d.kind, d.reason) == ("reject", "rate_limit_rpm")
    assert d.retry_after_s == pytest.approx(1.0)
    rl = s.rate_limits("t", 0.0)
    assert rl["limit_requests"] == 60 and rl["remaining_requests"] == 0
    assert rl["limit_tokens"] is None


def test_too_large_for_tpm():
    s = Scheduler(tpm=1_000)
    d = s.submit(req("big", out=5_000), 0.0)
    assert (d.kind, d.reason, d.retry_after_s) == ("reject", "too_large", None)


def test_max_wait_shedding_reported_by_pop_rejected():
    s = Scheduler(policy="fifo", max_concurrency=1, max_wait_s=10)
    s.submit(req("a"), 0.0)
    s.submit(req("b"), 0.0)
    assert s.next_wakeup(1.0) == pytest.approx(10.0)
    shed = s.pop_rejected(11.0)
    assert [(rid, d.reason) for rid, d in shed] == [("b", "max_wait")]
    assert shed[0][1].retry_after_s is not None


def test_admin_controls_and_snapshot():
    s = Scheduler(policy="fifo", max_concurrency=2)
    s.pause()
    assert s.paused
    for rid in ("a", "b", "c"):
        assert s.submit(req(rid), 0.0).kind == "queue"
    assert s.dispatch("c", 1.0) is True
    assert s.pop_ready(1.0) == ["c"]
    assert s.reject("a", 1.0, reason="admin") is True
    assert [(rid, d.reason) for rid, d in s.pop_rejected(1.0)] == [("a", "admin")]
    assert s.defer("b", 1.0) is True
    snap = s.snapshot(2.0)
    assert [e["id"] for e in snap["deferred"]] == ["b"]
    assert [e["id"] for e in snap["running"]] == ["c"]
    assert snap["running"][0]["reserved"] == 2_000
    assert snap["reservations"] == {"t": 2_000}
    assert snap["paused"] is True and snap["policy"] == "fifo"
    assert snap["counters"]["dispatched"] == 1
    entry = snap["deferred"][0]
    assert {"id", "tenant", "priority", "position", "wait_s", "cost", "deadline"} <= set(entry)
    s.resume()
    s.set_policy("deadline")
    assert s.policy == "deadline"
    assert s.pop_ready(3.0) == ["b"]


def test_default_policy_orders_interactive_then_short():
    s = Scheduler(policy="default", max_concurrency=1)
    s.submit(req("blocker"), 0.0)
    s.submit(req("long", out=2_000), 0.1)
    s.submit(req("short", out=20), 0.2)
    s.submit(req("urgent", out=500, priority="interactive"), 0.3)
    assert [e["id"] for e in s.snapshot(1.0)["queue"]] == ["urgent", "short", "long"]


def test_bad_input_is_a_clear_error():
    s = Scheduler()
    with pytest.raises(tokenlane.InvalidArgumentError, match="policy"):
        Scheduler(policy="lifo")
    with pytest.raises(ValueError, match="missing 'input_tokens'"):
        s.submit({k: v for k, v in req("a").items() if k != "input_tokens"}, 0.0)
    with pytest.raises(ValueError, match="priority"):
        s.submit(req("a", priority="urgent"), 0.0)
    with pytest.raises(ValueError, match="est_output_p90"):
        s.submit(req("a", est_output_p90=1), 0.0)
    with pytest.raises(ValueError, match="finite"):
        s.submit(req("a"), float("nan"))
    with pytest.raises(ValueError, match="window"):
        s.set_budget("t", 5, window="week")
    with pytest.raises(ValueError, match="max_concurrency"):
        Scheduler(max_concurrency=0)
    s.submit(req("a"), 0.0)
    with pytest.raises(ValueError, match="already"):
        s.submit(req("a"), 0.0)


def test_threads_share_one_scheduler_without_leaks():
    s = Scheduler(policy="fair", max_concurrency=4)
    s.set_budget("t0", 10**12, window="total")

    def worker(k):
        for i in range(300):
            rid = f"{k}-{i}"
            d = s.submit(req(rid, tenant=f"t{k % 2}"), float(i))
            if d.kind == "admit":
                s.complete(rid, float(i), 1_000, 10, 50)
            for ready in s.pop_ready(float(i)):
                s.complete(ready, float(i), 1_000, 10, 50)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rid in [e["id"] for e in s.snapshot(1e6)["queue"]] + [e["id"] for e in s.snapshot(1e6)["running"]]:
        s.cancel(rid, 1e6)
    assert s.snapshot(1e6)["reserved_total"] == 0


def test_batch_waits_in_the_lane_at_most_batch_max_defer_s():
    s = Scheduler(policy="default", max_concurrency=1, batch_max_defer_s=30, tail_share=float("inf"))
    assert s.submit(req("run"), 0.0).kind == "admit"
    assert s.submit(req("b", priority="batch"), 0.0).kind == "defer"
    for i in range(5):  # a steady stream of standard work that never leaves the queue empty
        s.submit(req(f"s{i}"), 1.0 + i)
    s.complete("run", 10.0, 1, 10, 10)
    assert s.pop_ready(10.0) == ["s0"]  # before its time the lane waits for an empty queue
    s.complete("s0", 31.0, 1, 10, 10)
    assert s.pop_ready(31.0) == ["b"]  # waited 30 s: it joined the queue, keyed by its arrival
    never = Scheduler(policy="default", max_concurrency=1, batch_max_defer_s=float("inf"), tail_share=float("inf"))
    never.submit(req("run"), 0.0)
    never.submit(req("b", priority="batch"), 0.0)
    never.submit(req("s0"), 1.0)
    never.complete("run", 100.0, 1, 10, 10)
    assert never.pop_ready(100.0) == ["s0"]


def test_default_policy_bounds_how_long_a_long_request_is_overtaken():
    # One slot; a long request (4 s predicted) queues when nothing else waits, so FIFO would start
    # it within ~4 s; short requests keep arriving. Shortest-first lets them overtake it only while
    # they arrive before its bound, arrival + (1 + tail_share) × 4 s = 6 s.
    def started_at(tail_share):
        s = Scheduler(policy="default", max_concurrency=1, ttft_s=0.0, tpot_s=0.01, tail_share=tail_share)
        s.submit(req("run", out=10), 0.0)
        s.submit(req("long", out=400), 0.0)
        now, running, when = 0.0, "run", {}
        for i in range(60):
            s.submit(req(f"short{i}", out=10), now)
            now += 0.25
            s.complete(running, now, 1, 10, 10)
            (running,) = s.pop_ready(now)
            when[running] = now
        return when["long"] if "long" in when else None

    assert 5.5 <= started_at(0.5) <= 6.5
    assert started_at(float("inf")) is None  # unbounded, the stream of short ones never lets it run


def test_idle_tenants_are_forgotten_beyond_the_cap():
    s = Scheduler(policy="fair", max_concurrency=4, max_tenant_records=50)
    for i in range(2_000):  # one request per unknown API key
        assert s.submit(req(f"r{i}", tenant=f"key-{i}"), float(i)).kind == "admit"
        assert s.complete(f"r{i}", i + 0.5, 1, 10, 10)
    assert s.snapshot(2_000.0)["counters"]["tenants"] <= 50
    with pytest.raises(tokenlane.InvalidArgumentError):
        Scheduler(max_tenant_records=0)
    with pytest.raises(tokenlane.InvalidArgumentError):
        Scheduler(tenant_idle_forget_s=-1)
