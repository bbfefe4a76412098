#!/usr/bin/env python3
"""Scale-out: throughput and added latency with 1, 2 and 4 replicas, SQLite-only vs PostgreSQL + Redis.

Every replica is ``python -m uvicorn replica_app:app`` (tests/python/replica_app.py: an OpenAI-style
route on the simulated provider, instant here, so the numbers are tokenlane's own work). Variants,
side by side in one run on private PostgreSQL and Redis servers (scripts/services.py):

  bare        the same app without the middleware: the baseline
  sqlite      N replicas sharing one SQLite ledger file (the single-host deployment)
  pg          N replicas with the ledger on PostgreSQL, no shared state (the ledger's part of
              pg+redis)
  redis       N replicas on one SQLite ledger file with TOKENLANE_STATE=redis://... (Redis's part)
  pg+redis    N replicas with TOKENLANE_DB=postgresql://... and TOKENLANE_STATE=redis://...

Every variant with tokenlane has a budget per key (reserved on every request) and a global
concurrency limit (a Redis slot per request with Redis). For each replica count, every variant's N
replicas run at once. The load generator (this process, one asyncio client) sends sequential
requests to each variant in turn (bare, sqlite, pg, ..., then sqlite, pg, ..., bare: the rotation
starts one later each round; each variant's replicas round robin), so every variant meets the same
moments of a shared machine's load and follows each other variant equally often: their
latencies (p50/p99; "added" = minus bare's p50) compare within the run. Then ``--concurrency``
clients give each variant's throughput, one variant at a time. Redis commands per request come
from Redis's own INFO commandstats (each Redis variant has a database of its own; the counts are
the server's, taken around that variant's throughput phase), which counts the commands a script
runs as well as the script call: the round trips are the script calls (EVALSHA) plus any command
sent on its own (the JSON has the breakdown).

``--stages`` also times each call to PostgreSQL and Redis inside the replicas
(tests/python/replica_timings.py: the first replica's medians per stage, in the table below the
main one and the JSON).

``--baseline DIR`` runs each variant of ``--baseline-variants`` a second time as ``<variant>@base``
with tokenlane imported from DIR (a copy of another version's ``python/`` tree with its ``_core``
module and a ``sitecustomize.py`` that drops the editable install's import hook), in the same
rotation: before and after a change, side by side in one run.

Run:  python benchmarks/scaleout.py [--replicas 1,2,4] [--variants sqlite,pg,redis,pg+redis] [--stages]
                                    [--requests 1500] [--baseline DIR [--baseline-variants pg,pg+redis]]
                                    [--out benchmarks/results/scaleout.json]
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
VARIANTS = ("sqlite", "pg", "redis", "pg+redis")

BODY = {"model": "gpt-4o-mini", "max_tokens": 30,
        "messages": [{"role": "user", "content": "Name three rivers in Europe and say which is longest."}]}
KEYS = [f"sk-bench-{i}" for i in range(8)]


async def sequential(client: Any, urls: list[str], n: int, key: int = 0) -> list[float]:
    """``n`` requests one after the other over ``urls`` round robin; their times in ms."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY,
                              headers={"authorization": f"Bearer {KEYS[(key + i) % len(KEYS)]}"})
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return times


async def concurrent(client: Any, urls: list[str], n: int, clients: int) -> tuple[float, float, int]:
    """(requests per second, load generator CPU seconds per wall second, requests sent again)."""
    import httpx

    counter = iter(range(n))
    resent = 0

    async def worker() -> None:
        nonlocal resent
        for i in counter:
            for attempt in range(3):
                try:
                    r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY,
                                          headers={"authorization": f"Bearer {KEYS[i % len(KEYS)]}"})
                    break
                except httpx.TransportError:
                    # A pooled connection the server closed as it was reused (seen once in a run on a
                    # loaded 2-core machine): send again on a fresh one, counted in the JSON.
                    if attempt == 2:
                        raise
                    resent += 1
            assert r.status_code == 200, r.text

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return n / wall, (time.process_time() - cpu0) / wall, resent


def redis_calls(url: str) -> dict[str, int]:
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def measure(replicas: int, envs: dict[str, dict[str, str]], redis_urls: dict[str, str], args: argparse.Namespace,
            tmp: Path) -> list[dict[str, Any]]:
    """Every variant of ``envs`` with ``replicas`` replicas, all started together. Latency: one
    sequential request to each variant in turn, so that they all see the same moments of this
    shared machine's load. Throughput: one variant at a time (the others idle)."""
    import httpx
    from store_support import Replicas

    groups: dict[str, Any] = {}
    try:
        for name, env in envs.items():
            run_dir = tmp / f"{name}-{replicas}"
            run_dir.mkdir()
            groups[name] = Replicas(replicas, {**env, "REPLICA_TIMINGS": "1"} if args.stages else env, run_dir)

        async def run() -> list[dict[str, Any]]:
            # Idle connections expire before uvicorn's 5 s keep-alive timeout closes them: at the same 5 s
            # (httpx's default) a request sent as the server closes fails with ReadError.
            limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2,
                                  keepalive_expiry=2.0)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                async def stages(name: str) -> dict[str, Any] | None:  # the first replica's, since the last call
                    return (await client.get(groups[name].urls[0] + "/timings")).json() if args.stages else None

                times: dict[str, list[float]] = {name: [] for name in groups}
                seq_stages = {}
                for name, group in groups.items():
                    await sequential(client, group.urls, 40 * replicas)  # warm-up: imports, caches, pools
                    await stages(name)
                names = list(groups)
                for i in range(args.latency_requests):
                    # The rotation starts one variant later each round, so that every variant follows
                    # each other one equally often: a request right after another variant's (whose
                    # replica is still writing its ledger rows) is slower, and an A/A run with a fixed
                    # order gave the same code 0.7 ms more added p50 in one place than in the other.
                    for name in names[i % len(names):] + names[:i % len(names)]:
                        times[name] += await sequential(client, groups[name].urls[i % replicas:], 1, key=i)
                for name in groups:
                    seq_stages[name] = await stages(name)
                rows = []
                for name, group in groups.items():
                    redis_url = redis_urls.get(name)
                    # Its keep-alive connections were idle for a while: let them go rather than race
                    # the server closing them.
                    await sequential(client, group.urls, 2 * replicas)
                    await stages(name)
                    before = redis_calls(redis_url) if redis_url else {}
                    rps, cpu, resent = await concurrent(client, group.urls, args.requests, args.concurrency)
                    after = redis_calls(redis_url) if redis_url else {}
                    calls = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
                    calls.pop("info", None)
                    rows.append({
                        "variant": name, "replicas": replicas, "p50_ms": statistics.median(times[name]),
                        "p99_ms": statistics.quantiles(times[name], n=100)[98], "throughput_rps": rps,
                        "loadgen_cpu": cpu, "resent": resent, "stages": {"sequential": seq_stages[name],
                                                       "concurrent": await stages(name)},
                        "redis_commands_per_request": sum(calls.values()) / args.requests if redis_url else None,
                        "redis_scripts_per_request": (calls.get("evalsha", 0) + calls.get("eval", 0)) / args.requests
                        if redis_url else None,
                        # Redis counts the commands a script runs too: the breakdown tells round trips from those.
                        "redis_calls_per_request": {k: v / args.requests for k, v in sorted(calls.items())}
                        if redis_url else None,
                    })
                return rows
        return asyncio.run(run())
    except BaseException:  # what the replicas said: a dropped connection is theirs to explain
        for name, group in groups.items():
            for i in range(len(group.procs)):
                print(f"--- {name} replica {i} (exit code {group.procs[i].poll()}):\n{group._log(i)}", file=sys.stderr)
        raise
    finally:
        for group in groups.values():
            group.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--requests", type=int, default=1500, help="requests in each throughput run")
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="which of " + ", ".join(VARIANTS) + " to run beside bare")
    parser.add_argument("--stages", action="store_true", help="time each PostgreSQL and Redis call in the replicas")
    parser.add_argument("--baseline", type=Path, help="another version's tokenlane tree: <variant>@base beside each")
    parser.add_argument("--baseline-variants", default="pg,pg+redis")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    counts = [int(x) for x in args.replicas.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if args.baseline:
        based = [v for v in args.baseline_variants.split(",") if v]
        unknown |= set(based) - set(VARIANTS)
        variants += [f"{v}@base" for v in based]
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")

    import redis
    from store_support import fresh_database, services_module

    services = services_module()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tokenlane-scaleout-") as tmp_name:
        tmp = Path(tmp_name)
        servers = services.Services(tmp / "services").start()
        try:
            base = {"TOKENLANE_BUDGET_USD": "1000", "TOKENLANE_MAX_CONCURRENCY": "256", "REPLICA_TIME_SCALE": "0",
                    "TOKENLANE_REDACT_PROMPTS": "true", "TOKENLANE_VOCAB_DIR": os.environ.get(
                        "TOKENLANE_VOCAB_DIR", str(REPO.parent / "shared" / "vocab"))}
            rows: list[dict[str, Any]] = []
            for n in counts:
                envs = {"bare": {**base, "REPLICA_BARE": "1"}}
                redis_urls = {}
                for db, variant in enumerate(variants, start=1):
                    env = dict(base)
                    stores = variant.split("@")[0].split("+")
                    if variant.endswith("@base"):
                        env["PYTHONPATH"] = str(args.baseline.resolve())
                    if "pg" in stores:
                        env.update(TOKENLANE_DB=fresh_database(servers.pg_url),
                                   TOKENLANE_SPOOL=str(tmp / f"spool-{variant}-{n}.db"))
                    else:
                        env["TOKENLANE_DB"] = str(tmp / f"ledger-{variant}-{n}.db")
                    if "redis" in stores:  # a Redis database of its own
                        url = redis_urls[variant] = servers.redis_url.rsplit("/", 1)[0] + f"/{db}"
                        redis.Redis.from_url(url).flushdb()
                        env["TOKENLANE_STATE"] = url
                    envs[variant] = env
                rows += measure(n, envs, redis_urls, args, tmp)
        finally:
            servers.stop()

    single = {r["variant"]: r for r in rows if r["replicas"] == counts[0]}
    for r in rows:  # against bare measured beside it (bare has one replica, whatever the count)
        bare = next(b for b in rows if b["variant"] == "bare" and b["replicas"] == r["replicas"])
        r["added_p50_ms"] = r["p50_ms"] - bare["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - bare["p99_ms"]
    header = (f"{'variant':<13} {'replicas':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} "
              f"{'req/s':>8} {'loadgen CPU':>12} {'Redis cmds/req':>15} {'scripts/req':>12}")
    # Redis cmds/req includes the commands run inside the scripts; scripts/req are round trips.
    print(header)
    print("-" * len(header))
    for r in rows:
        redis_cmds = "" if r["redis_commands_per_request"] is None else f"{r['redis_commands_per_request']:.2f}"
        scripts = "" if r["redis_scripts_per_request"] is None else f"{r['redis_scripts_per_request']:.2f}"
        print(f"{r['variant']:<13} {r['replicas']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['added_p50_ms']:>10.2f} "
              f"{r['added_p99_ms']:>10.2f} {r['throughput_rps']:>8.0f} {r['loadgen_cpu']:>11.0%} {redis_cmds:>15} "
              f"{scripts:>12}")
    print("(Redis cmds/req counts the commands inside the scripts too; see redis_calls_per_request in the JSON)")
    ratios = {}
    if "sqlite" in single:
        for variant in variants:
            if variant != "sqlite" and variant in single:
                ratios[variant] = single[variant]["added_p50_ms"] / max(1e-9, single["sqlite"]["added_p50_ms"])
                goal = " (goal <= 1.5x)" if variant.startswith("pg+redis") else ""
                print(f"added p50 with {variant} / sqlite, {counts[0]} replica: {ratios[variant]:.2f}x{goal}")
    for variant in variants:
        series = [r for r in rows if r["variant"] == variant]
        scaling = " -> ".join(f"{r['throughput_rps']:.0f}" for r in series)
        print(f"{variant} throughput over {args.replicas} replicas: {scaling} req/s")
    if args.stages:
        for phase in ("sequential", "concurrent"):
            print(f"\nper call, first replica, {phase} phase: median ms (p90 ms)")
            names = sorted({stage for r in rows for stage in r["stages"][phase] or {}})
            print(f"{'variant':<13} {'replicas':>8} " + " ".join(f"{n:>16}" for n in names))
            for r in rows:
                if r["variant"] == "bare":
                    continue
                cells = []
                for n in names:
                    st = (r["stages"][phase] or {}).get(n)
                    cells.append(f"{st['p50_ms']:>7.2f} ({st['p90_ms']:>6.2f})" if st else "")
                print(f"{r['variant']:<13} {r['replicas']:>8} " + " ".join(f"{c:>16}" for c in cells))
    load_end = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start, "
          f"{load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f} at the end")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"requests": args.requests, "latency_requests": args.latency_requests,
                     "concurrency": args.concurrency},
        "load_average": {"start": load, "end": load_end},
        "rows": rows, "added_p50_ratio_vs_sqlite": ratios,
        "added_p50_ratio_redis_vs_sqlite": ratios.get("pg+redis")}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
