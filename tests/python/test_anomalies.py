"""Anomaly detectors on seeded synthetic streams: quiet on steady traffic, alarm on the change."""

from __future__ import annotations

import random

from tokenlane.anomalies import Anomalies, SpendSettings


def steady(rng: random.Random, seconds: float, rate: float, start: float = 0.0):
    """Poisson arrivals with log-normal request costs and prompt sizes."""
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= start + seconds:
            return
        yield t, rng.lognormvariate(-7, 0.6), int(rng.lognormvariate(7, 0.5))


def test_steady_traffic_raises_nothing():
    rng = random.Random(1)
    detector = Anomalies()
    alarms = [a for t, cost, tokens in steady(rng, 12 * 3600, 0.5)
              for a in detector.observe(["tenant:acme"], t, cost_usd=cost, input_tokens=tokens)]
    assert alarms == []


def test_runaway_loop_is_a_spike_with_its_key():
    rng = random.Random(2)
    detector = Anomalies()
    for t, cost, tokens in steady(rng, 4 * 3600, 0.5):
        assert detector.observe(["tenant:acme", "route:/chat"], t, cost_usd=cost, input_tokens=tokens) == []
    start = 4 * 3600
    found = []
    for j in range(1800):  # a loop re-sending one request twice a second
        found += detector.observe(["tenant:acme", "route:/chat"], start + j / 2, cost_usd=0.001, input_tokens=1000)
    spikes = [a for a in found if a.detector in ("spend_spike", "request_spike")]
    assert {a.key for a in spikes} == {"tenant:acme", "route:/chat"}
    assert all(a.at - start < 600 for a in spikes)
    assert len([a for a in spikes if a.key == "tenant:acme"]) == 1  # once per episode


def test_prompt_template_that_doubles_is_a_tokens_jump():
    rng = random.Random(3)
    detector = Anomalies()
    for t, cost, tokens in steady(rng, 2 * 3600, 0.5):
        detector.observe(["route:/search"], t, cost_usd=cost, input_tokens=tokens)
    found = []
    for t, cost, tokens in steady(rng, 3600, 0.5, start=2 * 3600):
        found += detector.observe(["route:/search"], t, cost_usd=cost, input_tokens=tokens * 2)
    assert [a.detector for a in found if a.detector == "tokens_jump"] == ["tokens_jump"]


def test_new_heavy_principal_is_flagged_against_established_ones():
    rng = random.Random(4)
    detector = Anomalies(spend=SpendSettings())
    streams = [list(steady(rng, 3 * 3600, 0.2)) for _ in range(5)]
    merged = sorted((t, f"tenant:{i}", c, n) for i, s in enumerate(streams) for t, c, n in s)
    for t, key, cost, tokens in merged:
        assert detector.observe([key], t, cost_usd=cost, input_tokens=tokens) == []
    found = []
    t = 3 * 3600
    for j in range(600):
        found += detector.observe(["tenant:new"], t + j, cost_usd=0.01, input_tokens=2000)
    assert [a.detector for a in found][:1] == ["new_principal"]


def test_output_drift_and_rates():
    detector = Anomalies()
    found = []
    for i in range(3000):  # one request every 5 s; the last fifth drifts
        drifted = i >= 2400
        found += detector.observe(["route:/chat"], i * 5.0, cost_usd=0.0, input_tokens=100,
                                  output_tokens=400 if drifted else 100 + i % 7, est_output_tokens=100,
                                  error=drifted and i % 2 == 0, cache_hit=not drifted and i % 4 != 0)
    assert [a for a in found if a.at < 2400 * 5.0] == []
    assert {a.detector for a in found} == {"output_drift", "error_rate", "cache_hit_rate"}
    refusals = Anomalies()
    flagged = [a for i in range(600) for a in refusals.observe(["tenant:x"], float(i), refused=i >= 400 and i % 3 == 0)]
    assert [a.detector for a in flagged] == ["refusal_rate"]
