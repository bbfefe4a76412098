#!/usr/bin/env python3
"""Ledger latency and multi-process budget throughput.

What one request costs in the ledger (the writes the middleware makes per request), measured on a
real SQLite file in WAL mode, one operation at a time from Python (so the figures include the
binding and GIL release):

  verify_api_key   hash + indexed lookup (+ last_used_at at most once a minute)
  reserve          the atomic conditional UPSERT + audit event, in one write transaction
  insert_request   one request row with its estimates
  update_request   the final row update (status, tokens, cost, timings)
  settle           charge actual, release the reservation, audit event
  usage            the read the /tokenlane/usage endpoint makes
  request path     verify + reserve + insert + update + settle, back to back

For scale, the same reserve (UPDATE ... WHERE spent + reserved + ? <= limit, in BEGIN IMMEDIATE)
is timed through Python's own sqlite3 module on the same kind of file, side by side.

Then several processes (spawned) hammer one budget with reserve+settle pairs for a fixed time;
the table gives the total pairs per second and confirms the final counters (spent == the sum the
workers charged, reserved == 0, spent <= limit).

    python benchmarks/ledger.py            # ~30 s
    python benchmarks/ledger.py --quick    # a few seconds
    python benchmarks/ledger.py --dir /dev/shm   # where the database files go (default: a temp dir)

Prints Markdown and writes JSON to benchmarks/results/ledger.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from tokenlane import Ledger

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ledger.json"
NOW = 1_763_899_200.0


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # noqa: E731
    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "mean_us": statistics.fmean(s) / 1000.0, "n": len(s)}


def time_calls(fn, n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - t0)
    return percentiles(samples)


def single_process(directory: Path, n: int) -> dict[str, dict[str, float]]:
    led = Ledger(directory / "single.db")
    uid = led.create_user("bench@example.com")
    _, key = led.create_api_key(uid)
    led.set_budget("bench@example.com", 10**15, "day", now=NOW)
    row = {
        "tenant": "bench@example.com",
        "user_id": uid,
        "route": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "status": "running",
        "decision": "admit",
        "reason": "ok",
        "priority": "standard",
        "created_at": NOW,
        "est_input_tokens": 1000,
        "est_output_p50": 200,
        "est_output_p90": 450,
        "est_cost_pico_usd": 420_000_000,
        "prompt_preview": "x" * 200,
    }
    done = {
        "status": "succeeded",
        "started_at": NOW,
        "finished_at": NOW + 1,
        "queue_ms": 0.0,
        "input_tokens": 1000,
        "output_tokens": 210,
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
        "cost_pico_usd": 276_000_000,
        "response_preview": "y" * 200,
    }
    out = {}
    out["verify_api_key"] = time_calls(lambda i: led.verify_api_key(key), n)
    out["reserve"] = time_calls(lambda i: led.reserve("bench@example.com", 1000, NOW), n)
    out["settle"] = time_calls(lambda i: led.settle("bench@example.com", 1000, 900, NOW), n)
    out["insert_request"] = time_calls(lambda i: led.insert_request({**row, "id": f"a{i}"}), n)
    out["update_request"] = time_calls(lambda i: led.update_request(f"a{i}", **done), n)
    out["usage"] = time_calls(lambda i: led.usage("bench@example.com", NOW), n)

    def path(i: int) -> None:
        led.verify_api_key(key)
        led.reserve("bench@example.com", 1000, NOW)
        led.insert_request({**row, "id": f"b{i}"})
        led.update_request(f"b{i}", **done)
        led.settle("bench@example.com", 1000, 900, NOW)

    out["request path (5 calls)"] = time_calls(path, n)
    return out


def python_sqlite3_reserve(directory: Path, n: int) -> dict[str, float]:
    """The same conditional UPDATE + event INSERT through the standard library, for scale."""
    con = sqlite3.connect(directory / "stdlib.db", isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute("CREATE TABLE b (tenant TEXT PRIMARY KEY, lim INTEGER, spent INTEGER, reserved INTEGER)")
    con.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, tenant TEXT, kind TEXT, amount INTEGER, at REAL)")
    con.execute("INSERT INTO b VALUES ('t', ?, 0, 0)", (10**15,))

    def reserve(i: int) -> None:
        con.execute("BEGIN IMMEDIATE")
        cur = con.execute(
            "UPDATE b SET reserved = reserved + ? WHERE tenant = ? AND spent + reserved + ? <= lim", (1000, "t", 1000)
        )
        if cur.rowcount == 1:
            con.execute("INSERT INTO e (tenant, kind, amount, at) VALUES ('t', 'reserve', 1000, ?)", (NOW,))
        con.execute("COMMIT")

    return time_calls(reserve, n)


def _hammer(path: str, seconds: float, barrier, results) -> None:
    led = Ledger(path)
    barrier.wait()
    end = time.perf_counter() + seconds
    pairs = refused = charged = 0
    while time.perf_counter() < end:
        if led.reserve("shared", 1000, NOW):
            led.settle("shared", 1000, 700, NOW)
            charged += 700
            pairs += 1
        else:
            refused += 1
    results.put((pairs, refused, charged))


def multi_process(directory: Path, seconds: float, counts: list[int]) -> list[dict]:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for procs in counts:
        path = str(directory / f"multi-{procs}.db")
        limit = 10**12
        Ledger(path).set_budget("shared", limit, "day", now=NOW)
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_hammer, args=(path, seconds, barrier, results)) for _ in range(procs)]
        for p in ps:
            p.start()
        got = [results.get(timeout=seconds + 60) for _ in ps]
        for p in ps:
            p.join()
        pairs = sum(g[0] for g in got)
        charged = sum(g[2] for g in got)
        usage = Ledger(path).usage("shared", NOW)
        rows.append(
            {
                "processes": procs,
                "pairs_per_s": pairs / seconds,
                "refused": sum(g[1] for g in got),
                "spent_ok": usage["spent_pico_usd"] == charged and usage["spent_pico_usd"] <= limit,
                "reserved_left": usage["reserved_pico_usd"],
            }
        )
    return rows


def report(res: dict) -> str:
    lines = [
        f"Ledger on a WAL SQLite file in {res['meta']['dir']}, {res['meta']['cpus']} CPUs, "
        f"{res['meta']['n']} calls per row (µs per call, from Python):",
        "",
        "| operation | p50 µs | p99 µs | mean µs |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in res["single"].items():
        lines.append(f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} |")
    r = res["stdlib_reserve"]
    lines.append(f"| reserve via Python sqlite3 (reference) | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['mean_us']:.1f} |")
    lines += [
        "",
        f"Processes sharing one budget, reserve+settle pairs for {res['meta']['seconds']} s each:",
        "",
        "| processes | pairs/s (total) | counters exact | reserved left |",
        "| ---: | ---: | :---: | ---: |",
    ]
    for m in res["multi"]:
        lines.append(
            f"| {m['processes']} | {m['pairs_per_s']:,.0f} | {'yes' if m['spent_ok'] else 'NO'} | {m['reserved_left']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    n, seconds = (300, 1.0) if args.quick else (3000, 5.0)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        directory = Path(d)
        res = {
            "meta": {
                "n": n,
                "seconds": seconds,
                "dir": str(args.dir or tempfile.gettempdir()),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
            },
            "single": single_process(directory, n),
            "stdlib_reserve": python_sqlite3_reserve(directory, n),
            "multi": multi_process(directory, seconds, [1, 2, 4]),
        }
    text = report(res)
    print(text)
    res["markdown"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
