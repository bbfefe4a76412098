"""Reports and KPIs over a real ledger file, grouped by day, model, tenant and tags, through the
Python API and ``tokenlane report`` (table, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from tokenlane import Ledger
from tokenlane.cli import main
from tokenlane.reports import ReportError, report, summary
from tokenlane.sidecar import open_sidecar
from tokenlane.tags import TagError, TagStore, merge_tags, parse_tags

USD = 10**12
NOW = 1_764_806_400.0  # 2025-12-04 00:00 UTC


@pytest.fixture()
def ledger_path(ledger_url):
    """The ledger's file or (TOKENLANE_TEST_STORE=postgres) URL, with the rows of a few requests."""
    path = ledger_url
    led = Ledger(path)
    sidecar = open_sidecar(path)
    tags = TagStore(sidecar)
    rows = [
        # id, tenant, model, status, reason, cost USD, est USD, in, out, queue ms, latency s, tags
        ("a", "acme", "gpt-4o", "succeeded", None, 0.02, 0.01, 1000, 200, 5.0, 1.0, {"feature": "search"}),
        ("b", "acme", "gpt-4o", "succeeded", None, 0.02, 0.02, 1000, 200, 15.0, 3.0, {"feature": "search"}),
        ("c", "acme", "gpt-4o-mini", "succeeded", None, 0.001, 0.001, 500, 100, 0.0, 0.5, {"feature": "chat"}),
        ("d", "beta", "gpt-4o-mini", "rejected", "budget_exceeded", None, 0.001, None, None, None, None, {}),
        ("e", "beta", "gpt-4o-mini", "succeeded", None, 0.003, 0.003, 300, 300, 1.0, 2.0, {"feature": "chat", "team": "growth"}),
    ]
    for i, (rid, tenant, model, status, reason, cost, est, inp, out, queue, latency, tg) in enumerate(rows):
        created = NOW + i
        led.insert_request({"id": rid, "tenant": tenant, "model": model, "route": "/v1/chat/completions",
                            "status": status, "reason": reason, "created_at": created,
                            "est_cost_pico_usd": int(est * USD)})
        if status == "succeeded":
            led.update_request(rid, input_tokens=inp, output_tokens=out, cost_pico_usd=int(cost * USD),
                               queue_ms=queue, finished_at=created + latency, cached_input_tokens=0)
        tags.record(rid, tg)
    led.set_budget("acme", 1 * USD, "total", now=NOW, limit_tokens=10_000)
    led.settle("acme", 0, int(0.041 * USD), NOW, actual_tokens=3_000)  # the three acme rows' usage
    led.close()
    sidecar.close()
    return path


def test_report_by_tag_has_the_kpis(ledger_path):
    rows = {r["tag:feature"]: r for r in report(ledger_path, "tag:feature")}
    assert set(rows) == {"search", "chat", "(none)"}
    search = rows["search"]
    assert search["requests"] == 2 and search["cost_usd"] == pytest.approx(0.04)
    assert search["cost_per_1k_requests_usd"] == pytest.approx(20.0)
    assert search["avg_input_tokens"] == 1000 and search["avg_output_tokens"] == 200
    assert search["p95_latency_ms"] == pytest.approx(3000.0) and search["p95_queue_ms"] == 15.0
    assert search["estimate_error"] == pytest.approx(0.04 / 0.03 - 1)
    assert search["share_of_requests"] == pytest.approx(0.4)
    assert rows["(none)"]["refused"] == 1 and rows["(none)"]["refusal_rate"] == 1.0
    assert [r["tag:team"] for r in report(ledger_path, "tag:team")] == ["(none)", "growth"]  # by cost


def test_report_groupings_and_filters(ledger_path):
    by_model = report(ledger_path, "model")
    assert [r["model"] for r in by_model] == ["gpt-4o", "gpt-4o-mini"]  # most expensive first
    assert [r["day"] for r in report(ledger_path, "day")] == ["2025-12-04"]
    assert [r["tenant"] for r in report(ledger_path, "tenant", tenant="beta")] == ["beta"]
    assert report(ledger_path, "model", since=NOW + 100) == []
    with pytest.raises(ReportError):
        report(ledger_path, "tag:no spaces")
    with pytest.raises(ReportError):
        report(ledger_path, "colour")


def test_summary_has_refusals_and_budgets(ledger_path):
    s = summary(ledger_path)
    assert s["requests"] == 5 and s["refusals_by_reason"] == {"budget_exceeded": 1}
    assert s["refusal_rate"] == pytest.approx(0.2)
    [budget] = s["budgets"]
    assert budget["principal"] == "acme" and budget["limit_usd"] == 1.0
    assert (budget["spent_tokens"], budget["limit_tokens"], budget["spent_tokens_fraction"]) == (3_000, 10_000, 0.3)


def test_cli_report_table_csv_json(ledger_path, capsys):
    assert main(["report", "--db", ledger_path, "--by", "tag:feature", "--since", "2025-12-01"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[0] == "tag:feature" and "search" in table
    # Below the table: each budget, spend against its limits in USD and in tokens.
    assert re.search(r"acme\s+total\s+\$0\.041 of \$1\s+3,000 of 10,000 tokens", table), table
    assert main(["report", "--db", ledger_path, "--by", "model", "--since", "2025-12-01", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in rows] == ["gpt-4o", "gpt-4o-mini"]
    assert float(rows[0]["cost_usd"]) == pytest.approx(0.04)
    assert main(["report", "--db", ledger_path, "--by", "tenant", "--since", "2025-12-01", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["tenant"] for r in data["rows"]} == {"acme", "beta"}
    assert data["summary"]["requests"] == 5
    # The same numbers as the Python API (and so as the app's reports page).
    assert data["rows"] == report(ledger_path, "tenant", since=data["since"])


def test_cli_report_errors_are_clear(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no ledger" in capsys.readouterr().err
    assert main(["report", "--db", str(tmp_path / "missing.db"), "--since", "yesterday"]) == 2


def test_tag_header_parsing():
    assert parse_tags("feature=search, team=growth") == {"feature": "search", "team": "growth"}
    assert parse_tags("") == {}
    for bad in ("feature", "=x", "a b=c", "k=" + "v" * 200, ",".join(f"k{i}=v" for i in range(20))):
        with pytest.raises(TagError):
            parse_tags(bad)
    assert merge_tags({"feature": "x", "team": "a"}, None, {"feature": "y"}) == {"feature": "y", "team": "a"}
