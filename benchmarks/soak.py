#!/usr/bin/env python3
"""Soak: a uvicorn app behind TokenlaneMiddleware under a steady mixed load for a long time.

The server (a child process: uvicorn, the real middleware, SQLite ledger, the simulated provider with
a short latency) gets a fixed rate of requests from a bounded asyncio client, mixed as:

  json         a chat completion, JSON response
  stream       the same, streamed (SSE), read to the end
  repeat       an identical prompt sent again and again (what a cache would serve)
  refused      a tenant whose budget is 0: 429 insufficient_quota, nothing reserved
  invalid      a malformed body (n over its limit): 400 naming the parameter
  disconnect   a streamed request the client abandons after the first chunk

Every `--interval` seconds it samples the server's RSS and open file descriptors (/proc), the ledger
file size (database + WAL), the event-loop lag inside the server (a task that sleeps 10 ms and
measures how late it wakes), and the client's p50/p99 latency and outcome counts in the interval.
After the run it checks that every answered request has its ledger row and that nothing stays
reserved, and fits a line to RSS and fds after warm-up (the first 30 %): the growth per 10 minutes
is the leak figure.

    python benchmarks/soak.py                      # 10 minutes at 10 requests/s
    python benchmarks/soak.py --minutes 1 --rate 20 --out /tmp/soak.json

Prints a Markdown table (one row per sample) and a summary; writes JSON (benchmarks/results/soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))  # middleware_app: the app the middleware tests use
DEFAULT_OUT = REPO / "benchmarks" / "results" / "soak.json"
MIX = {"json": 0.35, "stream": 0.25, "repeat": 0.15, "refused": 0.1, "invalid": 0.05, "disconnect": 0.1}
BROKE_KEY = "sk-soak-broke"  # a tenant whose budget is 0
TOPICS = ["tides", "compilers", "bread", "volcanoes", "chess", "rivers", "owls", "jazz", "glaciers", "maps"]


# --- the server (child process) -------------------------------------------------------------------


def build_app(db: str) -> Any:
    """The app under test: tests/python/middleware_app's app (an OpenAI-compatible route on the
    simulated provider, the middleware in front) plus two routes for the sampler: /soak/lag (the
    event loop's lateness since the last read) and /soak/memory (gc counts, the runtime's
    containers, and with SOAK_TRACEMALLOC=1 the Python allocations grown since the first read)."""
    from middleware_app import build_app as middleware_app

    from tokenlane import Tokenlane
    from tokenlane.providers import SimulatedProvider
    from tokenlane.stages.identify import tenant_without_record

    runtime = Tokenlane(db=db, max_concurrency=64, tenant_budgets_usd={tenant_without_record(BROKE_KEY): 0})
    app = middleware_app(runtime, provider=SimulatedProvider(ttft_s=0.02, tokens_per_s=4000))
    lag = {"max_ms": 0.0, "sum_ms": 0.0, "n": 0}
    tracing = os.environ.get("SOAK_TRACEMALLOC") == "1"
    baseline: list[Any] = []
    if tracing:
        tracemalloc.start(5)

    async def watch_loop() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            late = (time.perf_counter() - t0 - 0.01) * 1000.0
            lag["max_ms"] = max(lag["max_ms"], late)
            lag["sum_ms"] += late
            lag["n"] += 1

    @app.get("/soak/lag")
    async def read_lag() -> dict[str, float]:
        if not hasattr(app.state, "watch"):  # started by the sampler's first read, before the load
            app.state.watch = asyncio.get_running_loop().create_task(watch_loop())
        out = {"max_ms": lag["max_ms"], "mean_ms": lag["sum_ms"] / max(1, lag["n"])}
        lag.update(max_ms=0.0, sum_ms=0.0, n=0)
        return out

    @app.get("/soak/memory")
    def read_memory() -> dict[str, Any]:
        out: dict[str, Any] = {"gc_objects": len(gc.get_objects()), "gc_collections": [g["collections"] for g in gc.get_stats()],
                               "runtime": runtime_sizes(runtime), **native_memory()}
        if tracing:
            gc.collect()  # what a full collection frees is not a leak
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if not baseline:
                baseline.append(snap)
            out["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
            out["grown"] = [{"kb": round(d.size_diff / 1024, 1), "count": d.count_diff,
                             "where": [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(d.traceback)]}
                            for d in snap.compare_to(baseline[0], "traceback")[:12]]
        return out

    return app


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def native_memory() -> dict[str, int]:
    """KB in use by SQLite (all connections: the core and Python's sqlite3 share libsqlite3) and
    by malloc (glibc), beside Python's own objects; empty where these libraries differ."""
    out: dict[str, int] = {}
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")
        used, peak = ctypes.c_int64(), ctypes.c_int64()
        if sqlite.sqlite3_status64(0, ctypes.byref(used), ctypes.byref(peak), 0) == 0:  # MEMORY_USED
            out["sqlite_kb"] = used.value // 1024
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        out["malloc_kb"] = (info.uordblks + info.hblkhd) // 1024
        out["malloc_free_kb"] = info.fordblks // 1024
    except (OSError, AttributeError):
        pass
    return out


def runtime_sizes(rt: Any) -> dict[str, int]:
    """The runtime's containers that could grow with traffic, and the metrics' label sets."""
    sizes = {"budget_tenants": len(rt.budget._tenants), "budget_end_users": len(rt.budget._end_users),
             "identify_keys": len(rt.identify_stage._keys), "jobs": len(rt.jobs._jobs),
             "schedule_waiters": len(rt.schedule._waiters), "settling": len(rt.reconcile._settling),
             "scheduler_running": len(rt.scheduler.snapshot(time.time(), 1000).get("running", []))}
    if rt.metrics is not None:
        sizes["metric_samples"] = sum(len(m.samples) for m in rt.metrics.registry.collect())
    return sizes


def serve(db: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(db), host="127.0.0.1", port=port, log_level="error", access_log=False)


# --- the client -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def key_for(kind: str, rng: random.Random) -> str | None:
    """The caller's API key: JSON requests come from 500 keys (each its own tenant), the refused
    ones from the broke tenant's key, the rest from no key (the anonymous tenant)."""
    if kind == "refused":
        return BROKE_KEY
    return f"sk-soak-{rng.randrange(500)}" if kind == "json" else None


def body_for(kind: str, rng: random.Random) -> dict[str, Any]:
    # Every prompt but the repeated one has its own shape (three topics out of ten, in any order,
    # and a word count) and the end users are many: whatever the server keeps per distinct prompt
    # or user (estimator history, caches, budgets, metric labels) would grow in this run.
    if kind == "repeat":
        prompt = "In two sentences, what is interesting about tides?"
    else:
        topics = ", ".join(rng.sample(TOPICS, 3))
        prompt = f"In {rng.choice(['two', 'three', 'four'])} sentences, what links {topics}? ({rng.random():.6f})"
    body: dict[str, Any] = {
        "model": "gpt-4o-mini", "max_tokens": rng.choice([16, 40, 80]), "user": f"user-{rng.randrange(5000)}",
        "messages": [{"role": "user", "content": prompt}],
    }
    if kind in ("stream", "disconnect"):
        body["stream"] = True
    if kind == "invalid":
        body["n"] = 10_000
    return body


def proc_stats(pid: int) -> dict[str, int]:
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def ledger_bytes(db: str) -> int:
    return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))


def slope_per_10min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), scaled to 10 minutes."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 600.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


async def one_request(client: Any, kind: str, rng: random.Random, window: dict[str, Any]) -> None:
    import httpx

    body = body_for(kind, rng)
    key = key_for(kind, rng)
    headers = {"authorization": f"Bearer {key}"} if key else None
    t0 = time.perf_counter()
    status = 0
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                status = r.status_code
                async for _ in r.aiter_raw():
                    if kind == "disconnect":
                        break  # leaving the block closes the connection mid-stream
        else:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            status = r.status_code
    except httpx.HTTPError as exc:
        window["errors"].append(f"{kind}: {type(exc).__name__}")
    window["latency_ms"].append((time.perf_counter() - t0) * 1000.0)
    window["status"][status] = window["status"].get(status, 0) + 1
    expected = {"refused": 429, "invalid": 400}.get(kind, 200)
    if status != expected:
        window["unexpected"].append((kind, status))


async def drive(port: int, pid: int, db: str, seconds: float, rate: float, interval: float,
                seed: int) -> list[dict[str, Any]]:
    import httpx

    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items())
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    samples: list[dict[str, Any]] = []

    def new_window() -> dict[str, Any]:
        return {"latency_ms": [], "status": {}, "errors": [], "unexpected": []}

    base = f"http://127.0.0.1:{port}"
    # The sampler has its own connection: a saturated load pool must not stop the measurements.
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client, \
            httpx.AsyncClient(base_url=base, timeout=60) as sampler:
        await sampler.get("/soak/lag")  # starts the server's loop watcher before the load
        start = time.monotonic()
        window, tasks = new_window(), set()
        next_sample = start + interval
        sent = 0
        while (now := time.monotonic()) < start + seconds:
            due = int((now - start) * rate) - sent
            for _ in range(max(0, min(due, 200))):
                if len(tasks) >= 400:  # bounded: a stalled server shows as lag, not as client memory
                    break
                kind = rng.choices(kinds, weights)[0]
                task = asyncio.ensure_future(one_request(client, kind, rng, window))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if now >= next_sample:
                try:
                    lag = (await sampler.get("/soak/lag")).json()
                except httpx.HTTPError:
                    lag = {"max_ms": float("nan"), "mean_ms": float("nan")}
                try:  # the first read is the baseline the allocations are compared to
                    memory = (await sampler.get("/soak/memory")).json()
                except httpx.HTTPError:
                    memory = {"gc_objects": -1}
                lat = sorted(window["latency_ms"]) or [0.0]
                sample = {"t_s": round(now - start, 1), **proc_stats(pid), "ledger_kb": ledger_bytes(db) // 1024,
                          "lag_max_ms": round(lag["max_ms"], 1), "lag_mean_ms": round(lag["mean_ms"], 2),
                          "requests": len(window["latency_ms"]),
                          "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[int(len(lat) * 0.99)], 1),
                          "status": window["status"], "errors": len(window["errors"]),
                          "unexpected": len(window["unexpected"]),
                          "unexpected_examples": window["unexpected"][:3] + window["errors"][:3],
                          "py_objects": memory["gc_objects"], "memory": memory}
                samples.append(sample)
                print(f"| {sample['t_s']:.0f} | {sample['rss_mb']} | {sample['fds']} | {sample['ledger_kb']} "
                      f"| {sample['lag_max_ms']} | {sample['requests']} | {sample['p50_ms']} | {sample['p99_ms']} "
                      f"| {sample['py_objects']} | {memory.get('sqlite_kb', '')} | {memory.get('malloc_kb', '')} "
                      f"| {sample['unexpected'] + sample['errors']} |", flush=True)
                window = new_window()
                next_sample += interval
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return samples


def check_ledger(db: str) -> dict[str, Any]:
    """After the run: rows by status, and what is still reserved or running (should be nothing)."""
    from tokenlane import Ledger

    led = Ledger(db)
    counts = dict(led.status_counts())
    reserved = sum(b["reserved_pico_usd"] for b in led.list_budgets())
    return {"rows_by_status": {k: v for k, v in counts.items() if v}, "still_running": counts.get("running", 0),
            "still_queued": counts.get("queued", 0), "reserved_pico_usd": reserved}


def run(minutes: float, rate: float, interval: float, seed: int = 1, trace_memory: bool = False) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="tokenlane-soak-")
    db = os.path.join(tmp, "soak.db")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "SOAK_TRACEMALLOC": "1" if trace_memory else "0"}
    server = subprocess.Popen([sys.executable, "-c", f"import soak; soak.serve({db!r}, {port})"], env=env)
    try:
        for _ in range(600):  # wait for it to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        print("| t (s) | RSS (MB) | fds | ledger (KB) | loop lag max (ms) | requests | p50 (ms) | p99 (ms) "
              "| Python objects | SQLite (KB) | malloc (KB) | unexpected |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        samples = asyncio.run(drive(port, server.pid, db, minutes * 60, rate, interval, seed))
    finally:
        server.terminate()  # SIGTERM: uvicorn stops taking requests, the middleware drains the rest
        server.wait(timeout=60)
    ledger = check_ledger(db)
    after = [s for s in samples if s["t_s"] >= 0.3 * minutes * 60]
    total_requests = sum(s["requests"] for s in samples)
    answered = sum(n for s in samples for code, n in s["status"].items() if code)
    summary = {
        "minutes": minutes, "rate_per_s": rate, "requests": total_requests,
        "unexpected": sum(s["unexpected"] + s["errors"] for s in samples),
        "rss_mb_first_last": [after[0]["rss_mb"], after[-1]["rss_mb"]] if after else None,
        "rss_growth_mb_per_10min": round(slope_per_10min([(s["t_s"], s["rss_mb"]) for s in after]), 2),
        "fds_growth_per_10min": round(slope_per_10min([(s["t_s"], s["fds"]) for s in after]), 2),
        "py_objects_growth_per_10min": round(slope_per_10min([(s["t_s"], s["py_objects"]) for s in after])),
        "runtime_sizes_last": samples[-1]["memory"].get("runtime") if samples else None,
        "python_allocations_grown": samples[-1]["memory"].get("grown") if samples else None,
        "ledger_kb_per_1000_requests": round(1000 * after[-1]["ledger_kb"] / max(1, total_requests), 1) if after else None,
        "p99_ms_median_of_samples": statistics.median(s["p99_ms"] for s in samples) if samples else None,
        "lag_max_ms": max((s["lag_max_ms"] for s in samples), default=None),
        "answered": answered, "ledger": ledger,
    }
    return {"machine": platform.platform(), "cpus": os.cpu_count(), "mix": MIX, "samples": samples,
            "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=10.0, help="requests per second")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--trace-memory", action="store_true",
                   help="tracemalloc in the server: the Python allocations grown since the first sample (slower)")
    args = p.parse_args()
    result = run(args.minutes, args.rate, args.interval, trace_memory=args.trace_memory)
    s = result["summary"]
    print(f"\n{s['requests']:,} requests in {s['minutes']} min at {s['rate_per_s']}/s; unexpected outcomes: "
          f"{s['unexpected']}; after warm-up RSS {s['rss_mb_first_last']} MB "
          f"({s['rss_growth_mb_per_10min']:+} MB/10 min), fds {s['fds_growth_per_10min']:+}/10 min; "
          f"ledger {s['ledger_kb_per_1000_requests']} KB per 1,000 requests; loop lag max {s['lag_max_ms']} ms; "
          f"ledger after the run: {s['ledger']}; Python objects {s['py_objects_growth_per_10min']:+}/10 min; "
          f"runtime containers at the end: {s['runtime_sizes_last']}")
    for grown in s["python_allocations_grown"] or []:
        print(f"  {grown['kb']:+9.1f} KB {grown['count']:+7d} blocks  {' <- '.join(grown['where'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
