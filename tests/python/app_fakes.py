"""Stand-ins with the contract's shapes (contracts.md: Ledger, Scheduler, Tokenlane, providers) for
developing the example app before those branches land. TEMPORARY: replaced by the real objects."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import tokenlane


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

    def __init__(self, db_path: str) -> None:
        self.ledger = tokenlane.Ledger(db_path)
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
            self.scheduler.queue.append({"id": rid, "tenant": tenant, "priority": priority, "cost_p90": est, "deadline_s": None, "arrival": now, "body": body})
            self.scheduler.queue.sort(key=lambda q: ("interactive", "standard", "batch").index(q["priority"]))
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

    rt = FakeRuntime(settings.db_path)
    return create_app(settings, runtime=rt, provider=rt.provider, middleware=PassthroughMiddleware)


if __name__ == "__main__":  # python -m tests.python.app_fakes: serve the app on fakes for a look
    import os

    import uvicorn

    from examples.app.settings import Settings

    s = Settings(db_path="/tmp/fake-app.db", secret_key="dev", admin_email="admin@example.com", admin_password="admin-password")
    uvicorn.run(fake_app(s), port=int(os.environ.get("PORT", "8011")))
    json  # noqa: B018
    asyncio  # noqa: B018
