"""tokenlane.simulate: trace loading, the replay, metrics, CLI."""

import json

import numpy as np
import pandas as pd
import pytest

import tokenlane
from tokenlane import cli


def trace(n=2_000, rate=20.0, tenants=4, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(1 / rate, n)),
        "input_tokens": rng.integers(50, 2_000, n),
        "output_tokens": rng.integers(1, 800, n),
        "tenant": [f"t{i}" for i in rng.integers(0, tenants, n)],
        "priority": rng.choice(["interactive", "standard", "batch"], n, p=[0.3, 0.6, 0.1]),
    })


def test_summary_has_the_contract_keys_and_sane_values():
    r = tokenlane.simulate(trace(), policy="fifo", model="gpt-4o-mini", max_concurrency=8, estimator="oracle")
    for key in ("p50_latency_s", "p95_latency_s", "p99_latency_s", "throughput_rps", "spend_usd",
                "budget_overshoot_usd", "sla_attainment", "rejected", "deferred", "jain_fairness",
                "p50_queue_s", "max_service_gap_tokens", "token_utilization_efficiency", "cost_per_sla_met_usd"):
        assert key in r.summary
    s = r.summary
    assert s["completed"] == 2_000 and s["rejected"] == 0
    assert 0 < s["p50_latency_s"] <= s["p95_latency_s"] <= s["p99_latency_s"]
    assert 0 <= s["sla_attainment"] <= 1 and 0 < s["jain_fairness"] <= 1
    # Latency is arrival to completion and never below the modelled service time.
    req = r.requests
    service = 0.5 + 0.02 * req["output_tokens"]
    assert (req["latency_s"] >= service - 1e-9).all()
    assert (req["queue_s"] >= 0).all()
    # Spend is exact: the price table's per-token prices times the actual tokens.
    cost = tokenlane.Pricing.default()
    expected = sum(cost.cost("gpt-4o-mini", input_tokens=int(i), output_tokens=int(o)).total_pico_usd
                   for i, o in zip(req["input_tokens"], req["output_tokens"], strict=True))
    assert int(req["cost_pico_usd"].sum()) == expected
    assert s["spend_usd"] == pytest.approx(expected / 1e12)


def test_default_beats_fifo_on_median_latency_under_load():
    t = trace(n=4_000, rate=5.0)  # offered load just above the 40 slots' capacity (~4.7 req/s)
    fifo = tokenlane.simulate(t, policy="fifo", max_concurrency=40, estimator="noisy", seed=3).summary
    best = tokenlane.simulate(t, policy="default", max_concurrency=40, estimator="noisy", seed=3).summary
    assert best["p50_latency_s"] * 2 < fifo["p50_latency_s"]
    assert best["sla_attainment_interactive"] > fifo["sla_attainment_interactive"]
    assert best["completed"] == fifo["completed"] == 4_000


def test_budget_is_never_overshot_beyond_reservation_error():
    t = trace(n=1_000, rate=50.0)
    r = tokenlane.simulate(t, policy="default", max_concurrency=16, budget_usd=0.02, estimator="oracle")
    s = r.summary
    assert s["budget_overshoot_usd"] == 0.0  # oracle estimates: reservations equal actual costs
    per_tenant = r.requests.groupby("tenant", observed=True)["cost_usd"].sum()
    assert (per_tenant <= 0.02 + 1e-12).all()
    assert s["rejected"] + s["unfinished"] > 0  # the budget did bind
    noisy = tokenlane.simulate(t, policy="default", max_concurrency=16, budget_usd=0.02, estimator="noisy").summary
    assert noisy["budget_overshoot_usd"] <= noisy["budget_overshoot_bound_usd"] + 1e-12


def test_fair_policy_improves_fairness_with_a_heavy_tenant():
    rng = np.random.default_rng(5)
    n = 3_000
    heavy = rng.random(n) < 0.8
    t = pd.DataFrame({
        "arrival_s": np.cumsum(rng.exponential(1 / 30, n)),
        "input_tokens": rng.integers(50, 500, n),
        "output_tokens": rng.integers(50, 400, n),
        "tenant": np.where(heavy, "heavy", [f"light{i}" for i in rng.integers(0, 4, n)]),
    })
    fifo = tokenlane.simulate(t, policy="fifo", max_concurrency=8, estimator="oracle").summary
    fair = tokenlane.simulate(t, policy="fair", max_concurrency=8, estimator="oracle").summary
    assert fair["jain_fairness"] > fifo["jain_fairness"]
    assert fair["max_service_gap_tokens"] < fifo["max_service_gap_tokens"]


def test_progress_callback_ends_with_total_once():
    seen = []
    tokenlane.simulate(trace(n=500), max_concurrency=4, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (500, 500)
    assert seen.count((500, 500)) == 1
    assert all(total == 500 and 0 <= done <= 500 for done, total in seen)


def test_estimates_from_trace_column_and_arrays():
    t = trace(n=200)
    t["est_output_tokens"] = t["output_tokens"]
    r = tokenlane.simulate(t, max_concurrency=4)
    assert r.config["estimator"] == "trace"
    assert (r.requests["est_output_p50"] == t["output_tokens"].clip(lower=1)).all()
    p50 = np.full(200, 100)
    r2 = tokenlane.simulate(t, max_concurrency=4, estimator=(p50, p50 * 2))
    assert (r2.requests["est_output_p90"] == 200).all()
    with pytest.raises(ValueError, match="estimator"):
        tokenlane.simulate(t, estimator="psychic")


def test_azure_trace_csv_and_jsonl(tmp_path):
    csv = tmp_path / "azure.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:50.9951690,396,109\n"
                   "2023-11-16 18:15:47.2000000,879,12\n")
    df = tokenlane.load_trace(csv)
    assert list(df["input_tokens"]) == [374, 879, 396]
    assert df["arrival_s"].iloc[0] == 0 and df["arrival_s"].iloc[2] == pytest.approx(4.314578)
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"arrival_s": i, "input_tokens": 10, "output_tokens": 5, "tenant": "a"})
                            for i in range(5)))
    r = tokenlane.simulate(jl, max_concurrency=1, estimator="oracle")
    assert r.summary["completed"] == 5
    with pytest.raises(ValueError, match="arrival_s"):
        tokenlane.load_trace(pd.DataFrame({"x": [1]}))


def test_cli_simulate_prints_a_table(tmp_path, capsys):
    path = tmp_path / "t.csv"
    trace(n=300).to_csv(path, index=False)
    assert cli.main(["simulate", str(path), "--policy", "fifo,default", "--quiet", "--max-concurrency", "4"]) == 0
    out = capsys.readouterr().out
    assert "| metric | fifo | default |" in out and "p50_latency_s" in out
    assert cli.main(["simulate", str(path), "--json", "--quiet"]) == 0
    assert "default" in json.loads(capsys.readouterr().out)
