#!/usr/bin/env python3
"""Middleware overhead, the tail: why are requests over 1 ms slow? (the p99 of benchmarks/middleware.py)

Runs the in-process loop of benchmarks/middleware.py (the same app with and without the middleware,
a 1,000-token prompt, alternating) under ``perf sched record`` (system-wide scheduler events), then
attributes every request over 1 ms to what its answering thread spent the excess on:

  runqueue: other processes   runnable, while other programs had both cores (the OS: machine load)
  runqueue: own threads       runnable, after one of this process's own threads (ledger applier,
                              estimator updates, the Python ledger thread) took its core, or while
                              they had more of the cores than other programs
  blocked                     asleep, waiting for the GIL, a lock or I/O (named: who woke it)
  gc                          a Python garbage collection ran inside the request
  own CPU                     none of these: the request's own work (page faults, a slow core)

Without perf (or permission for it, e.g. not root and perf_event_paranoid > 1) the run still
splits the slow requests by the thread's scheduler statistics (runqueue wait vs asleep vs running),
without naming whose threads had the CPU.

Run:  python benchmarks/middleware_tail.py [--requests 2000] [--out benchmarks/results/middleware_tail.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import middleware as mw  # noqa: E402  (the app, the prompt, the ASGI call)

DEFAULT_OUT = mw.REPO / "benchmarks" / "results" / "middleware_tail.json"
SLOW_NS = int(mw.SLOW_US * 1000)
CLASSES = ("runqueue: other processes", "runqueue: own threads", "blocked", "gc", "own CPU")


def measure(n: int, db: str, gap_s: float = 0.0) -> dict[str, Any]:
    """The loop of middleware.in_process, recording per request its window (CLOCK_MONOTONIC ns), the
    answering thread's CPU time and runqueue wait (/proc schedstat), and every GC pass. ``gap_s``:
    the event loop sleeps this long after each pair of requests (a server that is not saturated);
    0 turns it once, as middleware.py does (back to back: the answering thread never sleeps)."""
    body = mw.body_for(mw.make_prompt())
    apps = {"without": mw.build_app(False, None), "with": mw.build_app(True, db)}
    collections_ = mw.GcWindows()
    rows: dict[str, list[tuple[int, int, int, int]]] = {name: [] for name in apps}

    async def run() -> None:
        for app in apps.values():  # warm-up (the first calls build the stacks)
            for _ in range(50):
                assert await mw.call_asgi(app, body) == 200
        waited = mw.runqueue_clock()
        cpu0 = time.process_time_ns() - time.thread_time_ns()  # the other threads' CPU time
        with collections_:
            for _ in range(n):
                for name, app in apps.items():
                    w0 = waited()
                    c0, t0 = time.thread_time_ns(), time.monotonic_ns()
                    assert await mw.call_asgi(app, body) == 200
                    t1, c1 = time.monotonic_ns(), time.thread_time_ns()
                    rows[name].append((t0, t1, c1 - c0, waited() - w0))
                    await asyncio.sleep(0)
                if gap_s:
                    await asyncio.sleep(gap_s)
        background[0] = (time.process_time_ns() - time.thread_time_ns() - cpu0) / 1000 / n

    background = [0.0]  # µs of other threads' CPU per request (ledger applier, estimator updates)

    asyncio.run(run())
    own = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            own[int(tid)] = f.read().strip()
    return {"pid": os.getpid(), "main": threading.get_native_id(), "threads": own, "rows": rows,
            "background_cpu_us_per_request": background[0],
            "gc": collections_.windows, "load_average": os.getloadavg()}


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def sched_timeline(trace: str, main: int) -> tuple[dict[int, list[tuple[int, int, int]]],
                                                    list[tuple[int, str, int, int]], list[tuple[int, int]]]:
    """From ``perf sched script``: each CPU's (start, end, tid) segments, the answering thread's
    off-CPU spells (left at, its state then, back at, the thread that took its CPU), and who woke
    it (at, waker tid)."""
    switch = re.compile(r"^\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch: .*?prev_pid=(\d+) "
                        r"prev_prio=\d+ prev_state=(\S+) ==> .*?next_pid=(\d+)")
    waking = re.compile(r"^\s*(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:sched_waking: .*?pid=(\d+)")
    current: dict[int, tuple[int, int]] = {}
    segments: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    off: list[tuple[int, str, int, int]] = []
    wakers: list[tuple[int, int]] = []
    left: tuple[int, str, int] | None = None
    for line in trace.splitlines():
        m = switch.match(line)
        if m:
            cpu, at, prev, state, nxt = int(m[2]), round(float(m[3]) * 1e9), int(m[4]), m[5], int(m[6])
            if cpu in current:
                segments[cpu].append((current[cpu][0], at, current[cpu][1]))
            current[cpu] = (at, nxt)
            if prev == main:
                left = (at, state, nxt)
            if nxt == main and left is not None:
                off.append((left[0], left[1], at, left[2]))
                left = None
            continue
        m = waking.match(line)
        if m and int(m[4]) == main:
            wakers.append((round(float(m[3]) * 1e9), int(m[1])))
    return segments, off, wakers


def classify(run: dict[str, Any], trace: str | None) -> dict[str, Any]:
    """Each slow request's class (see the module docstring), per variant."""
    main, own = run["main"], {int(t) for t in run["threads"]}
    timeline = sched_timeline(trace, main) if trace else None
    result: dict[str, Any] = {}
    for name, rows in run["rows"].items():
        walls = [(t1 - t0) / 1000 for t0, t1, _, _ in rows]
        counts = collections.Counter({c: 0 for c in CLASSES})
        foreign: collections.Counter[str] = collections.Counter()
        wakers: collections.Counter[str] = collections.Counter()
        preempted_by: collections.Counter[str] = collections.Counter()  # own threads that took the core
        for t0, t1, cpu_ns, wait_ns in rows:
            wall = t1 - t0
            if wall <= SLOW_NS:
                continue
            gc_ns = sum(_overlap(t0, t1, a, b) for a, b, _ in run["gc"])
            cause = mw.slow_cause(wall, cpu_ns, wait_ns, gc_ns)  # runqueue, asleep, gc or own_cpu
            kind = {"asleep": "blocked", "own_cpu": "own CPU"}.get(cause, cause)
            if kind == "blocked" and timeline is not None:
                who = {run["threads"].get(str(w), "another process") for at, w in timeline[2] if t0 <= at <= t1}
                wakers.update(who or {"?"})
            if kind == "runqueue":
                kind = "runqueue: other processes"
                if timeline is not None:
                    segments, off, _ = timeline
                    by_tid: collections.Counter[int] = collections.Counter()
                    preemptors = set()
                    for a, state, b, taker in off:
                        if not state.startswith("R") or not _overlap(a, b, t0, t1):
                            continue
                        preemptors.add(taker)
                        lo, hi = max(a, t0), min(b, t1)
                        for segs in segments.values():
                            for s, e, tid in segs:
                                if tid and _overlap(s, e, lo, hi):
                                    by_tid[tid] += _overlap(s, e, lo, hi)
                    mine = sum(v for tid, v in by_tid.items() if tid in own)
                    others = sum(v for tid, v in by_tid.items() if tid not in own)
                    if mine > others or preemptors & own:  # own threads took the core, or most of the wait
                        kind = "runqueue: own threads"
                        preempted_by.update(run["threads"].get(str(t), "?") for t in preemptors & own)
                    for tid, v in by_tid.items():
                        if tid not in own:
                            foreign[_comm(tid)] += v
            counts[kind] += 1
        result[name] = {"p50_us": statistics.median(walls), "p99_us": mw.pct(walls, 0.99),
                        "p999_us": mw.pct(walls, 0.999), "max_us": max(walls),
                        "cpu_p50_us": statistics.median([c / 1000 for _, _, c, _ in rows]),
                        "cpu_p99_us": mw.pct([c / 1000 for _, _, c, _ in rows], 0.99),
                        "slow": sum(counts.values()), "classes": dict(counts),
                        "blocked_woken_by": dict(wakers), "preempted_by_own": dict(preempted_by),
                        "foreign_cpu_ms": {k: round(v / 1e6, 1) for k, v in foreign.most_common(5)}}
    result["background_cpu_us_per_request"] = run["background_cpu_us_per_request"]
    result["gc"] = {"collections": len(run["gc"]),
                    "gen2_ms": [round((b - a) / 1e6, 1) for a, b, g in run["gc"] if g == 2]}
    return result


_comms: dict[int, str] = {}


def _comm(tid: int) -> str:
    return _comms.get(tid, str(tid))


def record(child: list[str], use_perf: bool = True) -> tuple[dict[str, Any], str | None]:
    """Runs ``child`` (a command taking the output path last: the measured process) under
    ``perf sched record`` when it can; returns its measurements and the scheduler trace."""
    with tempfile.TemporaryDirectory() as tmp:
        data, trace_file = Path(tmp) / "run.json", Path(tmp) / "sched.data"
        perf = shutil.which("perf") if use_perf else None
        trace = None
        if perf:
            rec = subprocess.run([perf, "sched", "record", "-k", "CLOCK_MONOTONIC", "-o", str(trace_file), "--",
                                  *child, str(data)], capture_output=True, text=True)
            if rec.returncode == 0 and data.exists():
                trace = subprocess.run([perf, "sched", "script", "-i", str(trace_file), "-F", "tid,cpu,time,event,trace"],
                                       capture_output=True, text=True).stdout
                for m in re.finditer(r"(?:prev|next)_comm=(.*?) (?:prev|next)_pid=(\d+)", trace):
                    _comms[int(m[2])] = m[1]
            else:
                print(f"perf sched record failed ({rec.stderr.strip()[-200:]}): without names", file=sys.stderr)
        if trace is None:
            subprocess.run([*child, str(data)], check=True)
        return json.loads(data.read_text()), trace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="idle time after each pair of requests (default 0: back to back)")
    parser.add_argument("--no-perf", action="store_true", help="skip perf sched (no names for the CPU's other users)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the measured process writes here
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            args.child.write_text(json.dumps(measure(args.requests, os.path.join(tmp, "tail.db"), args.gap_ms / 1000)))
        return 0
    child = [sys.executable, __file__, "--requests", str(args.requests), "--gap-ms", str(args.gap_ms), "--child"]
    run, trace = record(child, use_perf=not args.no_perf)
    result = classify(run, trace)
    pacing = f"{args.gap_ms:g} ms idle after each pair" if args.gap_ms else "back to back"
    print(f"Slow requests (> 1 ms wall) of {args.requests} per variant ({pacing}), by cause; load average "
          f"{run['load_average'][0]:.1f} (perf sched: {'yes' if trace else 'no'})\n")
    print("| variant | p50 | p99 | own CPU p99 | > 1 ms | " + " | ".join(CLASSES) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(CLASSES))
    for name in ("without", "with"):
        r = result[name]
        print(f"| {name} | {r['p50_us']:.0f} µs | {r['p99_us']:.0f} µs | {r['cpu_p99_us']:.0f} µs | {r['slow']} | "
              + " | ".join(str(r["classes"][c]) for c in CLASSES) + " |")
    for name in ("without", "with"):
        r = result[name]
        print(f"\n{name}: the CPU's other users while the answering thread waited (ms): {r['foreign_cpu_ms']}; "
              f"blocked requests woken by: {r['blocked_woken_by']}; preempted by its own threads: "
              f"{r['preempted_by_own']}")
    print(f"\nGC: {result['gc']['collections']} collections, full ones (ms): {result['gc']['gen2_ms']}; the process's "
          f"other threads used {result['background_cpu_us_per_request']:.0f} µs of CPU per request")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"requests": args.requests, "gap_ms": args.gap_ms, "load_average": run["load_average"],
                                    "perf_sched": bool(trace), **result}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
