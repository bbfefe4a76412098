"""Example app: the user and admin screens do what they say, against the runtime and ledger."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest
from app_support import Client, make_app
from examples.app import state as app_state


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def wait_done(c, rid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = c.get(f"/api/requests/{rid}").json()
        if d["done"]:
            return d
        time.sleep(0.05)
    raise AssertionError(f"request {rid} did not finish: {d}")


def submit(c, prompt="Say hello in one sentence", **fields):
    r = c.form("/requests", {"prompt": prompt, "model": "gpt-4o-mini", "priority": "standard", **fields})
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def test_submit_a_prompt_and_see_estimate_actual_and_response(app):
    with Client(app) as c:
        c.register("ada@example.com")
        rid = submit(c, priority="interactive", deadline_s="60", max_tokens="50")
        done = wait_done(c, rid)
        assert done["status"] == "succeeded"
        assert done["est_input_tokens"] > 0 and done["est_cost_pico_usd"] > 0
        assert done["input_tokens"] > 0 and done["output_tokens"] > 0 and done["cost_pico_usd"] > 0
        assert done["response"]
        page = c.get(f"/requests/{rid}").text
        assert "Estimated vs actual" in page and "simulated" in page and done["response"][:20] in page
        row = app.state.tl.ledger.get_request(rid)
        assert row["tenant"] == "ada@example.com" and row["priority"] == "interactive"
        assert row["deadline_s"] is not None


@pytest.mark.parametrize(
    "fields,problem",
    [
        ({"prompt": "  "}, "Write a prompt"),
        ({"model": "gpt-2"}, "offered models"),
        ({"priority": "urgent"}, "Priority must be"),
        ({"deadline_s": "-5"}, "between 1 second"),
        ({"max_tokens": "abc"}, "whole number"),
    ],
)
def test_submit_validates_the_form(app, fields, problem):
    with Client(app) as c:
        c.register("ada@example.com")
        r = c.form("/requests", {"prompt": "hi", "model": "gpt-4o-mini", "priority": "standard", **fields})
        assert r.status_code == 400 and problem in r.text


def test_history_filters(app):
    with Client(app) as c:
        c.register("ada@example.com")
        a = submit(c, "first")
        b = submit(c, "second", model="gpt-4o")
        wait_done(c, a), wait_done(c, b)
        page = c.get("/requests?model=gpt-4o").text
        assert b[:12] in page and a[:12] not in page
        assert a[:12] in c.get("/requests?status=succeeded").text
        assert "No requests match" in c.get("/requests?status=failed").text
        assert "No requests match" in c.get("/requests?since=2001-01-01&until=2001-01-02").text
        assert "is not a date" in c.get("/requests?since=yesterday").text


def test_dashboard_summarises_requests_and_spend(app):
    with Client(app) as c:
        c.register("ada@example.com")
        wait_done(c, submit(c))
        page = c.get("/dashboard").text
        assert "succeeded" in page and "Recent activity" in page and "no budget limit set" in page


def test_api_key_is_shown_once_works_with_the_openai_endpoint_and_can_be_revoked(app):
    with Client(app) as c:
        c.register("ada@example.com")
        r = c.form("/keys", {"name": "laptop"})
        key = re.search(r'data-testid="new-key">([^<]+)<', r.text).group(1)
        assert r.headers["cache-control"] == "no-store"
        listing = c.get("/keys").text
        assert key not in listing and "laptop" in listing
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi briefly"}]}
        ok = c.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] and ok.json()["usage"]["completion_tokens"] > 0
        streamed = c.http.post("/v1/chat/completions", json={**body, "stream": True}, headers={"Authorization": f"Bearer {key}"})
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and any(json.loads(e).get("choices") for e in events[:-1])
        # The key's owner is the identity: the calls are Ada's requests.
        assert c.get("/requests").text.count("gpt-4o-mini") >= 2
        assert c.http.post("/v1/chat/completions", json=body).status_code == 401
        assert c.http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer tl-nope"}).status_code == 401
        key_id = re.search(r'action="/keys/(\d+)/revoke"', listing).group(1)
        assert c.form(f"/keys/{key_id}/revoke").status_code == 303
        assert "revoked" in c.get("/keys").text
        time.sleep(0.01)
        refused = c.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_users_cannot_revoke_someone_elses_key(app):
    with Client(app) as c:
        c.register("ada@example.com")
        c.form("/keys", {"name": "ada"})
        ada_key = re.search(r'action="/keys/(\d+)/revoke"', c.get("/keys").text).group(1)
        c.logout()
        c.register("bob@example.com")
        assert c.form(f"/keys/{ada_key}/revoke").status_code == 404


def test_config_is_read_only_for_users_and_validated_and_recorded_for_admins(app):
    with Client(app) as c:
        c.register("ada@example.com")
        page = c.get("/config").text
        assert "gpt-4o-mini" in page and "Save policy" not in page and "read-only" in page
        c.logout()
        c.login()
        assert c.form("/config", {"section": "policy", "policy": "lottery"}).status_code == 400
        assert "is not a whole number" in c.form("/config", {"section": "limits", "rpm": "lots"}).text
        assert "greater than 0" in c.form("/config", {"section": "limits", "tpm": "-1"}).text
        assert "not an amount" in c.form("/config", {"section": "budget", "limit_usd": "ten", "window": "day"}).text
        assert c.form("/config", {"section": "policy", "policy": "fair"}).status_code == 303
        assert app.state.tl.scheduler.policy == "fair"
        assert c.form("/config", {"section": "limits", "rpm": "600", "max_wait_s": "30"}).status_code == 303
        assert "is not a whole number" in c.form("/config", {"section": "budget", "limit_tokens": "many"}).text
        assert c.form("/config", {"section": "budget", "limit_usd": "2.50", "limit_tokens": "400000",
                                  "window": "month"}).status_code == 303
        assert c.form("/config", {"section": "pricing", "model": "gpt-4o-mini", "input": "0.2"}).status_code == 303
        assert app.state.tl.pricing.entry("gpt-4o-mini")["per_mtok"]["input"] == Decimal("0.2")
        assert "expected a cosine similarity" in c.form("/config", {"section": "levers", "cache": "semantic",
                                                                     "semantic_threshold": "2"}).text
        assert "has no entry in tier_caps" in c.form("/config", {"section": "levers", "cache": "exact",
                                                                  "default_tier": "gold"}).text
        assert c.form("/config", {"section": "levers", "cache": "semantic", "semantic_threshold": "0.97",
                                  "tier_caps": '{"free": {"max_output_tokens": 300}}', "default_tier": "free"}
                      ).status_code == 303
        led = app.state.tl.ledger
        assert app_state.runtime_kwargs(led)["tier_caps"] == {"free": {"max_output_tokens": 300}}
        assert (app_state.runtime_kwargs(led)["cache"], app_state.runtime_kwargs(led)["semantic_threshold"]) == \
            ("semantic", 0.97)
        assert led.get_config("limits")["rpm"] == 600
        assert led.get_config("budget.default") == {"limit_pico_usd": 2_500_000_000_000, "limit_tokens": 400_000,
                                                     "window": "month"}
        assert app_state.runtime_kwargs(led)["budget_tokens"] == 400_000
        history = led.config_history(10)
        assert {h["key"] for h in history} >= {"policy", "limits", "budget.default", "pricing.overrides"}
        assert all(h["actor"] == "root@example.com" for h in history)
        assert "Change history" in c.get("/config").text
        # The default budget is given to new accounts.
        c.logout()
        c.register("new@example.com")
        assert led.get_budget("new@example.com")["limit_pico_usd"] == 2_500_000_000_000
        assert led.get_budget("new@example.com")["limit_tokens"] == 400_000


def test_admin_manages_users(app):
    led = app.state.tl.ledger
    with Client(app) as c:
        c.login()
        assert c.form("/admin/users", {"email": "bob@example.com", "password": "short", "role": "client"}).status_code == 400
        assert c.form("/admin/users", {"email": "bob@example.com", "password": "password-123", "role": "client"}).status_code == 303
        bob = led.get_user_by_email("bob@example.com")
        assert c.form(f"/admin/users/{bob['id']}", {"action": "role", "role": "admin"}).status_code == 303
        assert led.get_user(bob["id"])["role"] == "admin"
        assert c.form(f"/admin/users/{bob['id']}", {"action": "budget", "limit_usd": "1.5", "window": "day"}).status_code == 303
        assert led.get_budget("bob@example.com")["limit_pico_usd"] == 1_500_000_000_000
        assert c.form(f"/admin/users/{bob['id']}", {"action": "budget", "limit_usd": "-1", "window": "day"}).status_code == 400
        assert c.form(f"/admin/users/{bob['id']}", {"action": "disable"}).status_code == 303
        assert led.get_user(bob["id"])["disabled"]
        me = led.get_user_by_email("root@example.com")
        assert "cannot disable your own" in c.form(f"/admin/users/{me['id']}", {"action": "disable"}).text
        assert "cannot remove your own admin" in c.form(f"/admin/users/{me['id']}", {"action": "role", "role": "client"}).text
        assert c.form("/admin/users/99999", {"action": "disable"}).status_code == 404


def test_admin_processes_the_queue_by_hand(app):
    with Client(app) as c:
        c.login()
        assert c.form("/admin/scheduler/mode", {"mode": "manual"}).status_code == 303
        assert app.state.tl.scheduler.paused
        ids = [submit(c, f"prompt {i}") for i in range(4)]
        view = c.get("/admin/api/scheduler").json()
        waiting = [r["id"] for r in view["queue"]] + [r["id"] for r in view["deferred"]]
        assert set(ids) <= set(waiting), view
        page = c.get("/admin/scheduler").text
        assert all(i in page for i in ids)
        assert c.get(f"/api/requests/{ids[0]}").json()["status"] in ("queued", "deferred")
        c.form("/admin/scheduler/process", {"how": "one"})
        c.form("/admin/scheduler/reject", {"id": ids[3]})
        c.form("/admin/scheduler/process", {"how": "batch", "count": "1"})
        c.form("/admin/scheduler/process", {"how": "all"})
        done = [wait_done(c, i)["status"] for i in ids]
        assert done == ["succeeded", "succeeded", "succeeded", "rejected"]
        assert c.get("/admin/api/scheduler").json()["queue"] == []
        assert c.form("/admin/scheduler/mode", {"mode": "automatic"}).status_code == 303
        assert not app.state.tl.scheduler.paused
        assert app.state.tl.ledger.get_config("dispatch.mode") == "automatic"


def test_reports_render_svg_charts_and_export_csv(app):
    with Client(app) as c:
        c.register("ada@example.com")
        for i in range(3):
            wait_done(c, submit(c, f"=HYPERLINK(\"http://x\") question {i}"))
        page = c.get("/reports").text
        svgs = re.findall(r"<svg class=\"chart\".*?</svg>", page, flags=re.S)
        assert len(svgs) == 9  # clients do not get the per-user distribution
        for svg in svgs:
            ET.fromstring(svg)  # well-formed
        assert "<rect" in page and "gpt-4o-mini" in page
        # Nothing is fetched from the internet: every script and stylesheet is served by the app.
        assert all(u.startswith(("/", "http://testserver/")) for u in re.findall(r'(?:src|href)="([^"#]+\.(?:js|css))"', page))
        r = c.get("/reports/requests.csv?days=7")
        assert r.headers["content-type"].startswith("text/csv") and "attachment" in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 3 and all(row["tenant"] == "ada@example.com" for row in rows)
        assert all(float(row["cost_usd"]) > 0 for row in rows)
        # A prompt that looks like a formula is exported as text, not run by a spreadsheet.
        assert all(row["prompt_preview"].startswith("'=HYPERLINK") for row in rows)
        c.logout()
        c.login()
        assert len(re.findall(r"<svg class=\"chart\"", c.get("/reports?days=1").text)) == 10
        assert "ada@example.com" in c.get("/reports?tenant=ada%40example.com").text


def test_per_user_request_limits(app):
    led = app.state.tl.ledger
    with Client(app) as c:
        c.register("ada@example.com")
        ada = led.get_user_by_email("ada@example.com")
        c.logout()
        c.login()
        assert "whole number" in c.form(f"/admin/users/{ada['id']}", {"action": "limits", "rpm": "two"}).text
        assert c.form(f"/admin/users/{ada['id']}", {"action": "limits", "rpm": "2"}).status_code == 303
        assert led.get_config("limits.tenant.ada@example.com") == {"rpm": 2, "rpd": None}
        assert "2/min" in c.get("/admin/users").text
        c.logout()
        c.login("ada@example.com", "password-123")
        submit(c), submit(c)
        r = c.form("/requests", {"prompt": "third", "model": "gpt-4o-mini", "priority": "standard"})
        assert r.status_code == 429 and "2 requests per minute" in r.text
