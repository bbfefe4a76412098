#!/usr/bin/env python3
"""Anomaly detectors on replays of real traces with injected, labelled anomalies.

Simulated days are built from the real traces in ``../shared/data/traces`` (nothing is committed):
the Azure 2023 conversation and code traces (one hour each; principals ``azure-conv`` and
``azure-code``) and the VTC/Chatbot-Arena real trace (600 s, 27 clients ``vtc-0`` … ``vtc-26``).
Each hour of a day replays the Azure hour and six copies of the VTC trace, thinned by a
time-of-day factor (0.2 at 04:00 rising to 1.0 at 16:00; a seeded draw per request), so arrival
bursts and token counts are the traces' own. Requests are priced as gpt-4o-mini by tokenlane's
price table.

Injected per day, at seeded random times between 03:00 and 22:00 (labelled with principal and window):

  runaway     a client re-sends one of its own requests in a loop at max(1/s, 4 × its mean rate)
              for 30 minutes
  template    a principal's prompts double in size (every request's input tokens × 2) for 2 hours
  new_tenant  a new principal replays 30 % of the Azure code trace's requests for 1 hour

An alarm is a true positive when it names a principal with an injection active at that time (or
ended less than 10 minutes before); every other alarm is a false alarm. Time to detect: first
alarm of any detector on the principal after the injection starts. Goal (issue 14): every runaway
detected within 10 minutes of trace time, at most 1 false alarm per simulated day.

    python benchmarks/anomalies.py              # 7 days, table + benchmarks/results/anomalies.json
    python benchmarks/anomalies.py --days 2
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import pickle
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokenlane import Pricing
from tokenlane.anomalies import Anomalies

HERE = Path(__file__).resolve().parent
DAY = 86400.0
SLACK_S = 600.0
MODEL = "gpt-4o-mini"


def find_traces(explicit: str | None) -> Path:
    for candidate in (explicit, os.environ.get("TOKENLANE_DATA_DIR"), HERE.parent.parent / "shared" / "data"):
        if not candidate:
            continue
        path = Path(candidate)
        path = path / "traces" if (path / "traces").is_dir() else path
        if (path / "AzureLLMInferenceTrace_conv.csv").exists():
            return path
    sys.exit("anomalies: no traces found (pass --traces DIR with AzureLLMInferenceTrace_*.csv and vtc/real_trace.pkl)")


def load_azure(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            stamp = dt.datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f")
            rows.append((stamp.timestamp(), int(r["ContextTokens"]), int(r["GeneratedTokens"])))
    start = min(t for t, _, _ in rows)
    return sorted((t - start, i, o) for t, i, o in rows)


class _Request:  # stands in for the trace's `trace.Request` objects
    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _TraceUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("trace", "Request"):
            return _Request
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the VTC trace")


def load_vtc(path: Path) -> list[tuple[float, str, int, int]]:
    with path.open("rb") as f:
        adapters, requests = _TraceUnpickler(f).load()
    index = {name: i for i, name in enumerate(adapters)}
    return sorted((float(r.req_time), f"vtc-{index[r.adapter_dir]}", int(r.prompt_len), int(r.output_len))
                  for r in requests)


def daily_factor(hour: float) -> float:
    """Traffic share by time of day: 0.2 at 04:00, 1.0 at 16:00."""
    return 0.2 + 0.8 * 0.5 * (1 - math.cos(2 * math.pi * (hour - 4) / 24))


@dataclass
class Injection:
    kind: str
    key: str
    start: float
    end: float


def build_day(day: int, seed: int, conv, code, vtc) -> tuple[list[tuple[float, str, int, int]], list[Injection]]:
    rng = random.Random(seed * 1000 + day)
    base = day * DAY
    events: list[tuple[float, str, int, int]] = []
    for hour in range(24):
        start = base + hour * 3600.0
        for trace, key in ((conv, "azure-conv"), (code, "azure-code")):
            for t, i, o in trace:
                if t < 3600.0 and rng.random() < daily_factor(hour + t / 3600.0):
                    events.append((start + t, key, i, o))
        for copy in range(6):
            offset = start + copy * 600.0
            for t, key, i, o in vtc:
                if rng.random() < daily_factor(hour + (copy * 600.0 + t) / 3600.0):
                    events.append((offset + t, key, i, o))
    by_key: dict[str, list[tuple[float, str, int, int]]] = {}
    for e in events:
        by_key.setdefault(e[1], []).append(e)
    keys = sorted(by_key)
    injections: list[Injection] = []
    busy: dict[str, list[tuple[float, float]]] = {}

    def free_slot(length: float, key: str) -> float:
        while True:
            start = base + rng.uniform(3 * 3600, 22 * 3600 - length)
            if all(start > e + 3600 or start + length < s - 3600 for s, e in busy.get(key, [])):
                busy.setdefault(key, []).append((start, start + length))
                return start

    for _ in range(2):  # runaway loops
        key = rng.choice(keys)
        start = free_slot(1800.0, key)
        rate = max(1.0, 4 * len(by_key[key]) / DAY)
        _, _, i, o = rng.choice(by_key[key])
        n = int(1800.0 * rate)
        events.extend((start + j / rate, key, i, o) for j in range(n))
        injections.append(Injection("runaway", key, start, start + 1800.0))
    key = rng.choice(keys)  # a prompt template that doubles
    start = free_slot(7200.0, key)
    events = [(t, k, i * 2 if k == key and start <= t < start + 7200.0 else i, o) for t, k, i, o in events]
    injections.append(Injection("template", key, start, start + 7200.0))
    key = f"new-{day}"  # a new heavy tenant
    start = base + rng.uniform(3 * 3600, 21 * 3600)
    events.extend((start + t, key, i, o) for t, i, o in code if t < 3600.0 and rng.random() < 0.3)
    injections.append(Injection("new_tenant", key, start, start + 3600.0))
    events.sort()
    return events, injections


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", help="directory with the traces (default ../shared/data/traces)")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "anomalies.json"))
    args = ap.parse_args()

    traces = find_traces(args.traces)
    conv = load_azure(traces / "AzureLLMInferenceTrace_conv.csv")
    code = load_azure(traces / "AzureLLMInferenceTrace_code.csv")
    vtc = load_vtc(traces / "vtc" / "real_trace.pkl")
    pricing = Pricing.default()
    per_in = pricing.cost(MODEL, input_tokens=1_000_000).total_pico_usd / 1e18
    per_out = pricing.cost(MODEL, output_tokens=1_000_000).total_pico_usd / 1e18

    detector = Anomalies()
    alarms, injections = [], []
    events_total = 0
    started = time.perf_counter()
    for day in range(args.days):
        events, injected = build_day(day, args.seed, conv, code, vtc)
        injections += injected
        events_total += len(events)
        observe = detector.observe
        for t, key, i, o in events:
            for a in observe((key,), t, cost_usd=i * per_in + o * per_out, input_tokens=i):
                alarms.append(a)
    elapsed = time.perf_counter() - started

    def matches(a) -> Injection | None:
        for inj in injections:
            if inj.key == a.key and inj.start <= a.at <= inj.end + SLACK_S:
                return inj
        return None

    detectors = sorted({a.detector for a in alarms} | {"spend_spike", "request_spike", "new_principal", "tokens_jump"})
    per_detector = []
    for name in detectors:
        mine = [a for a in alarms if a.detector == name]
        true = [a for a in mine if matches(a)]
        per_detector.append({"detector": name, "alarms": len(mine), "true": len(true), "false": len(mine) - len(true),
                             "false_per_day": (len(mine) - len(true)) / args.days,
                             "precision": len(true) / len(mine) if mine else None})
    per_kind = []
    for kind in ("runaway", "template", "new_tenant"):
        mine = [inj for inj in injections if inj.kind == kind]
        delays, by_detector = [], {}
        for inj in mine:
            hits = [a for a in alarms if a.key == inj.key and inj.start <= a.at <= inj.end + SLACK_S]
            if hits:
                delays.append(min(a.at for a in hits) - inj.start)
            for a in hits:
                by_detector.setdefault(a.detector, set()).add(id(inj))
        per_kind.append({
            "kind": kind, "injected": len(mine), "detected": len(delays), "recall": len(delays) / len(mine),
            "within_10_min": sum(d <= 600 for d in delays),
            "median_ttd_s": statistics.median(delays) if delays else None, "max_ttd_s": max(delays) if delays else None,
            "recall_by_detector": {k: len(v) / len(mine) for k, v in sorted(by_detector.items())},
        })
    false_total = sum(r["false"] for r in per_detector)
    runaway = per_kind[0]
    goals = {"runaways_within_10_min": runaway["within_10_min"] == runaway["injected"],
             "false_alarms_per_day": false_total / args.days, "false_alarms_goal_met": false_total / args.days <= 1}

    print(f"anomaly detectors: {args.days} simulated days, {events_total:,} requests, "
          f"{len(injections)} injected anomalies, {elapsed:.1f} s ({elapsed / events_total * 1e6:.1f} µs/request)\n")
    print("| detector | alarms | true | false | false / day | precision |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in per_detector:
        precision = "-" if r["precision"] is None else f"{r['precision']:.2f}"
        print(f"| {r['detector']} | {r['alarms']} | {r['true']} | {r['false']} | {r['false_per_day']:.2f} | {precision} |")
    print(f"| **all** | {len(alarms)} | {len(alarms) - false_total} | {false_total} | {false_total / args.days:.2f} | "
          f"{(len(alarms) - false_total) / len(alarms) if alarms else 0:.2f} |\n")
    print("| injected | count | detected | recall | ≤ 10 min | median TTD | max TTD | recall by detector |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in per_kind:
        fmt = (lambda s: "-" if s is None else f"{s / 60:.1f} min")
        by = ", ".join(f"{k} {v:.2f}" for k, v in r["recall_by_detector"].items()) or "-"
        print(f"| {r['kind']} | {r['injected']} | {r['detected']} | {r['recall']:.2f} | {r['within_10_min']} | "
              f"{fmt(r['median_ttd_s'])} | {fmt(r['max_ttd_s'])} | {by} |")
    print(f"\ngoal: every runaway within 10 min: {'met' if goals['runaways_within_10_min'] else 'NOT met'}; "
          f"false alarms per day {goals['false_alarms_per_day']:.2f} (goal ≤ 1: "
          f"{'met' if goals['false_alarms_goal_met'] else 'NOT met'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "days": args.days, "seed": args.seed, "requests": events_total, "seconds": elapsed,
        "python": platform.python_version(), "detectors": per_detector, "injected": per_kind, "goals": goals,
        "injections": [inj.__dict__ for inj in injections],
        "alarms": [a.payload() for a in alarms],
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
