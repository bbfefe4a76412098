"""Stand-ins with the contract's shapes (contracts.md: Ledger, Scheduler, Tokenlane, providers) for
developing the example app before those branches land. TEMPORARY: replaced by the real objects."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import tokenlane


class FakeLedger:
    def __init__(self) -> None:
        self.users: dict[int, dict[str, Any]] = {}
        self.keys: dict[int, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.budgets: dict[str, dict[str, Any]] = {}
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def create_user(self, email, password_hash=None, role="client", name=None):
        uid = next(self._ids)
        self.users[uid] = {"id": uid, "email": email, "name": name, "role": role, "disabled": False,
                           "created_at": time.time(), "password_hash": password_hash}
        return uid

    def get_user(self, uid):
        u = self.users.get(uid)
        return dict(u) if u else None

    def get_user_by_email(self, email):
        return next((dict(u) for u in self.users.values() if u["email"] == email), None)

    def list_users(self):
        return [dict(u) for u in self.users.values()]

    def update_user(self, uid, **fields):
        self.users[uid].update(fields)

    def create_api_key(self, uid, name="default"):
        plain = "tl-" + secrets.token_urlsafe(24)
        kid = next(self._ids)
        self.keys[kid] = {"key_id": kid, "user_id": uid, "name": name, "prefix": plain[:8], "created_at": time.time(),
                          "revoked": False, "hash": hashlib.sha256(plain.encode()).hexdigest()}
        return kid, plain

    def verify_api_key(self, plain):
        h = hashlib.sha256(plain.encode()).hexdigest()
        for k in self.keys.values():
            if k["hash"] == h and not k["revoked"]:
                return {"key_id": k["key_id"], "user_id": k["user_id"], "tenant": self.users[k["user_id"]]["email"], "name": k["name"]}
        return None

    def revoke_api_key(self, key_id, user_id=None):
        k = self.keys.get(key_id)
        if not k or (user_id is not None and k["user_id"] != user_id) or k["revoked"]:
            return False
        k["revoked"] = True
        return True

    def list_api_keys(self, uid):
        return [{k: v for k, v in key.items() if k != "hash"} for key in self.keys.values() if key["user_id"] == uid]

    def insert_request(self, row):
        self.requests[row["id"]] = dict(row)

    def update_request(self, rid, **fields):
        self.requests[rid].update(fields)

    def get_request(self, rid):
        r = self.requests.get(rid)
        return dict(r) if r else None

    def list_requests(self, tenant=None, status=None, model=None, since=None, until=None, limit=100, offset=0):
        rows = [r for r in self.requests.values()
                if (tenant is None or r["tenant"] == tenant) and (status is None or r["status"] == status)
                and (model is None or r["model"] == model) and (since is None or r["created_at"] >= since)
                and (until is None or r["created_at"] < until)]
        rows.sort(key=lambda r: -r["created_at"])
        return [dict(r) for r in rows[offset:offset + limit]]

    def set_budget(self, tenant, limit, window="day"):
        if limit is None:
            self.budgets.pop(tenant, None)
        else:
            self.budgets[tenant] = {"tenant": tenant, "limit_pico_usd": limit, "window": window}

    def get_budget(self, tenant):
        return self.budgets.get(tenant)

    def usage(self, tenant, now):
        rows = [r for r in self.requests.values() if r["tenant"] == tenant]
        b = self.budgets.get(tenant)
        spent = sum(r.get("cost_pico_usd") or 0 for r in rows)
        return {"spent_pico_usd": spent, "reserved_pico_usd": 0, "limit_pico_usd": b and b["limit_pico_usd"],
                "remaining_pico_usd": b and b["limit_pico_usd"] - spent, "requests": len(rows),
                "window": b and b["window"], "resets_at": None}

    def get_config(self, key, default=None):
        return self.config.get(key, default)

    def set_config(self, key, value, actor=None):
        self.config[key] = value
        self.history.insert(0, {"key": key, "value": value, "actor": actor, "changed_at": time.time()})

    def config_history(self, limit=50):
        return self.history[:limit]

    def status_counts(self, tenant=None):
        out: dict[str, int] = {}
        for r in self.requests.values():
            if tenant is None or r["tenant"] == tenant:
                out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def report_by_day(self, since=None, tenant=None):
        days: dict[str, dict[str, Any]] = {}
        for r in self.list_requests(tenant=tenant, since=since, limit=10**9):
            d = time.strftime("%Y-%m-%d", time.gmtime(r["created_at"]))
            e = days.setdefault(d, {"day": d, "requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_pico_usd": 0})
            e["requests"] += 1
            for k in ("input_tokens", "output_tokens", "cost_pico_usd"):
                e[k] += r.get(k) or 0
        return sorted(days.values(), key=lambda e: e["day"])


class FakeScheduler:
    def __init__(self) -> None:
        self.policy = "default"
        self.paused = False
        self.queue: list[dict[str, Any]] = []
        self.budgets: dict[str, Any] = {}

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def set_policy(self, name):
        self.policy = name

    def set_budget(self, tenant, limit, window="day"):
        self.budgets[tenant] = (limit, window)

    def snapshot(self, now):
        return {"queue": [{**q, "position": i + 1, "wait_s": now - q["arrival"]} for i, q in enumerate(self.queue)],
                "deferred": [], "running": [], "counters": {}, "policy": self.policy, "paused": self.paused}

    def status(self, rid):
        return "queued" if any(q["id"] == rid for q in self.queue) else None


@dataclass
class Identity:
    tenant: str
    user_id: int | None = None


class FakeProvider:
    simulated = True

    async def chat(self, body):
        text = "[simulated] " + " ".join(["token"] * 12)
        n_in = tokenlane.count_chat_tokens(body["messages"], model="gpt-4o")
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": 13, "total_tokens": n_in + 13}}

    async def stream_chat(self, body):
        resp = await self.chat(body)
        yield {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": resp["choices"][0]["message"]["content"]}}]}
        yield {"object": "chat.completion.chunk", "choices": [], "usage": resp["usage"]}


class PassthroughMiddleware:
    def __init__(self, app, runtime=None):
        self.app = app
        runtime.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


class FakeRuntime:
    """submit() runs at once unless dispatch is paused (manual mode), then it queues."""

    def __init__(self) -> None:
        self.ledger = FakeLedger()
        self.scheduler = FakeScheduler()
        self.pricing = tokenlane.Pricing.default()
        self.provider = FakeProvider()
        self.views: dict[str, dict[str, Any]] = {}
        self.app = None

    def set_budget(self, tenant, limit_usd, window="day"):
        pico = None if limit_usd is None else int(Decimal(str(limit_usd)) * 10**12)
        self.ledger.set_budget(tenant, pico, window)
        self.scheduler.set_budget(tenant, pico, window)

    async def submit(self, path, body, *, tenant, user_id=None, priority="standard", deadline_ms=None):
        rid = "req_" + uuid.uuid4().hex
        n_in = tokenlane.count_chat_tokens(body["messages"], model="gpt-4o")
        est = self.pricing.cost(body["model"], input_tokens=n_in, output_tokens=20).total_pico_usd
        now = time.time()
        self.ledger.insert_request({
            "id": rid, "tenant": tenant, "user_id": user_id, "key_id": None, "route": path, "model": body["model"],
            "status": "queued", "decision": "queue" if self.scheduler.paused else "admit", "reason": "queued" if self.scheduler.paused else "ok",
            "priority": priority, "deadline_s": None if deadline_ms is None else now + deadline_ms / 1000, "created_at": now,
            "est_input_tokens": n_in, "est_output_p50": 20, "est_output_p90": 40, "est_cost_pico_usd": est,
            "prompt_preview": body["messages"][-1]["content"][:2000]})
        self.views[rid] = {"id": rid, "status": "queued", "decision": None, "response": None}
        if self.scheduler.paused:
            self.scheduler.queue.append({"id": rid, "tenant": tenant, "priority": priority, "cost": est, "deadline": None, "arrival": now, "body": body})
            d = {"decision": "queue", "reason": "queued", "message": "queued", "position": len(self.scheduler.queue)}
        else:
            d = {"decision": "admit", "reason": "ok", "message": "ok", "position": None}
            await self._run(rid, body)
        self.views[rid]["decision"] = d
        return {"id": rid, **d, "status_url": f"/tokenlane/jobs/{rid}"}

    async def _run(self, rid, body):
        scope_identity = None  # the real runtime calls the app's route; the fake calls the provider
        del scope_identity
        resp = await self.provider.chat(body)
        u = resp["usage"]
        cost = self.pricing.cost_of_usage(body["model"], u).total_pico_usd
        self.ledger.update_request(rid, status="succeeded", started_at=time.time(), finished_at=time.time(), queue_ms=5.0,
                                   input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"], cost_pico_usd=cost,
                                   response_preview=resp["choices"][0]["message"]["content"])
        self.views[rid].update(status="succeeded", response=resp)

    def job(self, rid):
        row = self.ledger.get_request(rid)
        if row is None:
            return None
        view = dict(self.views.get(rid) or {"id": rid, "status": row["status"]})
        view["request"] = row
        for i, q in enumerate(self.scheduler.queue):
            if q["id"] == rid:
                view["position"] = i + 1
        return view

    async def dispatch(self, rid):
        for q in list(self.scheduler.queue):
            if q["id"] == rid:
                self.scheduler.queue.remove(q)
                await self._run(rid, q["body"])
                return True
        return False

    async def reject(self, rid, reason="admin"):
        for q in list(self.scheduler.queue):
            if q["id"] == rid:
                self.scheduler.queue.remove(q)
                self.ledger.update_request(rid, status="rejected", reason=reason)
                self.views[rid]["status"] = "rejected"
                return True
        return False

    def pause(self):
        self.scheduler.pause()

    def resume(self):
        self.scheduler.resume()

    def set_policy(self, name):
        self.scheduler.set_policy(name)


def fake_app(settings):
    from examples.app.main import create_app

    rt = FakeRuntime()
    return create_app(settings, runtime=rt, provider=rt.provider, middleware=PassthroughMiddleware)


if __name__ == "__main__":  # python -m tests.python.app_fakes: serve the app on fakes for a look
    import os

    import uvicorn

    from examples.app.settings import Settings

    s = Settings(db_path="/tmp/fake-app.db", secret_key="dev", admin_email="admin@example.com", admin_password="admin-password")
    uvicorn.run(fake_app(s), port=int(os.environ.get("PORT", "8011")))
    json  # noqa: B018
    asyncio  # noqa: B018
