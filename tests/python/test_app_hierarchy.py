"""Example app: the budget hierarchy. Admins put members in teams and organisations and set
budgets at every level on /admin/teams; users see each key's spend and its end users on /keys."""

from __future__ import annotations

import re

from app_support import Client, make_app

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi briefly"}], "max_tokens": 30}


def _new_key(c: Client, name: str) -> str:
    page = c.form("/keys", {"name": name})
    return re.search(r'data-testid="new-key">([^<]+)<', page.text).group(1)


def test_admin_builds_the_hierarchy_and_budgets_hold_at_the_team_level(tmp_path):
    app = make_app(tmp_path)
    tl = app.state.tl
    led = tl.ledger
    with Client(app) as c:
        c.register("ada@example.com")
        ada_key = _new_key(c, "laptop")
        auth = {"Authorization": f"Bearer {ada_key}"}
        first = c.http.post("/v1/chat/completions", json={**BODY, "user": "customer-1"}, headers=auth)
        assert first.status_code == 200, first.text
        keys = c.get("/keys").text
        assert 'data-testid="key-spend"' in keys and "customer-1" in keys  # the key's spend and end user
        c.logout()

        c.login()
        ada = led.get_user_by_email("ada@example.com")
        assert c.form(f"/admin/users/{ada['id']}", {"action": "team", "org": "Acme", "team": "research"}).status_code == 303
        assert (led.get_user(ada["id"])["org"], led.get_user(ada["id"])["team"]) == ("Acme", "research")
        assert c.form(f"/admin/users/{ada['id']}", {"action": "team", "org": "", "team": "x"}).status_code == 400
        assert c.form(f"/admin/users/{ada['id']}", {"action": "team", "org": "Acme<script>", "team": ""}).status_code == 400
        page = c.get("/admin/teams").text
        assert "Acme" in page and "research" in page and "ada@example.com" in page and "laptop" in page
        # Budgets at every level, through one form; an unknown principal is refused.
        cost = float(first.headers["x-tokenlane-cost"])
        for principal, usd in (("org:Acme", "5"), ("ada@example.com", "4"), (f"apikey:{led.list_api_keys(ada['id'])[0]['id']}", "3"),
                               ("team:Acme/research", f"{cost * 1.5:.12f}")):
            r = c.form("/admin/budgets", {"principal": principal, "limit_usd": usd, "window": "day"})
            assert r.status_code == 303, r.text
            assert led.get_budget(principal)["limit_pico_usd"] > 0
        assert c.form("/admin/budgets", {"principal": "team:Nope/x", "limit_usd": "1", "window": "day"}).status_code == 400
        assert c.form("/admin/budgets", {"principal": "org:Acme", "limit_usd": "1", "window": "week"}).status_code == 400
        page = c.get("/admin/teams").text
        assert "team:Acme/research" in page and "of $" in page  # spend shown against the budget

        # The team's budget is the tightest level: ada's key, her own and the org's have room.
        second = c.http.post("/v1/chat/completions", json={**BODY, "user": "customer-2"}, headers=auth)
        third = c.http.post("/v1/chat/completions", json={**BODY, "user": "customer-3"}, headers=auth)
        statuses = [second.status_code, third.status_code]
        assert 429 in statuses, statuses
        refusal = (second if second.status_code == 429 else third).json()["error"]
        assert refusal["code"] == "insufficient_quota" and "team:Acme/research" in refusal["message"]
        team = tl.usage("team:Acme/research")
        assert team["spent_pico_usd"] <= team["limit_pico_usd"] and team["reserved_pico_usd"] == 0

        # The key's own view through the middleware: every level above it and its end users.
        usage = c.http.get("/tokenlane/usage", headers=auth).json()
        assert [lvl["level"] for lvl in usage["levels"]] == ["org", "team", "tenant", "key"]
        assert {u["end_user"] for u in usage["end_users"]} >= {"customer-1"}


def test_token_budgets_are_set_per_level_by_admins_and_shown_to_users(tmp_path):
    app = make_app(tmp_path)
    tl = app.state.tl
    led = tl.ledger
    with Client(app) as c:
        c.register("bo@example.com")
        key = _new_key(c, "ci")
        auth = {"Authorization": f"Bearer {key}"}
        first = c.http.post("/v1/chat/completions", json=BODY, headers=auth)
        assert first.status_code == 200, first.text
        used = tl.usage("bo@example.com")["spent_tokens"]
        assert used > 0
        c.logout()

        c.login()
        bo = led.get_user_by_email("bo@example.com")
        assert c.form(f"/admin/users/{bo['id']}", {"action": "team", "org": "Beta", "team": "ops"}).status_code == 303
        key_principal = f"apikey:{led.list_api_keys(bo['id'])[0]['id']}"
        # Tokens alone at the team (room for one request's worst case: prompt + max_tokens), tokens
        # and USD at the key.
        room = first.json()["usage"]["prompt_tokens"] + BODY["max_tokens"]
        assert c.form("/admin/budgets", {"principal": "team:Beta/ops", "limit_tokens": str(room),
                                         "window": "day"}).status_code == 303
        assert c.form("/admin/budgets", {"principal": key_principal, "limit_usd": "2", "limit_tokens": "100000",
                                         "window": "month"}).status_code == 303
        team = led.get_budget("team:Beta/ops")
        assert (team["limit_pico_usd"], team["limit_tokens"], team["window"]) == (None, room, "day")
        assert (led.get_budget(key_principal)["limit_tokens"], led.get_budget(key_principal)["window"]) == (100_000, "month")
        assert c.form("/admin/budgets", {"principal": "team:Beta/ops", "limit_tokens": "lots"}).status_code == 400
        assert c.form(f"/admin/users/{bo['id']}", {"action": "budget", "limit_usd": "", "limit_tokens": "",
                                                   "window": "day"}).status_code == 400
        assert c.form(f"/admin/users/{bo['id']}", {"action": "budget", "limit_usd": "", "limit_tokens": "50000",
                                                   "window": "day"}).status_code == 303
        assert led.get_budget("bo@example.com")["limit_tokens"] == 50_000
        page = c.get("/admin/teams").text
        assert f"of {room:,} / day" in page and 'data-testid="tokens-used"' in page
        assert 'value="100000"' in page and 'value="2"' in page  # the form starts from the budget in force
        c.logout()

        # The team's tokens run out: refused with 429 naming the team and the unit.
        replies = [c.http.post("/v1/chat/completions", json=BODY, headers=auth) for _ in range(2)]
        assert [r.status_code for r in replies] == [200, 429]
        error = replies[1].json()["error"]
        assert error["code"] == "insufficient_quota" and error["message"].startswith("token budget of team 'team:Beta/ops'")

        # The user sees tokens used against the budget on the dashboard and per key.
        c.login("bo@example.com", "password-123")
        dashboard = c.get("/dashboard").text
        assert 'data-testid="token-budget"' in dashboard and "of 50,000" in dashboard
        keys = c.get("/keys").text
        assert "of 100,000 / month" in keys
