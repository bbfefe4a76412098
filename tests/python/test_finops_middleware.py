"""Issue 14 end to end through the middleware: budget alerts delivered once per threshold to a real
local webhook receiver (with a retry after a failure), tags from the header to the reports and
``tokenlane report``, OpenTelemetry spans and metrics with the GenAI names."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from tokenlane import Tokenlane
from tokenlane.alerts import SIGNATURE_HEADER, verify_signature
from tokenlane.cli import main
from tokenlane.reports import report

from middleware_app import build_app
from test_alerts import Receiver

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "List three colours"}], "max_tokens": 40}


def wait_for(condition, timeout_s: float = 30.0) -> None:
    """Deliveries run in the background: wait (bounded) until they are done."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_budget_alerts_fire_once_per_threshold_to_a_real_webhook(tmp_path, store):
    seen = []
    with Receiver(fail_first=1) as receiver:
        rt = Tokenlane(**store, alert_webhook=receiver.url, alert_webhook_secret="whsec",
                       alert_forecast=False, on_alert=seen.append)
        rt.observe.alerts.backoff_s = 0.01
        with TestClient(build_app(rt)) as client:
            first = client.post("/v1/chat/completions", json={**CHAT, "user": "bob"})
            cost = float(first.headers["x-tokenlane-cost"])
            rt.set_budget("anonymous", cost * 3.2, "day")  # the payer (bob is its end user): spent 31 %
            statuses = [client.post("/v1/chat/completions", json={**CHAT, "user": "bob"}).status_code
                        for _ in range(4)]  # 62 % (0.5 fires), 94 % (0.8 fires), then refused (1.0 fires)
            assert statuses[:2] == [200, 200] and statuses[2:] == [429, 429]
            wait_for(lambda: len(receiver.posts) >= 4 and all(
                r["delivery"] != "pending" for r in rt.observe.alerts.marks.list()))
    bodies = [json.loads(body) for _, body in receiver.posts]
    # The first post failed and was retried before the next: a budget's alerts go out in order.
    thresholds = [b["threshold"] for b in bodies]
    assert thresholds == [0.5, 0.5, 0.8, 1.0]
    halves = [b for b in bodies if b["threshold"] == 0.5]
    assert halves[0]["id"] == halves[1]["id"]
    by_threshold = {b["threshold"]: b for b in bodies}
    for headers, body in receiver.posts:
        assert verify_signature("whsec", body, headers[SIGNATURE_HEADER])
    last = by_threshold[1.0]
    assert last["principal"] == "anonymous" and last["reason"] == "refused" and last["window"] == "day"
    assert last["limit_usd"] == pytest.approx(cost * 3.2) and last["spent_usd"] < last["limit_usd"]
    assert by_threshold[0.8]["spent_usd"] >= 0.8 * by_threshold[0.8]["limit_usd"]
    marks = {m["threshold"]: m for m in rt.observe.alerts.marks.list(principal="anonymous")}
    assert set(marks) == {0.5, 0.8, 1.0}
    assert (marks[0.5]["delivery"], marks[0.5]["attempts"]) == ("delivered", 2)
    assert marks[1.0]["delivery"] == "delivered"
    assert sorted(a.threshold for a in seen) == [0.5, 0.8, 1.0]


def test_switched_off_parts_are_not_built(tmp_path, store):
    rt = Tokenlane(**store, alert_thresholds=[], alert_forecast=False)
    assert rt.observe is None and rt.reconcile.observe is None
    with TestClient(build_app(rt)) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_tags_flow_from_header_to_reports_and_cli(tmp_path, capsys, store):
    db = store["db"]
    rt = Tokenlane(**store)
    with TestClient(build_app(rt)) as client:
        for feature, n in (("search", 3), ("chat", 1)):
            for _ in range(n):
                r = client.post("/v1/chat/completions", json=CHAT,
                                headers={"X-Tokenlane-Tags": f"feature={feature}, team=growth"})
                assert r.status_code == 200, r.text
        client.post("/v1/chat/completions", json=CHAT)  # untagged
        bad = client.post("/v1/chat/completions", json=CHAT, headers={"X-Tokenlane-Tags": "no-equals-sign"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Tokenlane-Tags"
    rows = {r["tag:feature"]: r for r in report(rt.sidecar, "tag:feature")}
    assert (rows["search"]["requests"], rows["chat"]["requests"], rows["(none)"]["requests"]) == (3, 1, 1)
    assert rows["search"]["cost_usd"] > 0
    assert main(["report", "--db", db, "--by", "tag:feature", "--format", "json"]) == 0
    cli = {r["tag:feature"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert cli["search"]["requests"] == 3 and cli["search"]["cost_usd"] == pytest.approx(rows["search"]["cost_usd"])


def test_otel_spans_and_metrics_through_the_middleware(tmp_path, store):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    rt = Tokenlane(**store, tracer_provider=tracer_provider, meter_provider=meter_provider)
    with TestClient(build_app(rt)) as client:
        r = client.post("/v1/chat/completions", json=CHAT, headers={"X-Tokenlane-Tags": "feature=search"})
        usage = r.json()["usage"]
        wait_for(lambda: len(exporter.get_finished_spans()) == 4)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["chat gpt-4o-mini"]
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert root.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert root.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert root.attributes["tokenlane.request_id"] == r.headers["x-tokenlane-request-id"]
    assert root.attributes["tokenlane.tag.feature"] == "search"
    assert {s.parent.span_id for n, s in spans.items() if n != root.name} == {root.context.span_id}
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "tokenlane.cost"} <= names
    tracer_provider.shutdown()
    meter_provider.shutdown()


def test_report_route_gives_the_callers_own_kpis(tmp_path, store):
    rt = Tokenlane(**store)
    with TestClient(build_app(rt)) as client:
        for user, feature in (("ann", "search"), ("ann", "chat"), ("ben", "search")):
            r = client.post("/v1/chat/completions", json=CHAT,
                            headers={"X-Tokenlane-Tags": f"feature={feature}", "Authorization": f"Bearer sk-{user}"})
            assert r.status_code == 200, r.text
        mine = client.get("/tokenlane/report?by=tag:feature&since=1h", headers={"Authorization": "Bearer sk-ann"})
        bad = client.get("/tokenlane/report?by=colour", headers={"Authorization": "Bearer sk-ann"})
        late = client.get("/tokenlane/report?since=yesterday")
    assert mine.status_code == 200, mine.text
    doc = mine.json()
    assert {r["tag:feature"] for r in doc["rows"]} == {"search", "chat"}  # ann's own requests only
    assert doc["summary"]["requests"] == 2 and doc["tenant"].startswith("key:")
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "by")
    assert (late.status_code, late.json()["error"]["param"]) == (400, "since")
