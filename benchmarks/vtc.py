"""The VTC paper's real 27-client trace and its published result files, measured the same way as
tokenlane's replays (imported by benchmarks/scheduling.py; nothing here is committed data).

Data (../shared/data/traces/vtc, from the VTC artifact, Apache-2.0): ``real_trace.pkl`` (1,500
requests of 27 Chatbot Arena clients over 600 s, lengths in LLaMA tokens) and
``results/<scheduler>/all_results_real.jsonl`` (each request's latency and time to first token when
S-LoRA served the trace on one A10G under FCFS, LCF, VTC, the rate-limit baselines, ...).

VTC's measures, computed by one function for the published runs and for tokenlane's replays:

  service gap   per 60 s window, the largest difference in service received (VTC's cost:
                1 x input + 2 x output tokens; input counted at the first token, output spread
                evenly from the first token to the end) between two clients that were backlogged
                for the whole window (a request of theirs waiting for its first token >= 90% of
                it); max and mean over the windows with >= 2 backlogged clients
  response time per client, pooled over light clients (demand below the equal 1/27 share) and
                heavy ones
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

WINDOW_S = 60.0
BACKLOG_SHARE = 0.9


class _TraceRequest:
    """Stands in for the artifact's ``trace.Request`` (plain attributes, no behaviour)."""


class _Unpickler(pickle.Unpickler):
    # The pickle names one class; everything else is refused, so loading it runs no foreign code.
    def find_class(self, module: str, name: str):
        if (module, name) == ("trace", "Request"):
            return _TraceRequest
        raise pickle.UnpicklingError(f"real_trace.pkl: refusing global {module}.{name}")


def client_name(adapter_dir: str) -> str:
    return "client" + adapter_dir.rsplit("-", 1)[-1].zfill(2)


def load_trace(directory: Path) -> pd.DataFrame:
    with open(directory / "real_trace.pkl", "rb") as f:
        _adapters, requests = _Unpickler(f).load()
    return pd.DataFrame({
        "arrival_s": [r.req_time for r in requests],
        "input_tokens": [r.prompt_len for r in requests],
        "output_tokens": [r.output_len for r in requests],
        "tenant": [client_name(r.adapter_dir) for r in requests],
    }).sort_values("arrival_s", kind="stable", ignore_index=True)


def load_results(directory: Path) -> dict[str, pd.DataFrame]:
    """Published runs as frames with arrival_s, first_token_s, end_s (NaN when aborted), tokens, tenant."""
    out = {}
    for path in sorted((directory / "results").rglob("all_results_real.jsonl")):
        name = str(path.parent.relative_to(directory / "results"))
        rows = json.loads(path.read_text(encoding="utf-8").splitlines()[0])["result"]["responses"]
        df = pd.DataFrame(rows)
        aborted = df["request_latency"] < 0  # the rate-limit runs mark refused requests with -1
        out[name] = pd.DataFrame({
            "arrival_s": df["req_time"],
            "first_token_s": np.where(aborted, np.nan, df["req_time"] + df["first_token_latency"]),
            "end_s": np.where(aborted, np.nan, df["req_time"] + df["request_latency"]),
            "input_tokens": df["prompt_len"],
            "output_tokens": df["output_len"],
            "tenant": [client_name(a) for a in df["adapter_dir"]],
        })
    return out


def from_simulation(requests: pd.DataFrame, ttft_s: float, prefill_s_per_token: float) -> pd.DataFrame:
    """A tokenlane replay's rows in the published runs' shape (first token = start + prefill)."""
    start = requests["start_s"].to_numpy(dtype=float)
    return pd.DataFrame({
        "arrival_s": requests["arrival_s"].to_numpy(),
        "first_token_s": start + ttft_s + prefill_s_per_token * requests["input_tokens"].to_numpy(),
        "end_s": np.where(requests["outcome"].astype(str) == "completed", requests["end_s"], np.nan),
        "input_tokens": requests["input_tokens"].to_numpy(),
        "output_tokens": requests["output_tokens"].to_numpy(),
        "tenant": requests["tenant"].astype(str).to_numpy(),
    })


def _overlap(a0: np.ndarray, a1: np.ndarray, w0: float, w1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, w1) - np.maximum(a0, w0), 0.0, None)


def _covered(intervals: list[tuple[float, float]], w0: float, w1: float) -> float:
    """Length of [w0, w1) covered by the union of the intervals."""
    total, reach = 0.0, w0
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, w1)
        if b > a:
            total += b - a
            reach = b
    return total


def measures(run: pd.DataFrame, light: set[str]) -> dict:
    served = run["end_s"].notna().to_numpy()
    arrival = run["arrival_s"].to_numpy(dtype=float)
    first = run["first_token_s"].to_numpy(dtype=float)
    end = run["end_s"].to_numpy(dtype=float)
    inp = run["input_tokens"].to_numpy(dtype=float)
    out = run["output_tokens"].to_numpy(dtype=float)
    tenants = run["tenant"].to_numpy()
    names = sorted(set(tenants))
    horizon = float(np.nanmax(end))
    gaps = []
    for w0 in np.arange(0.0, horizon, WINDOW_S):
        w1 = w0 + WINDOW_S
        backlogged = []
        for t in names:
            m = (tenants == t) & served & (arrival < w1) & (first > w0)
            if m.any() and _covered(list(zip(arrival[m], first[m])), w0, w1) >= BACKLOG_SHARE * WINDOW_S:
                backlogged.append(t)
        if len(backlogged) < 2:
            continue
        service = []
        for t in backlogged:
            m = (tenants == t) & served
            s = inp[m][(first[m] >= w0) & (first[m] < w1)].sum()
            span = np.maximum(end[m] - first[m], 1e-9)
            s += 2.0 * (out[m] * _overlap(first[m], end[m], w0, w1) / span).sum()
            service.append(s)
        gaps.append(max(service) - min(service))
    lat = end - arrival
    is_light = np.isin(tenants, list(light))
    per_client = pd.Series(lat[served]).groupby(tenants[served]).median()
    return {
        "served": int(served.sum()),
        "refused": int((~served).sum()),
        "throughput_rps": float(served.sum() / (horizon - arrival.min())),
        "p50_latency_s": float(np.median(lat[served])),
        "p99_latency_s": float(np.percentile(lat[served], 99)),
        "p50_first_token_s": float(np.median((first - arrival)[served])),
        "light_p50_latency_s": float(np.median(lat[served & is_light])),
        "heavy_p50_latency_s": float(np.median(lat[served & ~is_light])),
        "light_clients_median_of_medians_s": float(per_client[per_client.index.isin(list(light))].median()),
        "max_service_gap": float(max(gaps)) if gaps else float("nan"),
        "mean_service_gap": float(np.mean(gaps)) if gaps else float("nan"),
        "gap_windows": len(gaps),
        "per_client_p50_latency_s": {str(k): float(v) for k, v in per_client.items()},
    }


def light_clients(trace: pd.DataFrame) -> set[str]:
    """Clients whose demand (1 x input + 2 x output tokens) is below the equal share."""
    demand = (trace["input_tokens"] + 2 * trace["output_tokens"]).groupby(trace["tenant"]).sum()
    return set(demand[demand < demand.sum() / len(demand)].index)
