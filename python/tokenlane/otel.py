"""OpenTelemetry spans and metrics for every reconciled request, named after the GenAI semantic
conventions (``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.client.token.usage``…).

Off unless configured (``otel=True``, env ``TOKENLANE_OTEL``, or providers passed to
``Tokenlane(tracer_provider=..., meter_provider=...)``); needs ``pip install tokenlane[otel]``.
Without providers the global ones are used, so an app set up with the OpenTelemetry SDK (or
``opentelemetry-instrument``) gets tokenlane's telemetry beside its own. When nothing is set up
globally and ``OTEL_EXPORTER_OTLP_ENDPOINT`` names a collector, tokenlane exports there over
OTLP/HTTP itself (``pip install tokenlane[otlp]``).

Spans are written when the request is reconciled, with the real start and end times of each step:

    chat gpt-4o-mini           (arrival → reconciled; kind CLIENT; gen_ai.* attributes)
    ├── tokenlane.queue        (arrival → admitted)
    ├── tokenlane.upstream     (admitted → response complete)
    └── tokenlane.reconcile    (response complete → ledger row written)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# gen_ai.client.token.usage buckets (powers of 4 up to 67,108,864) and operation-duration buckets.
TOKEN_BUCKETS = [float(4**i) for i in range(14)]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]


@dataclass
class RequestTrace:
    """What one reconciled request did, in plain values (seconds since the epoch for times)."""

    request_id: str
    operation: str                   # gen_ai.operation.name: chat | text_completion | embeddings
    provider: str                    # gen_ai.provider.name: openai | anthropic | …
    model: str
    tenant: str
    route: str
    arrival: float
    admitted: float | None
    completed: float
    reconciled: float
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    max_tokens: int | None = None
    response_model: str | None = None
    cost_usd: float = 0.0
    error: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


def _otlp_providers() -> tuple[Any, Any]:
    """SDK providers exporting over OTLP/HTTP to the ``OTEL_EXPORTER_OTLP_*`` endpoint."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError("OTEL_EXPORTER_OTLP_ENDPOINT is set: tokenlane exports over OTLP/HTTP with "
                          "`pip install tokenlane[otlp]`") from exc
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tokenlane")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(resource=resource,
                                   metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    return tracer_provider, meter_provider


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Telemetry:
    """Creates the spans and metrics of reconciled requests on the given (or global) providers."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("tokenlane's OpenTelemetry support needs `pip install tokenlane[otel]`") from exc
        self._own: tuple[Any, ...] = ()
        if tracer_provider is None and meter_provider is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") \
                and isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            # Nothing set up globally but an OTLP endpoint named: export there ourselves.
            tracer_provider, meter_provider = self._own = _otlp_providers()
        self._trace = trace
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("tokenlane")
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("tokenlane")
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request, by gen_ai.token.type",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Arrival to response complete",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.queue = meter.create_histogram(
            "tokenlane.queue.duration", unit="s", description="Arrival to admission",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        # No GenAI convention names cost yet; peers use their own namespace too.
        self.cost = meter.create_counter("tokenlane.cost", unit="USD", description="Actual cost of requests")

    def shutdown(self) -> None:
        """Flushes and closes the OTLP providers tokenlane set up itself (not the app's)."""
        for provider in self._own:
            provider.shutdown()

    def record(self, r: RequestTrace) -> None:
        trace = self._trace
        base = {"gen_ai.operation.name": r.operation, "gen_ai.provider.name": r.provider,
                "gen_ai.request.model": r.model}
        if r.error:
            base["error.type"] = r.error.split(":", 1)[0][:64]
        attributes: dict[str, Any] = {
            **base, "gen_ai.usage.input_tokens": r.input_tokens, "gen_ai.usage.output_tokens": r.output_tokens,
            "tokenlane.request_id": r.request_id, "tokenlane.tenant": r.tenant, "tokenlane.route": r.route,
            "tokenlane.cost_usd": r.cost_usd,
        }
        if r.cached_input_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = r.cached_input_tokens
        if r.cache_creation_input_tokens:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = r.cache_creation_input_tokens
        if r.max_tokens:
            attributes["gen_ai.request.max_tokens"] = r.max_tokens
        if r.response_model:
            attributes["gen_ai.response.model"] = r.response_model
        for key, value in r.tags.items():
            attributes[f"tokenlane.tag.{key}"] = value
        span = self.tracer.start_span(f"{r.operation} {r.model}", kind=trace.SpanKind.CLIENT,
                                      start_time=_ns(r.arrival), attributes=attributes)
        if r.error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, r.error[:200]))
        context = trace.set_span_in_context(span)
        admitted = r.admitted if r.admitted is not None else r.arrival
        for name, start, end in (("tokenlane.queue", r.arrival, admitted),
                                 ("tokenlane.upstream", admitted, r.completed),
                                 ("tokenlane.reconcile", r.completed, r.reconciled)):
            child = self.tracer.start_span(name, context=context, start_time=_ns(start))
            child.end(end_time=_ns(max(start, end)))
        span.end(end_time=_ns(max(r.arrival, r.reconciled)))

        self.token_usage.record(r.input_tokens, {**base, "gen_ai.token.type": "input"})
        self.token_usage.record(r.output_tokens, {**base, "gen_ai.token.type": "output"})
        self.duration.record(max(0.0, r.completed - r.arrival), base)
        if r.admitted is not None:
            self.queue.record(max(0.0, r.admitted - r.arrival), {"gen_ai.request.model": r.model})
        if r.cost_usd:
            self.cost.add(r.cost_usd, base)  # tenants stay on spans: unbounded metric labels are costly


__all__ = ["RequestTrace", "Telemetry"]
