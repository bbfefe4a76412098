"""Prometheus metrics of one tokenlane runtime (its own registry, served at ``GET /metrics``).

Label names follow the OpenTelemetry GenAI conventions where one applies, with dots written as
underscores as Prometheus requires: ``gen_ai_request_model``, ``gen_ai_token_type``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MODEL = "gen_ai_request_model"

# OTel's gen_ai.client.token.usage buckets: powers of 4 from 1 to 67,108,864.
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tokenlane_requests", "LLM requests by scheduling decision and reason",
                                ["decision", "reason", MODEL], registry=r)
        self.tokens = Counter("tokenlane_tokens", "Tokens used, by type (input includes cached)",
                              ["gen_ai_token_type", MODEL], registry=r)
        self.token_usage = Histogram("gen_ai_client_token_usage", "Tokens per request (OTel GenAI)",
                                     ["gen_ai_token_type", MODEL], buckets=TOKEN_BUCKETS, registry=r)
        self.cost = Counter("tokenlane_cost_usd", "Actual cost in USD", [MODEL], registry=r)
        self.queue_length = Gauge("tokenlane_queue_length", "Requests waiting in the queue", registry=r)
        self.queue_wait = Histogram("tokenlane_queue_wait_seconds", "Time from arrival to admission",
                                    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
                                    registry=r)
        self.estimate_error = Histogram(
            "tokenlane_estimator_log2_error", "log2(actual output tokens / estimated p50)", [MODEL],
            buckets=(-4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4), registry=r)
        # cost levers: response cache, provider prompt cache, caps and trimming
        self.cache = Counter("tokenlane_cache_requests", "Cache outcomes: hit, miss, bypass; kind exact or semantic",
                             ["outcome", "kind", MODEL], registry=r)
        self.cache_saved = Counter("tokenlane_cache_saved_usd", "What cache hits would have cost", [MODEL], registry=r)
        self.cache_similarity = Histogram(
            "tokenlane_cache_semantic_similarity", "Cosine similarity of the nearest cached prompt (the "
            "false-hit guard: mass just above the threshold is where wrong answers come from)", ["served"],
            buckets=(0.5, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0), registry=r)
        self.prompt_cache_saved = Counter("tokenlane_prompt_cache_saved_usd",
                                          "Provider cached-input discount on actual usage", [MODEL], registry=r)
        self.clamped = Counter("tokenlane_max_tokens_clamped", "Requests whose max_tokens a tier cap clamped",
                               ["tier"], registry=r)
        self.trimmed_tokens = Counter("tokenlane_trimmed_input_tokens", "Prompt tokens removed by trimming",
                                      [MODEL], registry=r)
        self.ledger_errors = Counter("tokenlane_ledger_errors",
                                     "Ledger calls that failed (locked, disk full, read-only): retried or gave up",
                                     ["outcome"], registry=r)
        self.p90_covered = Counter("tokenlane_estimator_p90_covered", "Requests whose actual output <= p90",
                                   [MODEL], registry=r)

        self.state_unavailable = Counter(
            "tokenlane_state_unavailable", "Calls to the shared state (Redis) that failed, by state_failure mode",
            ["mode"], registry=r)
        self.state_degraded = Gauge("tokenlane_state_degraded",
                                    "1 while the shared state (Redis) is unreachable", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
