"""Who pays: the principal hierarchy (organisation → team → member → API key → end user).

A request is charged to every level of its chain and admitted only if all have room (one
reservation, all or nothing); the body's `user` only narrows; unauthenticated traffic is one
`anonymous` principal; GET /tokenlane/usage answers per level."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
from fastapi.testclient import TestClient
from middleware_app import build_app

from tokenlane import Tokenlane

PROMPT = [{"role": "user", "content": "Summarise the history of tea in a few sentences. " + "Context. " * 150}]
BODY = {"model": "gpt-4o", "messages": PROMPT, "max_tokens": 200}


def _key_principal(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def test_rotating_the_user_field_never_mints_budget(tmp_path, store):
    # The reported attack: one bearer key the ledger does not know, budget_usd=0.01, 40 requests
    # each with another `user`. The key pays for all of them, so it is refused past its budget.
    rt = Tokenlane(**store, budget_usd="0.01")
    headers = {"Authorization": "Bearer sk-client-1"}
    with TestClient(build_app(rt)) as client:
        replies = [client.post("/v1/chat/completions", json={**BODY, "user": f"user-{i}"}, headers=headers)
                   for i in range(40)]
        usage = client.get("/tokenlane/usage", headers=headers).json()
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 429}, codes
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in replies if r.status_code == 429)
    rows = rt.ledger.list_requests(limit=100)
    assert {r["tenant"] for r in rows} == {_key_principal("sk-client-1")}
    spent = sum(r["cost_pico_usd"] or 0 for r in rows)
    assert spent > 0 and usage["principal"] == _key_principal("sk-client-1")
    assert usage["spent_pico_usd"] == spent <= 10**10  # the key's budget: $0.01
    assert usage["reserved_pico_usd"] == 0
    served = sum(1 for c in codes if c == 200)
    assert len(usage["end_users"]) == served  # each served end user listed under the key
    assert sum(u["spent_pico_usd"] for u in usage["end_users"]) == spent


def test_an_end_user_budget_narrows_inside_the_key(tmp_path, store):
    rt = Tokenlane(**store, budget_usd="1", end_user_budget_usd="0.003")
    headers = {"Authorization": "Bearer sk-client-2"}
    with TestClient(build_app(rt)) as client:
        alice = [client.post("/v1/chat/completions", json={**BODY, "user": "alice"}, headers=headers).status_code
                 for _ in range(4)]
        bob = client.post("/v1/chat/completions", json={**BODY, "user": "bob"}, headers=headers)
    assert alice[0] == 200 and 429 in alice  # alice's own $0.003 runs out, the key's $1 does not
    assert bob.status_code == 200
    owner = _key_principal("sk-client-2")
    assert rt.usage(f"{owner}/user:alice")["spent_pico_usd"] <= 3 * 10**9
    assert rt.usage(owner)["spent_pico_usd"] == sum(r["cost_pico_usd"] or 0 for r in rt.ledger.list_requests())


def test_unauthenticated_traffic_is_one_anonymous_principal(tmp_path, store):
    rt = Tokenlane(**store, budget_usd="0.002")
    with TestClient(build_app(rt)) as client:
        codes = [client.post("/v1/chat/completions", json={**BODY, "user": f"u{i}"}).status_code for i in range(6)]
        usage = client.get("/tokenlane/usage").json()
    assert 429 in codes
    assert usage["principal"] == "anonymous" and usage["level"] == "tenant"
    assert usage["spent_pico_usd"] <= 2 * 10**9
    assert {r["tenant"] for r in rt.ledger.list_requests()} == {"anonymous"}


def _team(rt, tmp_path):
    """acme / eng with two members, one key each; an admin outside the team."""
    led = rt.ledger
    keys = {}
    for email in ("ann@acme.test", "ben@acme.test"):
        uid = led.create_user(email)
        led.update_user(uid, team="eng", org="acme")
        keys[email] = led.create_api_key(uid)
    admin = led.create_user("root@acme.test", role="admin")
    keys["root"] = led.create_api_key(admin)
    return keys


def test_a_team_budget_holds_across_its_members_keys_concurrently(tmp_path, store):
    rt = Tokenlane(**store, max_wait_s=30)
    keys = _team(rt, tmp_path)
    rt.set_budget("team:acme/eng", "0.02", "day")
    rt.set_budget(f"apikey:{keys['ann@acme.test'][0]}", "0.015", "day")
    app = build_app(rt)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def one(i):
                _, key = keys["ann@acme.test" if i % 2 else "ben@acme.test"]
                return await client.post("/v1/chat/completions", json={**BODY, "user": f"e{i % 5}"},
                                         headers={"Authorization": f"Bearer {key}"})
            return await asyncio.gather(*(one(i) for i in range(60)))

    replies = asyncio.run(main())
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 429}, codes
    refused = [r.json()["error"]["message"] for r in replies if r.status_code == 429]
    assert any("team 'team:acme/eng'" in m for m in refused)
    rows = rt.ledger.list_requests(limit=100)
    total = sum(r["cost_pico_usd"] or 0 for r in rows)
    team = rt.usage("team:acme/eng")
    assert team["spent_pico_usd"] == total <= 2 * 10**10 and team["reserved_pico_usd"] == 0
    org = rt.usage("org:acme")
    assert (org["spent_pico_usd"], org["reserved_pico_usd"]) == (total, 0)
    ann = rt.usage(f"apikey:{keys['ann@acme.test'][0]}")
    assert ann["spent_pico_usd"] <= 15 * 10**9 and ann["reserved_pico_usd"] == 0
    by_member = {}
    for r in rows:
        by_member[r["tenant"]] = by_member.get(r["tenant"], 0) + (r["cost_pico_usd"] or 0)
    for member, spent in by_member.items():
        assert rt.usage(member)["spent_pico_usd"] == spent


def test_usage_per_level_and_who_may_read_it(tmp_path, store):
    rt = Tokenlane(**store)
    keys = _team(rt, tmp_path)
    ann_id, ann = keys["ann@acme.test"]
    _, ben = keys["ben@acme.test"]
    _, root = keys["root"]
    with TestClient(build_app(rt)) as client:
        assert client.post("/v1/chat/completions", json={**BODY, "user": "cust-1"},
                           headers={"Authorization": f"Bearer {ann}"}).status_code == 200
        mine = client.get("/tokenlane/usage", headers={"Authorization": f"Bearer {ann}"}).json()
        team = client.get("/tokenlane/usage", params={"principal": "team:acme/eng"},
                          headers={"Authorization": f"Bearer {ann}"})
        one = client.get("/tokenlane/usage", params={"user": "cust-1"}, headers={"Authorization": f"Bearer {ann}"})
        other = client.get("/tokenlane/usage", params={"principal": f"apikey:{ann_id}"},
                           headers={"Authorization": f"Bearer {ben}"})
        admin = client.get("/tokenlane/usage", params={"principal": f"apikey:{ann_id}"},
                           headers={"Authorization": f"Bearer {root}"})
    assert mine["principal"] == f"apikey:{ann_id}" and mine["spent_pico_usd"] > 0
    assert [lvl["principal"] for lvl in mine["levels"]] == ["org:acme", "team:acme/eng", "ann@acme.test",
                                                            f"apikey:{ann_id}"]
    assert all(lvl["spent_pico_usd"] == mine["spent_pico_usd"] for lvl in mine["levels"])
    assert [u["end_user"] for u in mine["end_users"]] == ["cust-1"]
    assert team.status_code == 200 and team.json()["level"] == "team"
    assert one.status_code == 200 and one.json()["level"] == "end_user"
    assert one.json()["spent_pico_usd"] == mine["spent_pico_usd"]
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert admin.status_code == 200 and admin.json()["spent_pico_usd"] == mine["spent_pico_usd"]


def test_limits_at_any_level_refuse_with_429_and_persist(tmp_path, store):
    rt = Tokenlane(**store)
    keys = _team(rt, tmp_path)
    rt.set_limits("team:acme/eng", rpm=3)
    rt.set_limits(f"apikey:{keys['ann@acme.test'][0]}", concurrency=4, tpm=1_000_000)
    small = {**BODY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    with TestClient(build_app(rt)) as client:
        codes = []
        for i in range(5):  # the team's 3 a minute, whichever member sends them
            _, key = keys["ann@acme.test" if i % 2 else "ben@acme.test"]
            r = client.post("/v1/chat/completions", json=small, headers={"Authorization": f"Bearer {key}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                error = r.json()["error"]
                assert error["code"] == "rate_limit_exceeded" and "team:acme/eng" in error["message"]
                assert int(r.headers["retry-after"]) >= 1
    assert codes == [200, 200, 200, 429, 429]
    assert {r["status"] for r in rt.ledger.list_requests()} == {"succeeded", "rejected"}
    again = Tokenlane(**store)  # another process reads the limits at start
    assert again.budget.limits("team:acme/eng") == {"rpm": 3}
    rt.set_limits("team:acme/eng")
    assert rt.budget.limits("team:acme/eng") == {}


def test_a_level_another_worker_already_reserved_at_without_a_limit_is_served(tmp_path, store):
    # Every request reserves along its whole chain, so another worker or replica may have written the
    # key's ledger row (no limit) before this process first sees the key: that is "no budget", not a
    # 500 (found by the kill -9 replica test).
    headers = {"Authorization": "Bearer sk-client-2"}
    first = Tokenlane(**store)
    with TestClient(build_app(first)) as client:
        assert client.post("/v1/chat/completions", json=BODY, headers=headers).status_code == 200
    second = Tokenlane(**store)
    with TestClient(build_app(second)) as client:
        assert client.post("/v1/chat/completions", json=BODY, headers=headers).status_code == 200


def test_usage_and_metrics_exposure_is_configurable(tmp_path):
    def reads(**settings):
        rt = Tokenlane(db=str(tmp_path / f"{len(settings)}-{sorted(settings.values())}.db"), **settings)
        keys = _team(rt, tmp_path)
        member = {"Authorization": f"Bearer {keys['ann@acme.test'][1]}"}
        admin = {"Authorization": f"Bearer {keys['root'][1]}"}
        with TestClient(build_app(rt)) as client:
            return {(path, who): client.get(path, headers=headers).status_code
                    for path in ("/tokenlane/usage", "/tokenlane/report", "/metrics")
                    for who, headers in (("anonymous", {}), ("member", member), ("admin", admin))}

    default = reads()
    assert set(default.values()) == {200}  # own spend and public metrics
    locked = reads(usage_access="admin", metrics_access="admin")
    for path in ("/tokenlane/usage", "/tokenlane/report", "/metrics"):
        assert (locked[path, "anonymous"], locked[path, "member"], locked[path, "admin"]) == (401, 403, 200)
    off = reads(usage_access="off")
    assert off["/tokenlane/usage", "admin"] == off["/tokenlane/report", "member"] == 404
    assert off["/metrics", "anonymous"] == 200
