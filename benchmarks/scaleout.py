#!/usr/bin/env python3
"""Scale-out: throughput and added latency with 1, 2 and 4 replicas, SQLite-only vs PostgreSQL + Redis.

Every replica is ``python -m uvicorn replica_app:app`` (tests/python/replica_app.py: an OpenAI-style
route on the simulated provider, instant here, so the numbers are tokenlane's own work). Variants,
side by side in one run on private PostgreSQL and Redis servers (scripts/services.py):

  bare        the same app without the middleware, 1 replica: the baseline
  sqlite      N replicas sharing one SQLite ledger file (the single-host deployment)
  pg+redis    N replicas with TOKENLANE_DB=postgresql://... and TOKENLANE_STATE=redis://...

Every variant with tokenlane has a budget per key (reserved on every request) and a global
concurrency limit (a Redis slot per request with pg+redis). The load generator (this process, one
asyncio client) spreads requests over the replicas round robin: sequential requests give the
latency (p50/p99; "added" = minus bare's p50), then ``--concurrency`` clients give the throughput.
Redis commands per request come from Redis's own INFO commandstats, which counts the commands a
script runs as well as the script call: the round trips are the script calls (EVALSHA) plus any
command sent on its own (the JSON has the breakdown).

Run:  python benchmarks/scaleout.py [--replicas 1,2,4] [--requests 1500] [--out benchmarks/results/scaleout.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
DEFAULT_OUT = REPO / "benchmarks" / "results" / "scaleout.json"

BODY = {"model": "gpt-4o-mini", "max_tokens": 30,
        "messages": [{"role": "user", "content": "Name three rivers in Europe and say which is longest."}]}
KEYS = [f"sk-bench-{i}" for i in range(8)]


async def sequential(client: Any, urls: list[str], n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY,
                              headers={"authorization": f"Bearer {KEYS[i % len(KEYS)]}"})
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return times


async def concurrent(client: Any, urls: list[str], n: int, clients: int) -> tuple[float, float]:
    """(requests per second, load generator CPU seconds per wall second)."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY,
                                  headers={"authorization": f"Bearer {KEYS[i % len(KEYS)]}"})
            assert r.status_code == 200, r.text

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return n / wall, (time.process_time() - cpu0) / wall


def redis_calls(url: str) -> dict[str, int]:
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def measure(name: str, replicas: int, env: dict[str, str], args: argparse.Namespace, tmp: Path,
            redis_url: str | None) -> dict[str, Any]:
    import httpx
    from store_support import Replicas

    run_dir = tmp / f"{name}-{replicas}"
    run_dir.mkdir()
    group = Replicas(replicas, env, run_dir)
    try:
        async def run() -> dict[str, Any]:
            # Idle connections expire before uvicorn's 5 s keep-alive timeout closes them: at the same 5 s
            # (httpx's default) a request sent as the server closes fails with ReadError.
            limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2,
                                  keepalive_expiry=2.0)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                await sequential(client, group.urls, 40 * replicas)  # warm-up: imports, caches, pools
                times = await sequential(client, group.urls, args.latency_requests)
                before = redis_calls(redis_url) if redis_url else {}
                rps, cpu = await concurrent(client, group.urls, args.requests, args.concurrency)
                after = redis_calls(redis_url) if redis_url else {}
            calls = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
            calls.pop("info", None)
            return {
                "variant": name, "replicas": replicas, "p50_ms": statistics.median(times),
                "p99_ms": statistics.quantiles(times, n=100)[98], "throughput_rps": rps,
                "loadgen_cpu": cpu,
                "redis_commands_per_request": sum(calls.values()) / args.requests if redis_url else None,
                "redis_scripts_per_request": (calls.get("evalsha", 0) + calls.get("eval", 0)) / args.requests
                if redis_url else None,
                # Redis counts the commands a script runs too: the breakdown tells round trips from those.
                "redis_calls_per_request": {k: v / args.requests for k, v in sorted(calls.items())}
                if redis_url else None,
            }
        return asyncio.run(run())
    except BaseException:  # what the replicas said: a dropped connection is theirs to explain
        for i in range(replicas):
            print(f"--- {name} replica {i} (exit code {group.procs[i].poll()}):\n{group._log(i)}", file=sys.stderr)
        raise
    finally:
        group.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--requests", type=int, default=1500, help="requests in each throughput run")
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    counts = [int(x) for x in args.replicas.split(",")]

    import redis
    from store_support import fresh_database, services_module

    services = services_module()
    with tempfile.TemporaryDirectory(prefix="tokenlane-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        servers = services.Services(tmp / "services").start()
        try:
            base = {"TOKENLANE_BUDGET_USD": "1000", "TOKENLANE_MAX_CONCURRENCY": "256", "REPLICA_TIME_SCALE": "0",
                    "TOKENLANE_REDACT_PROMPTS": "true", "TOKENLANE_VOCAB_DIR": os.environ.get(
                        "TOKENLANE_VOCAB_DIR", str(REPO.parent / "shared" / "vocab"))}
            rows = [measure("bare", 1, {**base, "REPLICA_BARE": "1"}, args, tmp, None)]
            for n in counts:
                rows.append(measure("sqlite", n, {**base, "TOKENLANE_DB": str(tmp / f"ledger-{n}.db")}, args, tmp,
                                    None))
                redis.Redis.from_url(servers.redis_url).flushdb()
                rows.append(measure("pg+redis", n, {**base, "TOKENLANE_DB": fresh_database(servers.pg_url),
                                                    "TOKENLANE_STATE": servers.redis_url,
                                                    "TOKENLANE_SPOOL": str(tmp / f"spool-{n}.db")},
                                    args, tmp, servers.redis_url))
        finally:
            servers.stop()

    bare = rows[0]
    single = {r["variant"]: r for r in rows if r["replicas"] == counts[0]}
    for r in rows:
        r["added_p50_ms"] = r["p50_ms"] - bare["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - bare["p99_ms"]
    header = (f"{'variant':<10} {'replicas':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} "
              f"{'req/s':>8} {'loadgen CPU':>12} {'Redis cmds/req':>15} {'scripts/req':>12}")
    # Redis cmds/req includes the commands run inside the scripts; scripts/req are round trips.
    print(header)
    print("-" * len(header))
    for r in rows:
        redis_cmds = "" if r["redis_commands_per_request"] is None else f"{r['redis_commands_per_request']:.2f}"
        scripts = "" if r["redis_scripts_per_request"] is None else f"{r['redis_scripts_per_request']:.2f}"
        print(f"{r['variant']:<10} {r['replicas']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['added_p50_ms']:>10.2f} "
              f"{r['added_p99_ms']:>10.2f} {r['throughput_rps']:>8.0f} {r['loadgen_cpu']:>11.0%} {redis_cmds:>15} "
              f"{scripts:>12}")
    print("(Redis cmds/req counts the commands inside the scripts too; see redis_calls_per_request in the JSON)")
    ratio = single["pg+redis"]["added_p50_ms"] / max(1e-9, single["sqlite"]["added_p50_ms"])
    print(f"\nadded p50 with PostgreSQL + Redis / SQLite-only, {counts[0]} replica: {ratio:.2f}x (goal <= 1.5x)")
    for variant in ("sqlite", "pg+redis"):
        series = [r for r in rows if r["variant"] == variant]
        scaling = " -> ".join(f"{r['throughput_rps']:.0f}" for r in series)
        print(f"{variant} throughput over {args.replicas} replicas: {scaling} req/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"requests": args.requests, "latency_requests": args.latency_requests,
                     "concurrency": args.concurrency},
        "rows": rows, "added_p50_ratio_redis_vs_sqlite": ratio}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
