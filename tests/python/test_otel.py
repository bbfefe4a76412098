"""OpenTelemetry spans and metrics carry the GenAI semantic-convention names (SDK in-memory exporters)."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenlane.otel import RequestTrace, Telemetry


@pytest.fixture()
def otel():
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield exporter, reader, Telemetry(tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def test_request_spans_and_metrics_use_genai_names(otel):
    exporter, reader, telemetry = otel
    telemetry.record(RequestTrace(
        request_id="req_1", operation="chat", provider="openai", model="gpt-4o-mini", tenant="acme",
        route="/v1/chat/completions", arrival=100.0, admitted=100.25, completed=101.5, reconciled=101.502,
        input_tokens=1200, output_tokens=300, cached_input_tokens=1024, max_tokens=500, cost_usd=0.0004,
        tags={"feature": "search"}))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat gpt-4o-mini", "tokenlane.queue", "tokenlane.upstream", "tokenlane.reconcile"}
    root = spans["chat gpt-4o-mini"]
    assert root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.provider.name"] == "openai"
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert root.attributes["gen_ai.request.max_tokens"] == 500
    assert root.attributes["gen_ai.usage.input_tokens"] == 1200
    assert root.attributes["gen_ai.usage.output_tokens"] == 300
    assert root.attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert root.attributes["tokenlane.tag.feature"] == "search"
    queue = spans["tokenlane.queue"]
    assert queue.parent.span_id == root.context.span_id
    assert (queue.end_time - queue.start_time) == 250_000_000
    assert root.start_time == 100_000_000_000
    points = metric_points(reader)
    usage = {p.attributes["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"]}
    assert usage["input"].sum == 1200 and usage["output"].sum == 300
    assert usage["input"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert points["gen_ai.client.operation.duration"][0].sum == pytest.approx(1.5)
    assert points["tokenlane.cost"][0].value == pytest.approx(0.0004)


def test_failed_request_span_has_error_type(otel):
    exporter, _, telemetry = otel
    telemetry.record(RequestTrace(
        request_id="req_2", operation="chat", provider="openai", model="gpt-4o", tenant="acme", route="/x",
        arrival=1.0, admitted=None, completed=2.0, reconciled=2.0, input_tokens=10, output_tokens=0,
        error="HTTP 502"))
    root = next(s for s in exporter.get_finished_spans() if s.name == "chat gpt-4o")
    assert root.attributes["error.type"] == "HTTP 502"
    assert root.status.status_code.name == "ERROR"


def test_otlp_export_to_a_local_collector_when_nothing_is_set_up(tmp_path, monkeypatch):
    """otel=True, OTEL_EXPORTER_OTLP_ENDPOINT set and no global SDK: spans and metrics reach a real
    local OTLP/HTTP receiver."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from fastapi.testclient import TestClient

    from middleware_app import build_app
    from test_alerts import Receiver
    from test_finops_middleware import wait_for
    from tokenlane import Tokenlane

    with Receiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.rsplit("/", 1)[0])
        rt = Tokenlane(db=str(tmp_path / "otlp.db"), otel=True)
        telemetry = rt.observe.telemetry
        assert telemetry._own, "tokenlane set up its own OTLP providers"
        with TestClient(build_app(rt)) as client:
            r = client.post("/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10})
            assert r.status_code == 200
            wait_for(lambda: rt.ledger.get_request(r.headers["x-tokenlane-request-id"])["status"] == "succeeded")
        telemetry.shutdown()  # flushes the span batch and the metric reader
        wait_for(lambda: len(collector.posts) >= 2)
    bodies = b"".join(body for _, body in collector.posts)
    assert b"gen_ai.usage.input_tokens" in bodies and b"gen_ai.request.model" in bodies
    assert b"gen_ai.client.token.usage" in bodies
