"""``TokenlaneMiddleware``: a pure ASGI middleware that counts, prices, schedules, limits and records
every LLM request of the app it wraps.

    app.add_middleware(TokenlaneMiddleware)                       # defaults: ./tokenlane.db, ...
    app.add_middleware(TokenlaneMiddleware, budget_usd=5, tpm=100_000, max_concurrency=8)
    app.add_middleware(TokenlaneMiddleware, runtime=tl)           # share a Tokenlane with your routes

LLM routes are recognised by path (OpenAI ``/chat/completions``, ``/completions``, ``/responses``,
``/embeddings``; Anthropic ``/messages``); ``extractors={"^/chat$": fn}`` describes any other route
(``fn(scope, body) -> LLMRequest``). Everything else passes through untouched. The middleware also
serves ``GET /tokenlane/usage`` (the caller's key, the levels above it and its end users),
``GET /tokenlane/report`` (KPIs), ``GET /tokenlane/jobs/{id}``, ``GET /tokenlane/queue`` (admin keys:
the requests waiting and running on every replica) and ``GET /metrics``. The request
path itself is :meth:`tokenlane.Tokenlane.handle`.
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from .asgi_io import Receive, Scope, Send, request_headers, respond, respond_json, send_error
from .errors import RequestError
from .reports import ReportError, document, parse_period
from .runtime import Tokenlane
from .stages import Identity
from .stages.base import end_user_principal, level_of
from .stages.identify import api_key, identity_of_key, tenant_without_record
from .stages.parse import Extractor


class TokenlaneMiddleware:
    """See the module docstring. Keyword arguments are :class:`tokenlane.config.Settings` fields."""

    def __init__(self, app: Any, runtime: Tokenlane | None = None, *,
                 extractors: Mapping[str, Extractor] | None = None, **settings: Any) -> None:
        self.app = app
        if runtime is not None and settings:
            raise TypeError("pass settings to Tokenlane(...) or to the middleware, not both")
        self.runtime = runtime or Tokenlane(**settings)
        self.runtime.app = app
        for pattern, fn in (extractors or {}).items():
            self.runtime.parse.add_extractor(pattern, fn)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._draining(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.runtime
        if not _gc_frozen and rt.settings.gc_freeze:
            _freeze_startup_heap()
        if rt.shared is not None:
            rt.start_replica_tasks()  # its share of the deferred jobs; its queue for every admin view
        path: str = scope["path"]
        method: str = scope["method"]
        prefix = rt.settings.route_prefix
        if method == "GET" and path.startswith(prefix + "/"):
            await _own_route(rt, scope, send, path[len(prefix):])
            return
        if method == "GET" and path == "/metrics" and rt.metrics is not None:
            if rt.settings.metrics_access == "admin":
                refusal = await _admin_refusal(rt, request_headers(scope))
                if refusal is not None:
                    await send_error(send, refusal)
                    return
            await respond(send, 200, rt.metrics.render(), rt.metrics.content_type)
            return
        if method == "POST" and rt.parse.handles(path):
            await rt.handle(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _draining(self, receive: Receive) -> Receive:
        """The lifespan's receive: on shutdown, settles the requests in flight first
        (:meth:`Tokenlane.drain`), then lets the app shut down its own resources."""
        async def receive_and_drain() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.runtime.drain()
            return message

        return receive_and_drain


_gc_frozen = False


def _freeze_startup_heap() -> None:
    """At the process's first request the app is built and imported: what the heap holds then lives
    as long as the process. Frozen (``gc.freeze``), it is skipped by every later full collection,
    a pause any request may land in (50-100 ms each in the middleware benchmark's process, ~10 ms
    frozen). Once per process, whatever the number of apps; O(1)."""
    global _gc_frozen
    _gc_frozen = True
    gc.freeze()


async def _admin_refusal(rt: Tokenlane, headers: Mapping[str, str]) -> RequestError | None:
    """None when the caller's API key belongs to an admin; else the 401/403 to send."""
    record = await rt.identify_stage.key_record(api_key(headers))
    if record is None:
        return RequestError(401, "an admin's API key is required (Authorization: Bearer <key>)",
                            type="authentication_error", code="invalid_api_key")
    if record.get("role") != "admin":
        return RequestError(403, "only an admin's API key may read this", type="permission_error", code="forbidden")
    return None


async def _spend_read_refusal(rt: Tokenlane, headers: Mapping[str, str]) -> RequestError | None:
    """``usage_access``: "own" lets every caller read its own spend, "admin" only admin keys,
    "off" serves neither route (a service that shows spend its own way)."""
    access = rt.settings.usage_access
    if access == "off":
        return RequestError(404, "spend reads are turned off here (usage_access='off')", code="not_found")
    if access == "admin":
        return await _admin_refusal(rt, headers)
    return None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


async def _usage(rt: Tokenlane, scope: Scope, send: Send, headers: dict[str, str]) -> None:
    """``GET /tokenlane/usage[?principal=…|?tenant=…][&user=…]``: by default the caller's key (a
    ledger key, else the hashed bearer key, else "anonymous") with every level above it and its end
    users; ``user`` narrows to one of those end users. Callers read their own chain and end users;
    admin keys read any principal."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    key = api_key(headers)
    record = await rt.identify_stage.key_record(key)
    caller = identity_of_key(record) if record else Identity(tenant=tenant_without_record(key))
    asked = _first(query, "principal") or _first(query, "tenant") or caller.owner
    user = _first(query, "user")
    if user:
        asked = end_user_principal(asked, user)
    own = asked in caller.chain() or asked.startswith(end_user_principal(caller.owner, ""))
    if not own and (record or {}).get("role") != "admin":
        await send_error(send, RequestError(403, f"this key may not see {asked!r}: a key reads its own levels and "
                                                 "end users; admin keys read any", type="permission_error",
                                            code="forbidden"))
        return
    now = rt.clock()

    def read() -> dict[str, Any]:
        usage = rt.budget.usage(asked, now)
        if level_of(asked) != "end_user":
            whose = caller if asked == caller.owner else Identity(tenant=asked)
            usage.update(rt.budget.report(whose, now))
        return usage

    await respond_json(send, 200, await asyncio.to_thread(read))


async def _own_route(rt: Tokenlane, scope: Scope, send: Send, sub: str) -> None:
    headers = request_headers(scope)
    if sub in ("/usage", "/report"):
        refusal = await _spend_read_refusal(rt, headers)
        if refusal is not None:
            await send_error(send, refusal)
        elif sub == "/usage":
            await _usage(rt, scope, send, headers)
        else:
            await _report(rt, scope, headers, send)
        return
    if sub == "/queue":
        refusal = await _admin_refusal(rt, headers)
        if refusal is not None:
            await send_error(send, refusal)
        else:
            await respond_json(send, 200, await rt.queue_view())
        return
    match = re.fullmatch(r"/jobs/([A-Za-z0-9_\-]+)", sub)
    if match:
        view = await rt.jobs.view_any(match.group(1))
        if view is None:
            await send_error(send, RequestError(404, f"no job {match.group(1)!r}", code="not_found"))
        else:
            await respond_json(send, 200, view)
        return
    await send_error(send, RequestError(404, f"no tokenlane route {sub!r}", code="not_found"))


async def _report(rt: Tokenlane, scope: Scope, headers: dict[str, str], send: Send) -> None:
    """``GET /tokenlane/report?by=model&since=7d[&until=…][&tenant=…]``: the KPIs of ``tokenlane report``.
    A caller sees its own tenant; an admin key (with ``require_api_key``) everyone, or the tenant it asks."""
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
    key = api_key(headers)
    record = await rt.identify_stage.key_record(key)
    own = record["tenant"] if record else tenant_without_record(key)
    admin = rt.settings.require_api_key and (record or {}).get("role") == "admin"
    tenant = query.get("tenant") if admin else own
    try:
        now = rt.clock()
        since = parse_period(query.get("since", "30d"), now)
        until = parse_period(query.get("until"), now)
        doc = await asyncio.to_thread(document, rt.sidecar, query.get("by", "day"), since=since, until=until,
                                      tenant=tenant)
    except ReportError as exc:
        await send_error(send, RequestError(400, str(exc), param="by" if "grouping" in str(exc) else "since"))
        return
    await respond_json(send, 200, doc)


__all__ = ["TokenlaneMiddleware"]
