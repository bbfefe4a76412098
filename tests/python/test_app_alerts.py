"""Example app: budget alerts show as a banner on the user's dashboard and in the admins' list."""

from __future__ import annotations

import re
import time

from app_support import Client, make_app

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi briefly"}], "max_tokens": 30}


def test_budget_alert_banner_for_the_user_and_list_for_admins(tmp_path):
    app = make_app(tmp_path)
    tl = app.state.tl
    with Client(app) as c:
        c.register("ada@example.com")
        page = c.form("/keys", {"name": "laptop"})
        key = re.search(r'data-testid="new-key">([^<]+)<', page.text).group(1)
        auth = {"Authorization": f"Bearer {key}"}
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
