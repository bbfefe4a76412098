"""Example app: budget alerts (a banner for the user, a list for admins) and the KPI table of /reports."""

from __future__ import annotations

import re
import time

from app_support import Client, make_app

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi briefly"}], "max_tokens": 30}


def ada_with_a_key(c: Client) -> str:
    """Registers Ada (logged in afterwards) and returns a new API key of hers."""
    c.register("ada@example.com")
    page = c.form("/keys", {"name": "laptop"})
    return re.search(r'data-testid="new-key">([^<]+)<', page.text).group(1)


def test_budget_alert_banner_for_the_user_and_list_for_admins(tmp_path, monkeypatch):
    # 62 % spent calls for the burn-rate forecast too before 62 % of the day has passed: not this test's
    monkeypatch.setenv("TOKENLANE_ALERT_FORECAST", "false")
    app = make_app(tmp_path)
    tl = app.state.tl
    with Client(app) as c:
        auth = {"Authorization": f"Bearer {ada_with_a_key(c)}"}
        assert 'data-testid="budget-alert"' not in c.get("/dashboard").text
        first = c.http.post("/v1/chat/completions", json=BODY, headers=auth)
        assert first.status_code == 200, first.text
        tl.set_budget("ada@example.com", float(first.headers["x-tokenlane-cost"]) * 1.6, "day")  # 62 % spent
        refused = c.http.post("/v1/chat/completions", json=BODY, headers=auth)
        assert refused.status_code == 429, refused.text
        deadline = time.monotonic() + 30
        while {a["threshold"] for a in tl.alerts("ada@example.com")} != {0.5, 1.0}:
            assert time.monotonic() < deadline, tl.alerts("ada@example.com")
            time.sleep(0.02)
        banner = re.search(r'data-testid="budget-alert">([^<]+)<', c.get("/dashboard").text)
        assert banner and "used up" in banner.group(1)  # the latest alert: the refusal
        c.logout()
        c.login()
        admin = c.get("/admin").text
        listing = admin[admin.index('id="alerts"'):]
        assert listing.count("ada@example.com") == 2 and "50 %" in listing and "100 %" in listing
        assert "refused a request" in listing and "no webhook" in listing


def test_reports_page_kpis_group_by_tag_with_the_cli_numbers(tmp_path):
    app = make_app(tmp_path)
    tl = app.state.tl
    with Client(app) as c:
        key = ada_with_a_key(c)
        for feature in ("search", "search", "summarise"):
            r = c.http.post("/v1/chat/completions", json=BODY,
                            headers={"Authorization": f"Bearer {key}", "X-Tokenlane-Tags": f"feature={feature}"})
            assert r.status_code == 200, r.text
        html = c.get("/reports?days=1&by=tag:feature").text
        table = html[html.index('id="kpis"'):html.index("</section>", html.index('id="kpis"'))]
        assert "KPIs by tag:feature" in table and "<option selected>tag:feature</option>" in html
        rows = {r["tag:feature"]: r for r in tl.report("tag:feature", since=time.time() - 86400)}
        assert rows["search"]["requests"] == 2 and rows["summarise"]["requests"] == 1
        search_row = re.search(r"<tr><td>search</td>(.*?)</tr>", table).group(1)
        assert f"{rows['search']['cost_usd']:.4g}" in search_row  # the same number as tokenlane report
        assert c.get("/reports?by=nonsense").status_code == 200  # an unknown grouping falls back to model
