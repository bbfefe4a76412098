"""Token budgets: a limit in tokens (input + output) beside the USD one, at every level of the
principal hierarchy, over the same windows, reserved in the same all-or-nothing step as USD and
settled to actual usage. Runs on SQLite, and on PostgreSQL (+ Redis) in scripts/test's second pass
(TOKENLANE_TEST_STORE=postgres)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from middleware_app import build_app

from tokenlane import Tokenlane
from tokenlane.config import ConfigError, load_settings
from tokenlane.ledger import Ledger

NOON = 1_796_472_000.0  # 2026-12-05 12:00 UTC
PROMPT = [{"role": "user", "content": "Summarise the history of tea in a few sentences. " + "Context. " * 150}]
BODY = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 200}


def _key_principal(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


@pytest.fixture
def led(ledger_url: str) -> Ledger:
    return Ledger(ledger_url)


# ---- the ledger (both engines) ------------------------------------------------------------------


def test_a_token_limit_refuses_a_reservation_at_any_level_all_or_nothing(led) -> None:
    led.set_budget("team:a/b", None, "day", NOON, limit_tokens=1_000)
    led.set_budget("org:a", 5 * 10**12, "day", NOON)  # USD only: plenty
    chain = ["org:a", "team:a/b", "alice"]
    assert led.reserve_all(chain, 10, NOON, tokens=700) == -1
    assert led.reserve_all(chain, 10, NOON, tokens=301) == 1  # the team's tokens: no room
    # Nothing was taken at the level before the one that refused.
    assert led.get_budget("org:a")["reserved_tokens"] == 700
    assert led.get_budget("org:a")["reserved_pico_usd"] == 10
    assert led.reserve_all(chain, 10, NOON, tokens=300) == -1  # exactly up to the limit
    u = led.usage("team:a/b", NOON)
    assert (u["reserved_tokens"], u["limit_tokens"], u["remaining_tokens"]) == (1_000, 1_000, 0)
    assert u["limit_pico_usd"] is None and u["remaining_pico_usd"] is None


def test_settle_charges_actual_tokens_and_frees_the_reservation(led) -> None:
    led.set_budget("k", 10**12, "day", NOON, limit_tokens=2_000)
    assert led.reserve_all(["k"], 500, NOON, tokens=1_500) == -1
    led.settle_all(["k"], 500, 120, NOON, reserved_tokens=1_500, actual_tokens=400)
    u = led.usage("k", NOON)
    assert (u["spent_tokens"], u["reserved_tokens"], u["remaining_tokens"]) == (400, 0, 1_600)
    assert (u["spent_pico_usd"], u["reserved_pico_usd"]) == (120, 0)
    assert led.reserve_all(["k"], 0, NOON, tokens=1_601) == 0
    assert led.reserve_all(["k"], 0, NOON, tokens=1_600) == -1
    led.release_all(["k"], 0, NOON, reserved_tokens=1_600)
    assert led.usage("k", NOON)["reserved_tokens"] == 0
    kinds = [(e["kind"], e["tokens"]) for e in led.budget_events("k")]
    assert kinds[:4] == [("release", 1_600), ("reserve", 1_600), ("settle", 400), ("reserve", 1_500)]


def test_token_spend_rolls_over_with_the_window_and_survives_a_window_change(led) -> None:
    led.set_budget("k", None, "hour", NOON, limit_tokens=1_000)
    assert led.reserve_all(["k"], 0, NOON, tokens=900) == -1
    led.settle_all(["k"], 0, 0, NOON, reserved_tokens=900, actual_tokens=900)
    assert led.reserve_all(["k"], 0, NOON + 60, tokens=200) == 0  # same hour: 900 used
    assert led.reserve_all(["k"], 0, NOON + 3600, tokens=200) == -1  # the next hour starts at 0
    led.release_all(["k"], 0, NOON + 3600, reserved_tokens=200)
    # A day window counts the settles of the whole day, the previous hour's included.
    led.set_budget("k", None, "day", NOON + 3600, limit_tokens=1_000)
    assert led.usage("k", NOON + 3600)["spent_tokens"] == 900


def test_spend_in_tokens_is_tracked_at_levels_without_a_token_limit(led) -> None:
    led.set_budget("k", 10**12, "day", NOON)
    assert led.reserve_all(["org:x", "k"], 100, NOON, tokens=50) == -1
    led.settle_all(["org:x", "k"], 100, 90, NOON, reserved_tokens=50, actual_tokens=42)
    for level in ("org:x", "k"):
        u = led.usage(level, NOON)
        assert (u["spent_tokens"], u["reserved_tokens"], u["limit_tokens"], u["remaining_tokens"]) == (42, 0, None, None)


def test_a_journal_record_settles_tokens_with_its_hold(led) -> None:
    led.set_budget("k", None, "day", NOON, limit_tokens=10_000)
    assert led.reserve_all(["org:x", "k"], 100, NOON, hold="r1", owner="me:1:1", tokens=3_000) == -1
    record = {"id": "r1", "row": {"id": "r1", "status": "running", "tenant": "k", "created_at": NOON},
              "final": {"status": "succeeded", "finished_at": NOON + 1, "input_tokens": 700, "output_tokens": 50},
              "budgets": ["org:x", "k"], "reserved": 100, "actual": 80, "reserved_tokens": 3_000, "tokens": 750,
              "now": NOON + 1}
    line = (json.dumps(record) + "\n").encode()
    assert led.apply_journal(line) == []
    for level in ("org:x", "k"):
        u = led.usage(level, NOON + 1)
        assert (u["spent_tokens"], u["reserved_tokens"], u["spent_pico_usd"]) == (750, 0, 80)


def test_a_dead_workers_token_reservation_is_given_back(led, ledger_url) -> None:
    led.set_budget("k", None, "day", limit_tokens=5_000)
    now = time.time()
    assert led.reserve_all(["k"], 0, now, hold="dead-1", owner="elsewhere:1:1", tokens=4_000) == -1
    assert led.reserve_all(["k"], 0, now, tokens=2_000) == 0
    if hasattr(led, "expire_holds"):  # PostgreSQL: a lease that nobody renews runs out
        led.lease_s = 0.0
        assert led.expire_holds(now + 60) == 1
    else:  # SQLite: another worker reclaims the dead one's holds
        assert led.reclaim("elsewhere:1:1", now)["released_tokens"] == 4_000
    assert led.usage("k")["reserved_tokens"] == 0
    assert led.reserve_all(["k"], 0, now, tokens=5_000) == -1


def test_token_amounts_are_checked(led) -> None:
    from tokenlane import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="tokens"):
        led.set_budget("k", None, "day", NOON, limit_tokens=-1)
    with pytest.raises(InvalidArgumentError, match="tokens"):
        led.reserve_all(["k"], 0, NOON, tokens=-5)


# ---- settings ----------------------------------------------------------------------------------


def test_token_budget_settings_from_keywords_env_and_toml(tmp_path) -> None:
    path = tmp_path / "tokenlane.toml"
    path.write_text("[tokenlane]\nbudget_tokens = 50000\n[tokenlane.tenant_budgets_tokens]\nacme = 200000\n")
    s = load_settings(path, environ={"TOKENLANE_END_USER_BUDGET_TOKENS": "1000"})
    assert (s.budget_tokens, s.tenant_budgets_tokens, s.end_user_budget_tokens) == (50_000, {"acme": 200_000}, 1_000)
    with pytest.raises(ConfigError, match="budget_tokens"):
        load_settings(environ={"TOKENLANE_BUDGET_TOKENS": "lots"})
    with pytest.raises(ConfigError, match="acme"):
        load_settings(environ={}, tenant_budgets_tokens={"acme": -3})


# ---- the middleware (SQLite, or PostgreSQL + Redis) ------------------------------------------------


def test_a_token_budget_refuses_with_429_naming_the_level_and_the_unit(store) -> None:
    rt = Tokenlane(**store, budget_tokens=1_500)  # every tenant: 1,500 tokens a day, no USD limit
    headers = {"Authorization": "Bearer sk-tokens-1"}
    with TestClient(build_app(rt)) as client:
        replies = [client.post("/v1/chat/completions", json=BODY, headers=headers) for _ in range(6)]
        usage = client.get("/tokenlane/usage", headers=headers).json()
    codes = [r.status_code for r in replies]
    assert codes[0] == 200 and codes[-1] == 429, codes
    error = replies[-1].json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert error["message"].startswith(f"token budget of key '{_key_principal('sk-tokens-1')}' is used up")
    assert "limit 1,500" in error["message"]
    assert int(replies[-1].headers["retry-after"]) >= 1
    rows = rt.ledger.list_requests(limit=100)
    used = sum((r["input_tokens"] or 0) + (r["output_tokens"] or 0) for r in rows)
    assert usage["spent_tokens"] == used <= 1_500
    assert (usage["limit_tokens"], usage["reserved_tokens"]) == (1_500, 0)
    assert usage["remaining_tokens"] == 1_500 - used
    assert usage["limit_usd"] is None



def test_usage_lists_tokens_at_every_level_and_for_end_users(store) -> None:
    rt = Tokenlane(**store, end_user_budget_tokens=100_000)
    uid = rt.ledger.create_user("ann@acme.test")
    rt.ledger.update_user(uid, team="eng", org="acme")
    key_id, key = rt.ledger.create_api_key(uid)
    rt.set_budget("team:acme/eng", None, "month", limit_tokens=1_000_000)
    rt.set_budget("org:acme", "50", "month", limit_tokens=5_000_000)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(build_app(rt)) as client:
        assert client.post("/v1/chat/completions", json={**BODY, "user": "u1"}, headers=headers).status_code == 200
        usage = client.get("/tokenlane/usage", headers=headers).json()
    row, = rt.ledger.list_requests()
    used = row["input_tokens"] + row["output_tokens"]
    levels = {lv["principal"]: lv for lv in usage["levels"]}
    assert levels["team:acme/eng"]["limit_tokens"] == 1_000_000
    assert levels["org:acme"]["limit_tokens"] == 5_000_000 and levels["org:acme"]["limit_usd"] == 50
    assert all(lv["spent_tokens"] == used and lv["reserved_tokens"] == 0 for lv in levels.values())
    end_user, = usage["end_users"]
    assert (end_user["end_user"], end_user["spent_tokens"], end_user["limit_tokens"]) == ("u1", used, 100_000)



def test_an_end_user_token_budget_narrows_inside_the_key(store) -> None:
    rt = Tokenlane(**store, end_user_budget_tokens=900)
    headers = {"Authorization": "Bearer sk-tokens-2"}
    with TestClient(build_app(rt)) as client:
        alice = [client.post("/v1/chat/completions", json={**BODY, "user": "alice"}, headers=headers)
                 for _ in range(3)]
        bob = client.post("/v1/chat/completions", json={**BODY, "user": "bob"}, headers=headers)
    assert alice[0].status_code == 200 and alice[-1].status_code == 429
    assert "token budget of end user" in alice[-1].json()["error"]["message"]
    assert bob.status_code == 200
    assert rt.usage(f"{_key_principal('sk-tokens-2')}/user:alice")["spent_tokens"] <= 900



def test_concurrent_token_spend_never_passes_the_token_budget_in_hard_cap_mode(store) -> None:
    """Hard-cap mode (budget_reserve="max"): every request reserves its prompt plus max_tokens at
    every level, so however many run at once the tokens used never pass the budget; the
    reservations all come back and every level's count equals the rows' tokens."""
    rt = Tokenlane(**store, max_wait_s=30)
    uid = rt.ledger.create_user("cat@acme.test")
    rt.ledger.update_user(uid, team="ops", org="acme")
    keys = [rt.ledger.create_api_key(uid, f"k{i}")[1] for i in range(3)]
    limit = 6_000
    rt.set_budget("team:acme/ops", None, "day", limit_tokens=limit)
    app = build_app(rt)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def one(i):
                body = {**BODY, "max_tokens": 60 + 40 * (i % 4), "user": f"e{i % 7}"}
                return await client.post("/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {keys[i % 3]}"})
            return await asyncio.gather(*(one(i) for i in range(80)))

    replies = asyncio.run(main())
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 429}, codes
    refused = [r.json()["error"]["message"] for r in replies if r.status_code == 429]
    assert all("token budget of team 'team:acme/ops'" in m for m in refused), refused[:3]
    rows = rt.ledger.list_requests(limit=200)
    assert len(rows) == 80
    used = sum((r["input_tokens"] or 0) + (r["output_tokens"] or 0) for r in rows)
    team = rt.usage("team:acme/ops")
    assert team["spent_tokens"] == used <= limit
    assert team["reserved_tokens"] == 0
    assert rt.usage("org:acme")["spent_tokens"] == used

