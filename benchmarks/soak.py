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
from pathlib import Path
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves the route's annotations here

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "soak.json"
MIX = {"json": 0.35, "stream": 0.25, "repeat": 0.15, "refused": 0.1, "invalid": 0.05, "disconnect": 0.1}
TOPICS = ["tides", "compilers", "bread", "volcanoes", "chess", "rivers", "owls", "jazz", "glaciers", "maps"]


# --- the server (child process) -------------------------------------------------------------------


def build_app(db: str) -> Any:
    """The app under test: an OpenAI-compatible route on the simulated provider, the middleware in
    front, and /soak/lag reporting the event loop's lateness since the last read."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from tokenlane import Tokenlane, TokenlaneMiddleware
    from tokenlane.providers import SimulatedProvider

    provider = SimulatedProvider(ttft_s=0.02, tokens_per_s=4000)
    runtime = Tokenlane(db=db, max_concurrency=64, tenant_budgets_usd={"broke": 0})
    app = FastAPI()
    lag = {"max_ms": 0.0, "sum_ms": 0.0, "n": 0}

    async def watch_loop() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            late = (time.perf_counter() - t0 - 0.01) * 1000.0
            lag["max_ms"] = max(lag["max_ms"], late)
            lag["sum_ms"] += late
            lag["n"] += 1

    @app.on_event("startup")
    async def start_watch() -> None:
        app.state.watch = asyncio.get_running_loop().create_task(watch_loop())

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if body.get("stream"):
            async def events():
                async for chunk in provider.stream_chat(body):
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(await provider.chat(body))

    @app.get("/soak/lag")
    async def read_lag() -> dict[str, float]:
        out = {"max_ms": lag["max_ms"], "mean_ms": lag["sum_ms"] / max(1, lag["n"])}
        lag.update(max_ms=0.0, sum_ms=0.0, n=0)
        return out

    app.add_middleware(TokenlaneMiddleware, runtime=runtime)
    return app


def serve(db: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(db), host="127.0.0.1", port=port, log_level="error", access_log=False)


# --- the client -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body_for(kind: str, rng: random.Random) -> dict[str, Any]:
    topic = "tides" if kind == "repeat" else rng.choice(TOPICS)
    body: dict[str, Any] = {
        "model": "gpt-4o-mini", "max_tokens": rng.choice([16, 40, 80]), "user": f"user-{rng.randrange(20)}",
        "messages": [{"role": "user", "content": f"In two sentences, what is interesting about {topic}? "
                                                 f"(request {rng.random():.6f})" if kind != "repeat" else
                      "In two sentences, what is interesting about tides?"}],
    }
    if kind in ("stream", "disconnect"):
        body["stream"] = True
    if kind == "refused":
        body["user"] = "broke"
    if kind == "invalid":
        body["n"] = 10_000
    return body


def proc_stats(pid: int) -> dict[str, int]:
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"rss_mb": rss_kb // 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


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
    t0 = time.perf_counter()
    status = 0
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                status = r.status_code
                async for _ in r.aiter_raw():
                    if kind == "disconnect":
                        break  # leaving the block closes the connection mid-stream
        else:
            r = await client.post("/v1/chat/completions", json=body)
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
                lat = sorted(window["latency_ms"]) or [0.0]
                sample = {"t_s": round(now - start, 1), **proc_stats(pid), "ledger_kb": ledger_bytes(db) // 1024,
                          "lag_max_ms": round(lag["max_ms"], 1), "lag_mean_ms": round(lag["mean_ms"], 2),
                          "requests": len(window["latency_ms"]),
                          "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[int(len(lat) * 0.99)], 1),
                          "status": window["status"], "errors": len(window["errors"]),
                          "unexpected": len(window["unexpected"]),
                          "unexpected_examples": window["unexpected"][:3] + window["errors"][:3]}
                samples.append(sample)
                print(f"| {sample['t_s']:.0f} | {sample['rss_mb']} | {sample['fds']} | {sample['ledger_kb']} "
                      f"| {sample['lag_max_ms']} | {sample['requests']} | {sample['p50_ms']} | {sample['p99_ms']} "
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


def run(minutes: float, rate: float, interval: float, seed: int = 1) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="tokenlane-soak-")
    db = os.path.join(tmp, "soak.db")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-c", f"import soak; soak.serve({db!r}, {port})"], env=env)
    try:
        for _ in range(600):  # wait for it to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        print("| t (s) | RSS (MB) | fds | ledger (KB) | loop lag max (ms) | requests | p50 (ms) | p99 (ms) | unexpected |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        samples = asyncio.run(drive(port, server.pid, db, minutes * 60, rate, interval, seed))
        time.sleep(5)  # let abandoned streams notice their client is gone before the server stops
    finally:
        server.terminate()
        server.wait(timeout=30)
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
    args = p.parse_args()
    result = run(args.minutes, args.rate, args.interval)
    s = result["summary"]
    print(f"\n{s['requests']:,} requests in {s['minutes']} min at {s['rate_per_s']}/s; unexpected outcomes: "
          f"{s['unexpected']}; after warm-up RSS {s['rss_mb_first_last']} MB "
          f"({s['rss_growth_mb_per_10min']:+} MB/10 min), fds {s['fds_growth_per_10min']:+}/10 min; "
          f"ledger {s['ledger_kb_per_1000_requests']} KB per 1,000 requests; loop lag max {s['lag_max_ms']} ms; "
          f"ledger after the run: {s['ledger']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
