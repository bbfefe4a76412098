#!/usr/bin/env python3
"""Middleware overhead: the same FastAPI app with and without TokenlaneMiddleware, side by side.

The app's /v1/chat/completions returns a fixed OpenAI response (with usage) at once, so whatever the
two variants differ by is tokenlane's own work: reading and parsing the body, counting the
1,000-token prompt exactly, estimating, pricing, scheduling, the SQLite ledger row, reconciling.

  in-process   the ASGI app called directly (no HTTP), sequential requests, interleaved variants
  loopback     a real uvicorn server in a child process, an httpx client on 127.0.0.1:
               sequential latency, then the throughput ceiling with 32 concurrent clients

Run:  python benchmarks/middleware.py [--requests 3000] [--out benchmarks/results/middleware.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "middleware.json"

# ~1,000 tokens of English prose (counted below with the exact tokenizer).
PARAGRAPH = ("Token budgets decide which requests run first when a service shares one model among many "
             "users, and a scheduler that knows the price of each request before it runs can keep the "
             "bill predictable while the queue stays short. ")


def make_prompt(tokens: int = 1000) -> str:
    import tokenlane

    enc = tokenlane.encoding_for_model("gpt-4o-mini")
    words = (PARAGRAPH * 60).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the shortest prefix with at least `tokens` tokens
        mid = (lo + hi) // 2
        if enc.count(" ".join(words[:mid])) >= tokens:
            hi = mid
        else:
            lo = mid + 1
    return " ".join(words[:lo])


def build_app(with_middleware: bool, db: str | None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()
    canned = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer of some words."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1008, "completion_tokens": 7, "total_tokens": 1015},
    }).encode()

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return Response(canned, media_type="application/json")

    if with_middleware:
        from tokenlane import TokenlaneMiddleware

        app.add_middleware(TokenlaneMiddleware, db=db, metrics=True)
    return app


def body_for(prompt: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "max_tokens": 200, "user": "bench",
                       "messages": [{"role": "user", "content": prompt}]}).encode()


async def call_asgi(app: Any, body: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("bench", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "state": {}}
    given = False
    status = 0

    async def receive():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


SLOW_US = 1000.0
CAUSES = ("runqueue", "asleep", "gc", "own_cpu")


def slow_cause(wall_ns: int, cpu_ns: int, runqueue_ns: int, gc_ns: int) -> str:
    """What a slow request's answering thread spent most of its time on: waiting for a core while
    runnable (``runqueue``: the OS gave it to another thread or program), ``asleep`` (the GIL, a
    lock or I/O), a garbage collection inside it (``gc``), or its own work (``own_cpu``)."""
    parts = {"runqueue": runqueue_ns, "asleep": max(0, wall_ns - cpu_ns - runqueue_ns), "gc": gc_ns,
             "own_cpu": cpu_ns - gc_ns}
    return max(parts, key=lambda k: parts[k])


class GcWindows:
    """Records when each garbage collection ran (gc.callbacks), to find those inside a request."""

    def __init__(self) -> None:
        self.windows: list[tuple[int, int, int]] = []  # (start, stop, generation), time.monotonic_ns
        self._start = 0

    def __enter__(self) -> GcWindows:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        if phase == "start":
            self._start = now
        else:
            self.windows.append((self._start, now, info["generation"]))

    def inside(self, t0: int, t1: int) -> int:
        return sum(max(0, min(t1, b) - max(t0, a)) for a, b, _ in self.windows)


def runqueue_clock() -> Callable[[], int]:
    """The calling thread's total time spent runnable but not running (ns, /proc schedstat;
    always 0 where there is none)."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return lambda: 0
    return lambda: int(os.pread(fd, 64, 0).split()[1])


def in_process(body: bytes, n: int, db: str) -> dict[str, Any]:
    plain, wrapped = build_app(False, None), build_app(True, db)
    # Per request: (start, end) on time.monotonic_ns, this thread's CPU time, its runqueue wait.
    rows: dict[str, list[tuple[int, int, int, int]]] = {"without": [], "with": []}
    other_cpu_s = 0.0  # CPU time of the process's other threads (ledger applier, estimator updates)
    collections = GcWindows()

    async def run() -> None:
        nonlocal other_cpu_s
        for app in (plain, wrapped):  # warm-up (lifespan-free apps; first call builds the stack)
            for _ in range(50):
                assert await call_asgi(app, body) == 200
        waited = runqueue_clock()
        p0, t0_all = time.process_time(), time.thread_time()
        with collections:
            for _ in range(n):
                for name, app in (("without", plain), ("with", wrapped)):
                    w0 = waited()
                    c0, t0 = time.thread_time_ns(), time.monotonic_ns()
                    status = await call_asgi(app, body)
                    t1, c1 = time.monotonic_ns(), time.thread_time_ns()
                    rows[name].append((t0, t1, c1 - c0, waited() - w0))
                    assert status == 200, status
                    # A server's event loop turns between requests: work a request left for later
                    # (callbacks, other tasks) runs here, outside the measured time.
                    await asyncio.sleep(0)
        other_cpu_s = (time.process_time() - p0) - (time.thread_time() - t0_all)

    asyncio.run(run())
    out: dict[str, Any] = {}
    times = {name: [(t1 - t0) / 1000.0 for t0, t1, _, _ in r] for name, r in rows.items()}
    for name, ts in times.items():
        out[name] = {"p50_us": statistics.median(ts), "p99_us": pct(ts, 0.99), "mean_us": statistics.fmean(ts)}
    out["added"] = {k: out["with"][k] - out["without"][k] for k in ("p50_us", "p99_us", "mean_us")}
    # Wall time holds whatever the OS gave other processes meanwhile (on a loaded machine, whole
    # scheduler slices); the thread's CPU time is the request's own work.
    cpu = {name: [c / 1000.0 for _, _, c, _ in r] for name, r in rows.items()}
    out["cpu"] = {name: {"p50_us": statistics.median(ts), "p99_us": pct(ts, 0.99)} for name, ts in cpu.items()}
    out["slow_over_1ms"] = {name: sum(t > SLOW_US for t in ts) / len(ts) for name, ts in times.items()}
    # The slow requests (over 1 ms wall), by what delayed them (benchmarks/middleware_tail.py
    # also names whose threads or programs had the cores).
    out["slow_causes"] = {}
    for name, r in rows.items():
        causes = dict.fromkeys(CAUSES, 0)
        for t0, t1, c, w in r:
            if (t1 - t0) / 1000.0 > SLOW_US:
                causes[slow_cause(t1 - t0, c, w, collections.inside(t0, t1))] += 1
        out["slow_causes"][name] = causes
    out["gc_collections"] = {"all": len(collections.windows),
                             "full": sum(1 for _, _, g in collections.windows if g == 2)}
    out["background_cpu_us_per_request"] = other_cpu_s * 1e6 / n
    return out


def _serve(with_middleware: bool, db: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(with_middleware, db), host="127.0.0.1", port=port, log_level="error",
                access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback(body: bytes, n: int, db: str, seconds: float) -> dict[str, Any]:
    import httpx

    results: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    for name, wrapped in (("without", False), ("with", True)):
        port = _free_port()
        proc = ctx.Process(target=_serve, args=(wrapped, db, port), daemon=True)
        proc.start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"content-type": "application/json"}
        with httpx.Client() as client:
            for _ in range(200):
                try:
                    client.post(url, content=body, headers=headers)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            for _ in range(50):
                client.post(url, content=body, headers=headers)
            lat = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                r = client.post(url, content=body, headers=headers)
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
                assert r.status_code == 200, r.text

        async def hammer() -> int:
            done = 0
            deadline = time.perf_counter() + seconds
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as ac:
                async def worker() -> None:
                    nonlocal done
                    while time.perf_counter() < deadline:
                        r = await ac.post(url, content=body, headers=headers)
                        assert r.status_code == 200, r.text
                        done += 1
                await asyncio.gather(*(worker() for _ in range(32)))
            return done

        completed = asyncio.run(hammer())
        proc.terminate()
        proc.join(5)
        results[name] = {"p50_us": statistics.median(lat), "p99_us": pct(lat, 0.99), "rps": completed / seconds}
    results["added"] = {k: results["with"][k] - results["without"][k] for k in ("p50_us", "p99_us")}
    results["throughput_ratio"] = results["with"]["rps"] / results["without"]["rps"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput run")
    parser.add_argument("--skip-loopback", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import tokenlane

    prompt = make_prompt()
    body = body_for(prompt)
    tokens = tokenlane.count_chat_tokens([{"role": "user", "content": prompt}], "gpt-4o-mini")
    with tempfile.TemporaryDirectory() as tmp:
        ip = in_process(body, args.requests, os.path.join(tmp, "inproc.db"))
        lb = None if args.skip_loopback else loopback(body, max(500, args.requests // 3),
                                                      os.path.join(tmp, "loop.db"), args.seconds)
    print(f"Middleware overhead, prompt of {tokens} tokens, {args.requests} requests per variant "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n")
    print("| run | without p50 | with p50 | added p50 | without p99 | with p99 | added p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("in-process", ip)] + ([("loopback HTTP", lb)] if lb else [])
    for name, r in rows:
        print(f"| {name} | {r['without']['p50_us']:.0f} µs | {r['with']['p50_us']:.0f} µs | "
              f"**{r['added']['p50_us']:.0f} µs** | {r['without']['p99_us']:.0f} µs | {r['with']['p99_us']:.0f} µs | "
              f"**{r['added']['p99_us']:.0f} µs** |")
    c = ip["cpu"]
    print(f"\nin-process, this thread's CPU time per request: without {c['without']['p50_us']:.0f} / "
          f"{c['without']['p99_us']:.0f} µs, with {c['with']['p50_us']:.0f} / {c['with']['p99_us']:.0f} µs (p50 / p99); "
          f"requests over 1 ms wall: {100 * ip['slow_over_1ms']['without']:.1f} % without, "
          f"{100 * ip['slow_over_1ms']['with']:.1f} % with; load average {os.getloadavg()[0]:.1f}")
    sc = ip["slow_causes"]
    print("requests over 1 ms, by what took most of their time (waiting for a core while runnable: the OS / "
          "asleep on the GIL, a lock or I/O / a GC pass / their own CPU): "
          + ", ".join(f"{name} " + " / ".join(str(sc[name][c]) for c in CAUSES) for name in ("without", "with"))
          + f"; GC passes {ip['gc_collections']['all']} (full {ip['gc_collections']['full']}); the process's other "
          f"threads (ledger applier, estimator updates) used {ip['background_cpu_us_per_request']:.0f} µs of CPU "
          "per request")
    if lb:
        print(f"\nThroughput ceiling (loopback, 32 concurrent clients, client and server share the 2 cores): "
              f"{lb['without']['rps']:.0f} req/s without, {lb['with']['rps']:.0f} req/s with "
              f"({lb['throughput_ratio']:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prompt_tokens": tokens, "requests": args.requests, "in_process": ip,
                                    "load_average": os.getloadavg(),
                                    "loopback": lb, "python": sys.version.split()[0]}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
