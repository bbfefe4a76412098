#!/usr/bin/env python3
"""Scheduling policies vs the fifo baseline, replaying real LLM traces through tokenlane's scheduler.

For every trace found, every load level, every budget level and every policy, the trace is replayed
with ``tokenlane.simulate`` (the production Scheduler on a virtual clock) and compared with fifo on
the same trace, load and budget. One Markdown table is printed; everything is written as JSON to
benchmarks/results/scheduling.json (or --out).

Traces (nothing is downloaded, nothing is committed). The first directory that exists is used:
``--traces DIR``, ``$TOKENLANE_DATA_DIR`` (its ``traces/`` subdirectory or itself),
``../shared/data/traces``. Recognised files:

  AzureLLMInferenceTrace_code*.csv, AzureLLMInferenceTrace_conv*.csv
      Azure LLM inference traces 2023 (TIMESTAMP, ContextTokens, GeneratedTokens)
  any other *.csv / *.jsonl with arrival, input and output token columns
      e.g. the 27-tenant LMSYS trace (a tenant column is used when present)

``--synthetic`` replays a seeded synthetic trace instead (log-normal lengths, Poisson arrivals), to
check the script itself; its results are labelled SYNTHETIC and are not evidence of anything.

Assignment rule for what a trace does not carry (seeded, --seed, default 0), per request i:
  priority   interactive 30%, standard 60%, batch 10% (independent draws)
  tenant     when the trace has none: 8 tenants with Zipf shares (tenant k has weight 1/k)
  deadline   arrival + base + factor × expected unloaded service time from the request's estimate;
             (base, factor) = interactive (5 s, 3), standard (30 s, 10), batch (1 day, 0)
Service model (a hosted API): time to first token 0.5 s + 0.1 ms per input token + 20 ms per output
token; the provider serves 64 requests at once (--slots). Load level ρ rescales the trace's arrival
times (keeping their burst structure) so that arrival rate × mean service time = ρ × slots. Estimates: seeded log-normal noise
around the true output length (σ = 0.5, p90 = p50 × e^(1.2816σ)), i.e. a realistic estimator
(Kendall τ ≈ 0.6 against the truth on these traces, in the range the learned predictors reach).
Budget levels: none, and a per-tenant total budget of 50% of what the tenant's requests cost.

Metrics per row (vs fifo on the same trace/load/budget):
  p50 ratio       fifo median latency / policy median latency (latency = arrival → completion)
  thr ratio       policy throughput / fifo throughput (completed per second of makespan)
  overshoot       spend beyond the budget, USD (summed over tenants)
  SLA inter.      share of interactive requests completed by their deadline
  Jain / gap      Jain's index of per-tenant service among backlogged tenants per 60 s window
                  (mean), and the largest per-window service gap between two backlogged tenants
  TUE             token utilization efficiency: share of the tokens of completed requests that
                  went to requests completed within their SLA
  $/SLA-met       spend per request completed within its SLA

    python benchmarks/scheduling.py                       # all traces found, full grid
    python benchmarks/scheduling.py --traces /data/traces --loads 0.9,1.1 --budgets none
    python benchmarks/scheduling.py --synthetic --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tokenlane

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vtc  # noqa: E402  (benchmarks/vtc.py: the VTC trace and its published results)

POLICIES = ["fifo", "cost_priority", "deadline", "fair", "default"]
SERVICE = {"ttft_s": 0.5, "tpot_s": 0.02, "prefill_s_per_token": 1e-4}
FALLBACK_TAU = 0.5
SLOTS = 64
MODEL = "gpt-4o-mini"
HERE = Path(__file__).resolve().parent


def trace_dirs(explicit: str | None) -> list[Path]:
    out = []
    if explicit:
        out.append(Path(explicit))
    env = os.environ.get("TOKENLANE_DATA_DIR")
    if env:
        out += [Path(env) / "traces", Path(env)]
    out.append(HERE.parent.parent / "shared" / "data" / "traces")
    return out


def find_traces(explicit: str | None) -> tuple[Path | None, list[Path]]:
    for d in trace_dirs(explicit):
        if d.is_dir():
            files = sorted(p for p in d.rglob("*") if p.suffix.lower() in (".csv", ".jsonl") and p.stat().st_size > 0)
            if files:
                return d, files
    return None, []


def assign(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The documented, seeded rule for priorities and tenants a trace does not carry."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    n = len(df)
    if "priority" not in df.columns:
        df["priority"] = rng.choice(["interactive", "standard", "batch"], size=n, p=[0.3, 0.6, 0.1])
    if "tenant" not in df.columns:
        weights = 1.0 / np.arange(1, 9)
        df["tenant"] = [f"tenant{k}" for k in rng.choice(8, size=n, p=weights / weights.sum())]
    return df


def synthetic(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(1 / 5.0, n)),
        "input_tokens": np.minimum(np.rint(rng.lognormal(6.5, 1.0, n)), 30_000).astype(int),
        "output_tokens": np.maximum(1, np.minimum(np.rint(rng.lognormal(5.0, 1.0, n)), 4_000)).astype(int),
    })


def noisy_estimates(df: pd.DataFrame, seed: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    out = df["output_tokens"].to_numpy(dtype=float)
    p50 = np.maximum(1, out * np.exp(rng.normal(0, sigma, len(out))))
    return p50, p50 * math.exp(1.2815515655446004 * sigma)


def sigma_for_tau(df: pd.DataFrame, tau: float, seed: int) -> float:
    """The log-normal noise whose estimates rank this trace's lengths with Kendall tau = `tau`."""
    out = df["output_tokens"].to_numpy(dtype=float)
    lo, hi = 0.01, 5.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if kendall_tau_sample(noisy_estimates(df, seed, mid)[0], out, seed) > tau:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def measured_tau() -> tuple[float, str]:
    """The online Kendall tau the shipped estimator reached in benchmarks/estimators.py's last run
    (held-out prompts and models), so the replays use estimates of the quality really reached."""
    path = HERE / "results" / "estimators.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["results"]
        tau = next(r["online"]["tau"] for r in rows if r["estimator"] == "blend:default")
        return float(tau), f"blend:default online tau from {path.name}"
    except (OSError, KeyError, StopIteration, ValueError):
        return FALLBACK_TAU, "fallback (no benchmarks/results/estimators.json)"


def kendall_tau_sample(a: np.ndarray, b: np.ndarray, seed: int, pairs: int = 200_000) -> float:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(a), pairs)
    j = rng.integers(0, len(a), pairs)
    s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    keep = s != 0
    return float(s[keep].mean()) if keep.any() else float("nan")


def run_grid(name: str, df: pd.DataFrame, loads: list[float], budgets: list[str], seed: int, tau: float,
             rows: list[dict], curves: dict) -> None:
    df = assign(df, seed)
    sigma = sigma_for_tau(df, tau, seed)
    p50, p90 = noisy_estimates(df, seed, sigma)
    service = SERVICE["ttft_s"] + SERVICE["prefill_s_per_token"] * df["input_tokens"] + SERVICE["tpot_s"] * df["output_tokens"]
    unloaded_p50 = float(service.median())
    span = float(df["arrival_s"].max() - df["arrival_s"].min()) or 1.0
    rate = len(df) / span
    got_tau = kendall_tau_sample(p50, df["output_tokens"].to_numpy(dtype=float), seed)
    pricing = tokenlane.Pricing.default()
    ip = pricing.cost(MODEL, input_tokens=1).total_pico_usd
    op = pricing.cost(MODEL, output_tokens=1).total_pico_usd
    demand = (df["input_tokens"] * ip + df["output_tokens"] * op).groupby(df["tenant"]).sum() / 1e12
    print(f"# {name}: {len(df):,} requests over {span:,.0f} s ({rate:.2f} req/s), mean service "
          f"{service.mean():.2f} s (unloaded median latency {unloaded_p50:.2f} s), {df['tenant'].nunique()} tenants, "
          f"estimates: log-normal noise sigma {sigma:.2f}, Kendall tau {got_tau:.2f}", file=sys.stderr)
    for rho in loads:
        conc = SLOTS
        scale = rate * float(service.mean()) / (rho * conc)
        scaled = df.assign(arrival_s=df["arrival_s"] * scale)
        for budget in budgets:
            budget_usd = None
            if budget != "none":
                budget_usd = float(budget) * float(demand.median())  # fraction of the median tenant's demand
            base = None
            for policy in POLICIES:
                started = time.perf_counter()
                r = tokenlane.simulate(scaled, policy=policy, model=MODEL, max_concurrency=conc, budget_usd=budget_usd,
                                       estimator=(p50, p90), service=SERVICE, seed=seed)
                s = r.summary
                if policy == "fifo":
                    base = s
                queue = r.requests["queue_s"]
                q = r.requests
                timed = q.loc[(q["priority"] != "batch") & (q["outcome"] == "completed"), "latency_s"]
                s["p99_latency_non_batch_s"] = float(timed.quantile(0.99)) if len(timed) else float("nan")
                row = {
                    "trace": name, "load": rho, "max_concurrency": conc, "time_scale": scale, "budget": budget,
                    "budget_usd_per_tenant": budget_usd, "policy": policy,
                    "unloaded_p50_latency_s": unloaded_p50,
                    "fifo_p50_vs_unloaded": base["p50_latency_s"] / unloaded_p50,
                    "p50_ratio_vs_fifo": base["p50_latency_s"] / s["p50_latency_s"] if s["p50_latency_s"] else float("nan"),
                    "p99_vs_fifo": s["p99_latency_s"] / base["p99_latency_s"],
                    "p99_non_batch_vs_fifo": s["p99_latency_non_batch_s"] / base["p99_latency_non_batch_s"],
                    "throughput_ratio_vs_fifo": s["throughput_rps"] / base["throughput_rps"],
                    "fairness_gap_ratio_vs_fifo": (s["max_service_gap_tokens"] / base["max_service_gap_tokens"]
                                                   if base["max_service_gap_tokens"] else float("nan")),
                    "worst_wait_s": float(queue.max()) if queue.notna().any() else float("nan"),
                    "replay_s": time.perf_counter() - started,
                    "estimate_kendall_tau": got_tau, "estimate_noise_sigma": sigma,
                    **s,
                }
                rows.append(row)
                if budget == "none":
                    lat = np.sort(r.requests["latency_s"].dropna().to_numpy())
                    curves[(name, rho, policy)] = lat
                print(f"  rho={rho} budget={budget} {policy:<13} p50 {s['p50_latency_s']:8.2f}s "
                      f"p99 {s['p99_latency_s']:8.2f}s SLA-int {s.get('sla_attainment_interactive', float('nan')):.3f} "
                      f"({row['replay_s']:.2f}s)", file=sys.stderr)


def table(rows: list[dict]) -> str:
    head = ("| trace | load ρ (fifo p50 / unloaded) | budget | policy | p50 s | p95 s | p99 s | p50 gain vs fifo "
            "| p99 vs fifo (all / excl. batch) | worst wait s | thr ratio | SLA inter. / std / batch | TUE | $/SLA-met "
            "| overshoot $ (bound) | rejected |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sla = " / ".join(f"{r.get(f'sla_attainment_{c}', float('nan')):.3f}" for c in ("interactive", "standard", "batch"))
        lines.append(
            f"| {r['trace']} | {r['load']} ({r['fifo_p50_vs_unloaded']:.1f}×) | {r['budget']} | {r['policy']} "
            f"| {r['p50_latency_s']:.2f} | {r['p95_latency_s']:.2f} | {r['p99_latency_s']:.2f} "
            f"| {r['p50_ratio_vs_fifo']:.2f}× | {r['p99_vs_fifo']:.2f}× / {r['p99_non_batch_vs_fifo']:.2f}× | {r['worst_wait_s']:.1f} "
            f"| {r['throughput_ratio_vs_fifo']:.3f} | {sla} | {r['token_utilization_efficiency']:.3f} "
            f"| {r['cost_per_sla_met_usd']:.6f} | {r['budget_overshoot_usd']:.5f} ({r['budget_overshoot_bound_usd']:.5f}) "
            f"| {r['rejected']} |"
        )
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only backend (the plots are written as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(curves: dict, path: Path) -> None:
    plt = pyplot()
    traces = sorted({(t, rho) for t, rho, _ in curves})
    fig, axes = plt.subplots(1, len(traces), figsize=(5.2 * len(traces), 4), squeeze=False)
    for ax, (trace, rho) in zip(axes[0], traces):
        for policy in POLICIES:
            lat = curves.get((trace, rho, policy))
            if lat is not None and len(lat):
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=policy,
                        linewidth=2.2 if policy in ("fifo", "default") else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("latency, arrival to completion (s)")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{trace}, load {rho}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replay_1m(df: pd.DataFrame, seed: int, repeats: int = 2) -> dict:
    """Best-of-`repeats` time of a 1,000,000-request replay (8 tenants, 64 slots) built by tiling
    the trace end to end, for fifo and default."""
    reps = math.ceil(1_000_000 / len(df))
    span = float(df["arrival_s"].max()) + 1.0
    big = pd.concat([df.assign(arrival_s=df["arrival_s"] + k * span) for k in range(reps)], ignore_index=True)
    big = assign(big.iloc[:1_000_000], seed)
    service = SERVICE["ttft_s"] + SERVICE["tpot_s"] * big["output_tokens"].mean()
    scale = len(big) / float(big["arrival_s"].max()) * service / (0.9 * 64)
    big = big.assign(arrival_s=big["arrival_s"] * scale)
    out = {}
    for policy in ("fifo", "default"):
        wall = cpu = math.inf
        for _ in range(repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            tokenlane.simulate(big, policy=policy, max_concurrency=64, estimator="noisy", service=SERVICE, seed=seed)
            wall = min(wall, time.perf_counter() - started)
            cpu = min(cpu, time.process_time() - started_cpu)
        out[policy] = {"wall_s": wall, "cpu_s": cpu}
    return out


def run_vtc(directory: Path, seed: int, tau: float, slots: int | None) -> dict:
    """tokenlane's fifo, fair and default on VTC's real 27-client trace, next to VTC's published runs."""
    trace = vtc.load_trace(directory)
    published = vtc.load_results(directory)
    light = vtc.light_clients(trace)
    # Service model of S-LoRA on one A10G, read off the published FCFS run: ~0.04 s per output token
    # once running (its least-queued requests); the slot count is the one whose fifo replay gives
    # FCFS's throughput. Nothing else is fitted, and nothing on the VTC or fair runs.
    svc = {"ttft_s": 0.2, "tpot_s": 0.04, "prefill_s_per_token": 5e-4}
    fcfs = vtc.measures(published["FCFS"], light)
    sigma = sigma_for_tau(trace, tau, seed)
    p50, p90 = noisy_estimates(trace, seed, sigma)

    def replay(policy: str, conc: int):
        r = tokenlane.simulate(trace, policy=policy, max_concurrency=conc, estimator=(p50, p90), service=svc,
                               seed=seed, model=MODEL)
        return vtc.measures(vtc.from_simulation(r.requests, svc["ttft_s"], svc["prefill_s_per_token"]), light)

    if slots is None:
        slots = min(range(4, 65), key=lambda c: abs(replay("fifo", c)["throughput_rps"] - fcfs["throughput_rps"]))
    rows = {f"published {k}": vtc.measures(v, light) for k, v in published.items()}
    for policy in ("fifo", "fair", "default"):
        rows[f"tokenlane {policy}"] = replay(policy, slots)
    return {"service_model": svc, "slots": slots, "estimate_noise_sigma": sigma, "light_clients": sorted(light),
            "rows": rows}


def vtc_table(res: dict) -> str:
    head = ("| scheduler | served / refused | throughput req/s | p50 latency s | p99 latency s | p50 first token s "
            "| light clients p50 s | heavy clients p50 s | max service gap | mean service gap |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = ["published FCFS", "published LCF", "published VTC", "published VTC_predict", "published VTC_oracle",
             "tokenlane fifo", "tokenlane fair", "tokenlane default"]
    names = order + sorted(k for k in res["rows"] if k not in order)
    for name in names:
        m = res["rows"].get(name)
        if m is None:
            continue
        lines.append(
            f"| {name} | {m['served']} / {m['refused']} | {m['throughput_rps']:.2f} | {m['p50_latency_s']:.1f} "
            f"| {m['p99_latency_s']:.1f} | {m['p50_first_token_s']:.1f} | {m['light_p50_latency_s']:.1f} "
            f"| {m['heavy_p50_latency_s']:.1f} | {m['max_service_gap']:,.0f} | {m['mean_service_gap']:,.0f} |"
        )
    return "\n".join(lines)


def plot_vtc(res: dict, path: Path) -> None:
    plt = pyplot()
    shown = ["published FCFS", "published VTC", "tokenlane fifo", "tokenlane fair", "tokenlane default"]
    clients = sorted(res["rows"]["published FCFS"]["per_client_p50_latency_s"])
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(shown)
    for k, name in enumerate(shown):
        per = res["rows"][name]["per_client_p50_latency_s"]
        ax.bar(np.arange(len(clients)) + k * width, [per.get(c, np.nan) for c in clients], width, label=name)
    ax.set_xticks(np.arange(len(clients)) + 0.4)
    ax.set_xticklabels([c.replace("client", "") + ("*" if c in res["light_clients"] else "") for c in clients],
                       fontsize=7)
    ax.set_xlabel("client (* = light: demand below the equal share)")
    ax.set_ylabel("median latency (s)")
    ax.set_yscale("log")
    ax.set_title("VTC real 27-client trace: median latency per client")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    global SLOTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", help="directory with the trace files")
    ap.add_argument("--synthetic", action="store_true", help="replay a seeded synthetic trace (script check only)")
    ap.add_argument("--loads", default="0.8,0.95,0.97,1.0,1.1", help="offered load levels ρ (default 0.8,0.95,0.97,1.0,1.1)")
    ap.add_argument("--plot-load", type=float, default=0.97, help="load of the latency plot (default 0.97)")
    ap.add_argument("--budgets", default="none,0.5", help="'none' and/or fractions of the median tenant's demand")
    ap.add_argument("--max-requests", type=int, default=0, help="use only the first N requests of each trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=64, help="provider concurrency (default 64)")
    ap.add_argument("--tau", type=float, help="Kendall tau of the estimates (default: the estimator benchmark's)")
    ap.add_argument("--quick", action="store_true", help="one load, no budget, 20k requests")
    ap.add_argument("--no-1m", action="store_true", help="skip the 1M-request replay timing")
    ap.add_argument("--no-vtc", action="store_true", help="skip the VTC comparison")
    ap.add_argument("--plots", default=str(HERE.parent / "docs"), help="directory for the PNG plots ('' = none)")
    ap.add_argument("--out", default=str(HERE / "results" / "scheduling.json"))
    args = ap.parse_args()
    SLOTS = args.slots
    loads = [float(x) for x in args.loads.split(",")]
    budgets = args.budgets.split(",")
    if args.quick:
        loads, budgets, args.max_requests = [1.1], ["none"], args.max_requests or 20_000
    tau, tau_source = (args.tau, "--tau") if args.tau is not None else measured_tau()

    traces: list[tuple[str, pd.DataFrame]] = []
    source = "synthetic"
    vtc_dir = None
    if args.synthetic:
        traces.append(("SYNTHETIC", synthetic(args.max_requests or 20_000, args.seed)))
    else:
        directory, files = find_traces(args.traces)
        if directory is None:
            print("No trace files found in: " + ", ".join(str(d) for d in trace_dirs(args.traces)) +
                  "\nPass --traces DIR or set TOKENLANE_DATA_DIR (or run with --synthetic to check the script).",
                  file=sys.stderr)
            return 2
        source = str(directory)
        if (directory / "vtc" / "real_trace.pkl").is_file():
            vtc_dir = directory / "vtc"
        for f in files:
            if vtc_dir is not None and vtc_dir in f.parents:
                continue  # the VTC folder is replayed by run_vtc, against its published results
            try:
                df = tokenlane.load_trace(f)
            except (ValueError, KeyError) as exc:
                print(f"skipping {f.name}: {exc}", file=sys.stderr)
                continue
            traces.append((f.stem, df))
    print(f"estimate quality: Kendall tau {tau:.2f} ({tau_source})", file=sys.stderr)
    rows: list[dict] = []
    curves: dict = {}
    for name, df in traces:
        if args.max_requests:
            df = df.iloc[: args.max_requests]
        run_grid(name, df, loads, budgets, args.seed, tau, rows, curves)
    vtc_res = None if args.no_vtc or vtc_dir is None else run_vtc(vtc_dir, args.seed, tau, None)
    timing = {} if args.no_1m or not traces else replay_1m(traces[0][1], args.seed)

    print(table(rows))
    if vtc_res:
        print(f"\nVTC real trace (27 clients; tokenlane: {vtc_res['slots']} slots, service {vtc_res['service_model']}):")
        print(vtc_table(vtc_res))
    if timing:
        print("\n1M-request replay (trace tiled to 1,000,000 requests, 8 tenants, 64 slots, ρ = 0.9, best of 2; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): " +
              ", ".join(f"{p} {t['wall_s']:.2f} s wall ({t['cpu_s']:.2f} s CPU)" for p, t in timing.items()))
    if args.plots and not args.synthetic:
        plots = Path(args.plots)
        plots.mkdir(parents=True, exist_ok=True)
        if curves:
            at = args.plot_load if args.plot_load in loads else max(loads)
            plot_latency({k: v for k, v in curves.items() if k[1] == at}, plots / "scheduling-latency.png")
        if vtc_res:
            plot_vtc(vtc_res, plots / "scheduling-vtc.png")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "source": source, "service_model": SERVICE, "slots": SLOTS, "model": MODEL,
        "estimate_tau": tau, "estimate_tau_source": tau_source,
        "seed": args.seed, "python": platform.python_version(), "machine": platform.machine(),
        "load_average": os.getloadavg(), "replay_1m_s": timing, "rows": rows, "vtc": vtc_res,
    }, indent=1, default=float))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
