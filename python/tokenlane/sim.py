"""Replay a request trace through the real scheduler on a virtual clock (C++; docs/scheduling.md).

    result = tokenlane.simulate("AzureLLMInferenceTrace_conv.csv", policy="default",
                                model="gpt-4o-mini", max_concurrency=16, budget_usd=5.0)
    result.summary["p50_latency_s"], result.summary["sla_attainment"]
    result.requests        # a DataFrame, one row per request

The trace is a DataFrame or a file (CSV or JSONL) with ``arrival_s``, ``input_tokens`` and
``output_tokens`` (the Azure LLM trace's TIMESTAMP, ContextTokens and GeneratedTokens are recognised,
as are common aliases) and optionally ``tenant``, ``priority`` ("interactive"/"standard"/"batch"),
``deadline_s`` (absolute, on the trace clock), ``slo_s`` (relative to arrival) and
``est_output_tokens`` / ``est_output_p50`` + ``est_output_p90`` (the scheduler's estimates).

Requires numpy and pandas (``pip install tokenlane[notebook]``). Estimates are computed in Python in
bulk; the replay itself runs in C++ with no Python in the loop.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

PRIORITIES = ("interactive", "standard", "batch")
OUTCOMES = ("completed", "rejected", "unfinished")
DECISIONS = ("admit", "queue", "defer", "reject")

# SLA of a request that carries no deadline: arrival + base + factor × its expected unloaded service
# time (from its estimate, so the scheduler and the metric see the same deadline). Per class:
# interactive, standard, batch.
DEFAULT_SLO = {"interactive": (5.0, 3.0), "standard": (30.0, 10.0), "batch": (86400.0, 0.0)}
# Service model defaults: a hosted API serving a small model (time to first token, time per output
# token, prefill time per input token).
DEFAULT_SERVICE = {"ttft_s": 0.5, "tpot_s": 0.02, "prefill_s_per_token": 0.0}

_ALIASES = {
    "arrival_s": ("arrival_s", "arrival", "arrival_time", "timestamp", "TIMESTAMP", "time", "req_time", "start_time"),
    "input_tokens": ("input_tokens", "ContextTokens", "prompt_tokens", "input_len", "prompt_len", "context_tokens"),
    "output_tokens": ("output_tokens", "GeneratedTokens", "completion_tokens", "output_len", "generated_tokens"),
    "tenant": ("tenant", "client", "client_id", "user", "user_id", "adapter_dir", "tenant_id"),
}


def _deps() -> tuple[Any, Any]:
    try:
        import numpy as np
        import pandas as pd
    except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
        raise ModuleNotFoundError("tokenlane.simulate needs numpy and pandas: pip install 'tokenlane[notebook]'") from exc
    return np, pd


def load_trace(source: Any) -> pd.DataFrame:
    """A trace as a DataFrame with tokenlane's column names, sorted by arrival.

    ``source``: a DataFrame, or a path to a CSV (the Azure LLM inference trace, the multi-tenant
    CSV, any CSV with recognisable columns) or a JSONL file (one request object per line).
    Timestamps may be seconds or date-times; they become seconds since the first arrival.
    """
    np, pd = _deps()
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        path = Path(source)
        if not path.exists():
            raise _core.InvalidArgumentError(f"trace file not found: {path}")
        suffixes = "".join(path.suffixes).lower()
        if ".jsonl" in suffixes or ".ndjson" in suffixes:
            df = pd.read_json(path, lines=True)
        elif ".json" in suffixes:
            df = pd.DataFrame(json.loads(path.read_text()))
        else:
            df = pd.read_csv(path)
    rename = {}
    for name, aliases in _ALIASES.items():
        if name in df.columns:
            continue
        for alias in aliases:
            if alias in df.columns:
                rename[alias] = name
                break
    df = df.rename(columns=rename)
    missing = [c for c in ("arrival_s", "input_tokens", "output_tokens") if c not in df.columns]
    if missing:
        raise _core.InvalidArgumentError(
            f"trace lacks column(s) {', '.join(missing)}; expected arrival_s, input_tokens, output_tokens "
            f"(or the Azure trace's TIMESTAMP, ContextTokens, GeneratedTokens); got {list(df.columns)}"
        )
    arrival = df["arrival_s"]
    if not pd.api.types.is_numeric_dtype(arrival):
        ts = pd.to_datetime(arrival, utc=True, format="mixed")
        arrival = (ts - ts.min()).dt.total_seconds()
    arrival = arrival.astype("float64")
    if arrival.isna().any() or not np.isfinite(arrival.to_numpy()).all():
        raise _core.InvalidArgumentError("trace arrival times must be finite numbers or date-times")
    df["arrival_s"] = arrival - arrival.min() if len(arrival) else arrival
    for col in ("input_tokens", "output_tokens"):
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any() or (values < 0).any():
            raise _core.InvalidArgumentError(f"trace column {col} must hold non-negative integers")
        df[col] = values.astype("int64")
    return df.sort_values("arrival_s", kind="stable").reset_index(drop=True)


@dataclass
class SimulationResult:
    """``summary``: the metrics (dict); ``requests``: one row per request (DataFrame);
    ``config``: the settings of the run."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, path: str | None = None) -> Any:
        """Latency CDF per priority class and queue length over time (needs matplotlib)."""
        return plot(self, path)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<SimulationResult policy={self.config.get('policy')!r} n={s['requests']} "
            f"p50={s['p50_latency_s']:.2f}s p99={s['p99_latency_s']:.2f}s sla={s['sla_attainment']:.3f} "
            f"spend=${s['spend_usd']:.4f} rejected={s['rejected']}>"
        )


def _estimates(df: pd.DataFrame, estimator: Any, model: str, seed: int, noise_sigma: float, p90_ratio: float):
    np, pd = _deps()
    out = df["output_tokens"].to_numpy(dtype=np.float64)
    if estimator is None:
        if "est_output_p50" in df.columns:
            estimator = "trace"
        elif "est_output_tokens" in df.columns:
            estimator = "trace"
        else:
            estimator = "noisy"
    if isinstance(estimator, str):
        if estimator == "oracle":
            p50 = out.copy()
            p90 = out.copy()
        elif estimator == "noisy":
            # Seeded log-normal error around the truth; p90 is the matching upper quantile.
            rng = np.random.default_rng(seed)
            p50 = out * np.exp(rng.normal(0.0, noise_sigma, size=len(out)))
            p90 = p50 * math.exp(1.2815515655446004 * noise_sigma)
        elif estimator == "trace":
            if "est_output_p50" in df.columns:
                p50 = df["est_output_p50"].to_numpy(dtype=np.float64)
                p90 = df["est_output_p90"].to_numpy(dtype=np.float64) if "est_output_p90" in df.columns else p50 * p90_ratio
            elif "est_output_tokens" in df.columns:
                p50 = df["est_output_tokens"].to_numpy(dtype=np.float64)
                p90 = p50 * p90_ratio
            else:
                raise _core.InvalidArgumentError("estimator='trace' needs an est_output_tokens column")
        else:
            raise _core.InvalidArgumentError(
                f"estimator must be 'oracle', 'noisy', 'trace', (p50, p90) arrays, a callable or an "
                f"Estimator, got {estimator!r}"
            )
    elif isinstance(estimator, tuple) and len(estimator) == 2:
        p50 = np.asarray(estimator[0], dtype=np.float64)
        p90 = np.asarray(estimator[1], dtype=np.float64)
    elif hasattr(estimator, "estimate"):
        # A tokenlane Estimator: needs the prompt text. One call per row, done before the replay.
        if "prompt" not in df.columns:
            raise _core.InvalidArgumentError("an Estimator needs a 'prompt' column in the trace")
        ests = [
            estimator.estimate(prompt, model, input_tokens=int(n))
            for prompt, n in zip(df["prompt"], df["input_tokens"], strict=True)
        ]
        p50 = np.array([e.p50 for e in ests], dtype=np.float64)
        p90 = np.array([e.p90 for e in ests], dtype=np.float64)
    elif callable(estimator):
        p50, p90 = estimator(df)
        p50 = np.asarray(p50, dtype=np.float64)
        p90 = np.asarray(p90, dtype=np.float64)
    else:
        raise _core.InvalidArgumentError(f"unsupported estimator {estimator!r}")
    if p50.shape != out.shape or p90.shape != out.shape:
        raise _core.InvalidArgumentError("estimates must have one p50 and one p90 per request")
    if not (np.isfinite(p50).all() and np.isfinite(p90).all()):
        raise _core.InvalidArgumentError("estimates must be finite")
    p50 = np.maximum(1, np.rint(p50)).astype(np.uint64)
    p90 = np.maximum(p50, np.ceil(p90)).astype(np.uint64)
    return p50, p90, estimator if isinstance(estimator, str) else type(estimator).__name__


def _prices(model: str, pricing: Any) -> tuple[int, int]:
    from .pricing import Pricing

    table = pricing if pricing is not None else Pricing.default()
    return (
        table.cost(model, input_tokens=1).total_pico_usd,
        table.cost(model, output_tokens=1).total_pico_usd,
    )


def simulate(
    trace: Any,
    policy: str = "default",
    model: str = "gpt-4o-mini",
    max_concurrency: int | None = 16,
    budget_usd: float | None = None,
    tpm: float | None = None,
    estimator: Any = None,
    *,
    rpm: float | None = None,
    tenant_max_concurrency: int | None = None,
    tenant_tpm: float | None = None,
    tenant_rpm: float | None = None,
    max_queue: int | None = None,
    max_wait_s: float | None = None,
    shed_expired: bool = False,
    budget_window: str = "total",
    service: Mapping[str, float] | None = None,
    slo: Mapping[str, tuple[float, float]] | None = None,
    noise_sigma: float = 0.5,
    p90_ratio: float = 1.9,
    seed: int = 0,
    pricing: Any = None,
    clock_origin_s: float = 0.0,
    fairness_window_s: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
    tail_share: float = 0.5,
    batch_max_defer_s: float = 600.0,
) -> SimulationResult:
    """Replays ``trace`` through a Scheduler with these limits; returns the metrics and per-request rows.

    ``budget_usd`` is a budget per tenant over ``budget_window`` ("total" = the whole replay).
    ``estimator``: None (the trace's estimate columns, else "noisy"), "oracle" (true lengths),
    "noisy" (seeded log-normal error with ``noise_sigma``), "trace", a ``(p50, p90)`` pair of
    arrays, a callable ``f(df) -> (p50, p90)``, or a tokenlane Estimator (needs a ``prompt`` column).
    ``service``: ``ttft_s``, ``tpot_s``, ``prefill_s_per_token`` of the provider model.
    ``slo``: per class ``(base_s, factor)`` for requests without ``deadline_s``/``slo_s``.
    ``shed_expired``: let the scheduler drop queued requests whose deadline passed (off by default
    so latency statistics cover every request). ``progress(done, total)`` is called from a helper
    thread while the replay runs. ``tail_share`` and ``batch_max_defer_s`` are the Scheduler's
    options of the same names (the default policy's tail bound, the deferred lane's limit).
    """
    np, pd = _deps()
    from .scheduler import POLICIES, WINDOWS

    if policy not in POLICIES:
        raise _core.InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if budget_window not in WINDOWS:
        raise _core.InvalidArgumentError(f"budget_window must be one of {', '.join(WINDOWS)}")
    df = load_trace(trace)
    n = len(df)
    svc = dict(DEFAULT_SERVICE)
    svc.update(service or {})
    slo_rules = dict(DEFAULT_SLO)
    slo_rules.update(slo or {})

    if "tenant" in df.columns:
        tenant_codes, uniques = pd.factorize(df["tenant"], sort=True)
        if (tenant_codes < 0).any():
            raise _core.InvalidArgumentError("trace column tenant has missing values")
        tenant_names = [str(t) for t in uniques]
        if len(set(tenant_names)) != len(tenant_names):  # e.g. 1 and "1": merge by name
            tenant_codes, uniques = pd.factorize(df["tenant"].astype(str), sort=True)
            tenant_names = [str(t) for t in uniques]
    else:
        tenant_codes, tenant_names = np.zeros(n, dtype=np.int64), ["default"]
    if "priority" in df.columns:
        # One pass over the column (a million strings): its distinct values, then a lookup.
        codes, uniques = pd.factorize(df["priority"].fillna("standard"))
        bad = sorted(str(v) for v in set(uniques) - set(PRIORITIES))
        if bad:
            raise _core.InvalidArgumentError(f"unknown priority value(s) {bad}; expected {PRIORITIES}")
        prio_codes = np.array([PRIORITIES.index(v) for v in uniques], dtype=np.uint8)[codes]
    else:
        prio_codes = np.ones(n, dtype=np.uint8)

    p50, p90, est_name = _estimates(df, estimator, model, seed, noise_sigma, p90_ratio)
    arrival = df["arrival_s"].to_numpy(dtype=np.float64)
    inp = df["input_tokens"].to_numpy(dtype=np.uint64)
    expected = svc["ttft_s"] + svc["prefill_s_per_token"] * inp + svc["tpot_s"] * p50.astype(np.float64)
    base = np.array([slo_rules[p][0] for p in PRIORITIES])[prio_codes]
    factor = np.array([slo_rules[p][1] for p in PRIORITIES])[prio_codes]
    deadline = arrival + base + factor * expected
    if "slo_s" in df.columns:
        rel = pd.to_numeric(df["slo_s"], errors="coerce").to_numpy(dtype=np.float64)
        deadline = np.where(np.isnan(rel), deadline, arrival + rel)
    if "deadline_s" in df.columns:
        given = pd.to_numeric(df["deadline_s"], errors="coerce").to_numpy(dtype=np.float64)
        deadline = np.where(np.isnan(given), deadline, given)

    in_price, out_price = _prices(model, pricing)
    budget_pico = None if budget_usd is None else int(round(float(budget_usd) * 10**12))
    handle = _core.SimProgress()
    kwargs = dict(
        policy=policy,
        max_concurrency=max_concurrency,
        tenant_max_concurrency=tenant_max_concurrency,
        tpm=tpm,
        rpm=rpm,
        tenant_tpm=tenant_tpm,
        tenant_rpm=tenant_rpm,
        max_queue=max_queue,
        max_wait_s=max_wait_s,
        shed_expired=shed_expired,
        class_slo_s=(120.0, 600.0, 86400.0),  # unused: every request carries a deadline
        ttft_s=float(svc["ttft_s"]),
        prefill_s_per_token=float(svc["prefill_s_per_token"]),
        tpot_s=float(svc["tpot_s"]),
        model=model,
        input_price_pico=in_price,
        output_price_pico=out_price,
        budget_pico=budget_pico,
        budget_window=budget_window,
        clock_origin_s=float(clock_origin_s),
        fairness_window_s=float(fairness_window_s),
        progress=handle,
        tail_share=float(tail_share),
        batch_max_defer_s=float(batch_max_defer_s),
    )
    args = (arrival, inp, df["output_tokens"].to_numpy(dtype=np.uint64), p50, p90,
            np.asarray(tenant_codes, dtype=np.uint32), tenant_names, prio_codes, deadline)
    if progress is None:
        raw = _core.simulate(*args, **kwargs)
    else:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["raw"] = _core.simulate(*args, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="tokenlane-simulate")
        worker.start()
        last = -1
        while worker.is_alive():
            worker.join(0.1)
            done = min(int(handle.done), n - 1)  # n is reported once, after the replay
            if done != last:
                progress(done, n)
                last = done
        progress(n, n)
        if "error" in box:
            raise box["error"]
        raw = box["raw"]

    requests = _requests_frame(df, raw, p50, p90, deadline, prio_codes, tenant_codes, tenant_names)
    # What admission reserved (the p90 cost): the budget invariant's error term is actual − reserved.
    requests["reserved_pico_usd"] = inp.astype(np.int64) * in_price + p90.astype(np.int64) * out_price
    config = dict(policy=policy, model=model, max_concurrency=max_concurrency, budget_usd=budget_usd, tpm=tpm,
                  rpm=rpm, estimator=est_name, budget_window=budget_window, service=svc, slo=slo_rules,
                  shed_expired=shed_expired, seed=seed)
    summary = _summary(requests, raw, prio_codes, tenant_codes, budget_usd, budget_window, clock_origin_s)
    return SimulationResult(summary=summary, requests=requests, config=config)


def _requests_frame(df, raw, p50, p90, deadline, prio_codes, tenant_codes, tenant_names):
    np, pd = _deps()
    arrival = df["arrival_s"].to_numpy(dtype=np.float64)
    start, end = raw["start_s"], raw["end_s"]
    outcome = raw["outcome"]
    completed = outcome == 0
    latency = np.where(completed, end - arrival, np.nan)
    frame = pd.DataFrame({
        "arrival_s": arrival,
        "tenant": pd.Categorical.from_codes(np.asarray(tenant_codes, dtype=np.int64), categories=tenant_names),
        "priority": pd.Categorical.from_codes(prio_codes.astype(np.int64), categories=list(PRIORITIES)),
        "input_tokens": df["input_tokens"].to_numpy(),
        "output_tokens": df["output_tokens"].to_numpy(),
        "est_output_p50": p50,
        "est_output_p90": p90,
        "deadline_s": deadline,
        "decision": pd.Categorical.from_codes(raw["first_decision"].astype(np.int64), categories=list(DECISIONS)),
        "outcome": pd.Categorical.from_codes(outcome.astype(np.int64), categories=list(OUTCOMES)),
        "reason": pd.Categorical.from_codes(raw["reason_code"].astype(np.int64), categories=raw["reason_names"])
        if raw["reason_names"] else pd.Categorical([""] * len(arrival)),
        "deferred": raw["deferred"].astype(bool),
        "start_s": start,
        "end_s": end,
        "latency_s": latency,
        "queue_s": np.where(np.isnan(start), np.nan, start - arrival),
        "cost_usd": raw["cost_pico"] / 1e12,
        "cost_pico_usd": raw["cost_pico"],
    })
    frame["sla_met"] = completed & (end <= deadline + 1e-9)
    return frame


def _window_index(times, window: str, origin: float):
    np, pd = _deps()
    t = times + origin
    if window == "total":
        return np.zeros(len(t), dtype=np.int64)
    if window == "hour":
        return np.floor(t / 3600).astype(np.int64)
    if window == "day":
        return np.floor(t / 86400).astype(np.int64)
    ts = pd.to_datetime(t, unit="s", utc=True)
    return (ts.year * 12 + ts.month).to_numpy(dtype=np.int64)


def _pcts(values, qs):
    """Percentiles ``qs`` of ``values`` from one partition of the array (NaN when it is empty)."""
    np, _ = _deps()
    if not len(values):
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(values, qs)]


def _summary(req, raw, prio_codes, tenant_codes, budget_usd, budget_window, origin) -> dict[str, Any]:
    # From the raw arrays (categorical comparisons on a million rows would dominate the run).
    np, pd = _deps()
    n = len(req)
    outcome = raw["outcome"]
    done = outcome == 0
    arrival = req["arrival_s"].to_numpy()
    end = raw["end_s"]
    lat_all = end - arrival
    lat = lat_all[done]
    queue = (raw["start_s"] - arrival)[done]
    met = req["sla_met"].to_numpy()
    tokens = (req["input_tokens"].to_numpy() + req["output_tokens"].to_numpy()).astype(np.float64)
    cost = raw["cost_pico"]
    spend_pico = int(cost[done].sum())
    makespan = raw["makespan_s"]
    overshoot = bound = 0.0
    if budget_usd is not None and done.any():
        w = _window_index(end[done], budget_window, origin)
        key = np.asarray(tenant_codes, dtype=np.int64)[done] * (1 << 32) + (w - w.min())
        _, inverse = np.unique(key, return_inverse=True)
        per = np.bincount(inverse, weights=cost[done].astype(np.float64))
        overshoot = float(np.maximum(0.0, per - budget_usd * 1e12).sum()) / 1e12
        # The invariant's bound: what completed requests cost beyond their p90 reservation.
        excess = np.maximum(0, cost[done] - req["reserved_pico_usd"].to_numpy()[done]).astype(np.float64)
        bound = float(np.bincount(inverse, weights=excess).sum()) / 1e12
    lat_p50, lat_p95, lat_p99 = _pcts(lat, [50, 95, 99])
    queue_p50, queue_p95, queue_p99 = _pcts(queue, [50, 95, 99])
    s: dict[str, Any] = {
        "requests": n,
        "completed": int(done.sum()),
        "rejected": int((outcome == 1).sum()),
        "unfinished": int((outcome == 2).sum()),
        "deferred": int(raw["deferred"].sum()),
        "p50_latency_s": lat_p50,
        "p95_latency_s": lat_p95,
        "p99_latency_s": lat_p99,
        "mean_latency_s": float(lat.mean()) if len(lat) else float("nan"),
        "p50_queue_s": queue_p50,
        "p95_queue_s": queue_p95,
        "p99_queue_s": queue_p99,
        "throughput_rps": float(done.sum() / makespan) if makespan > 0 else float("nan"),
        "spend_usd": spend_pico / 1e12,
        "budget_overshoot_usd": overshoot,
        "budget_overshoot_bound_usd": bound,
        "sla_attainment": float(met.mean()) if n else float("nan"),
        "jain_fairness": float(raw["jain_fairness"]),
        "max_service_gap_tokens": float(raw["max_service_gap"]),
        "fairness_windows": int(raw["fairness_windows"]),
        "token_utilization_efficiency": float(tokens[met].sum() / tokens[done].sum()) if done.any() else float("nan"),
        "cost_per_sla_met_usd": spend_pico / 1e12 / int(met.sum()) if met.any() else float("nan"),
        "makespan_s": float(makespan),
    }
    for code, cls in enumerate(PRIORITIES):
        mask = prio_codes == code
        if not mask.any():
            continue
        s[f"sla_attainment_{cls}"] = float(met[mask].mean())
        s[f"p50_latency_{cls}_s"], s[f"p99_latency_{cls}_s"] = _pcts(lat_all[mask & done], [50, 99])
    return s


def plot(result: SimulationResult, path: str | None = None) -> Any:
    """Latency CDF per priority class and the number of waiting requests over time.

    Returns the matplotlib Figure; writes it to ``path`` when given. Needs matplotlib."""
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("plotting needs matplotlib: pip install matplotlib") from exc
    np, _ = _deps()
    req = result.requests
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for cls in PRIORITIES:
        lat = np.sort(req.loc[(req["priority"] == cls) & (req["outcome"] == "completed"), "latency_s"].to_numpy())
        if len(lat):
            ax1.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=cls)
    ax1.set_xscale("log")
    ax1.set_xlabel("latency (s, arrival to completion)")
    ax1.set_ylabel("share of requests")
    ax1.legend()
    ax1.set_title(f"policy {result.config.get('policy')}")
    starts = req["start_s"].fillna(req["end_s"]).fillna(req["arrival_s"].max()).to_numpy()
    times = np.concatenate([req["arrival_s"].to_numpy(), starts])
    steps = np.concatenate([np.ones(len(req)), -np.ones(len(req))])
    order = np.argsort(times, kind="stable")
    ax2.step(times[order], np.cumsum(steps[order]), where="post")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("requests waiting")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
