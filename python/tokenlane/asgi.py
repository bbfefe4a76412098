"""``TokenlaneMiddleware``: a pure ASGI middleware that counts, prices, schedules, limits and records
every LLM request of the app it wraps.

    app.add_middleware(TokenlaneMiddleware)                       # defaults: ./tokenlane.db, ...
    app.add_middleware(TokenlaneMiddleware, budget_usd=5, tpm=100_000, max_concurrency=8)
    app.add_middleware(TokenlaneMiddleware, runtime=tl)           # share a Tokenlane with your routes

LLM routes are recognised by path (OpenAI ``/chat/completions``, ``/completions``, ``/responses``,
``/embeddings``; Anthropic ``/messages``); ``extractors={"^/chat$": fn}`` describes any other route
(``fn(scope, body) -> LLMRequest``). Everything else passes through untouched. The middleware also
serves ``GET /tokenlane/usage``, ``GET /tokenlane/jobs/{id}`` and ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from .formats import (
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    LLMRequest,
    MalformedRequest,
    StreamReader,
    api_for_path,
    load_json_body,
    parse_request,
    read_json_response,
)
from .providers import UsageReports, _current_reports
from .runtime import (
    Identity,
    Job,
    Outcome,
    Priced,
    RequestError,
    Tokenlane,
    _decision_dict,
    usd_text,
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Extractor = Callable[[Scope, Any], "LLMRequest | Awaitable[LLMRequest]"]


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
            self.runtime.extractors.append((re.compile(pattern), fn))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.runtime
        path: str = scope["path"]
        method: str = scope["method"]
        prefix = rt.settings.route_prefix
        if method == "GET" and path.startswith(prefix + "/"):
            await _own_route(rt, scope, send, path[len(prefix):])
            return
        if method == "GET" and path == "/metrics" and rt.metrics is not None:
            await _respond(send, 200, rt.metrics.render(), rt.metrics.content_type)
            return
        if method == "POST" and (api_for_path(path) or _extractor_for(rt, path)):
            await handle_llm_request(rt, scope, receive, send)
            return
        await self.app(scope, receive, send)


def _extractor_for(rt: Tokenlane, path: str) -> Extractor | None:
    for pattern, fn in rt.extractors:
        if pattern.search(path):
            return fn
    return None


# --- the request path --------------------------------------------------------------------------


async def handle_llm_request(rt: Tokenlane, scope: Scope, receive: Receive, send: Send, *,
                             job: Job | None = None,
                             on_decision: Callable[[dict[str, Any]], None] | None = None) -> None:
    """One LLM request from body to ledger row; also the path of background jobs."""
    headers = _headers(scope)
    try:
        _check_header_size(scope)
        body = await _read_body(receive, headers, rt.settings.max_body_bytes)
        request = await _parse(rt, scope, body)
        identity = await _identify(rt, scope, headers, request)
        try:
            priced = rt.prepare(request, identity, scope["path"], headers, rt.clock(),
                                request_id=job.id if job else None)
        except ValueError as exc:  # the core's InvalidArgumentError: e.g. a message content it cannot read
            where = re.match(r"chat request: (?!body )([\w.\[\]]+) ", str(exc))  # the core names the JSON path
            raise RequestError(400, f"malformed request: {exc}", param=where and where.group(1)) from None
    except RequestError as exc:
        if on_decision:
            on_decision({"decision": "reject", "reason": exc.code or "invalid_request", "message": exc.message})
        await _send_error(send, exc)
        return

    def decided(decision: Any) -> None:
        # Written by the ledger's one writer thread, in order: before any later update of the row.
        status = {"admit": "running", "queue": "queued", "defer": "deferred"}.get(decision.kind, "rejected")
        rt.write(rt.ledger.insert_request, rt.ledger_row(priced, status, decision))
        if on_decision:
            on_decision(_decision_dict(decision))

    disconnected = None if job else asyncio.ensure_future(_wait_disconnect(receive))
    try:
        decision = await rt.admit(priced, disconnected, decided)
    except RequestError as exc:
        await rt.write(rt.ledger.update_request, priced.id,
                       status="cancelled" if exc.status == 499 else "rejected",
                       reason=exc.code, finished_at=rt.clock(), error=exc.message)
        await _send_error(send, exc, priced)
        if disconnected:
            disconnected.cancel()
        return
    if decision.kind == "defer":
        deferred = job or Job(id=priced.id, scope=scope, body=body)
        deferred.priced, deferred.status = priced, "deferred"
        deferred.decision = _decision_dict(decision)
        rt._jobs[deferred.id] = deferred
        if disconnected:
            disconnected.cancel()
        if job is None:
            payload = {"id": priced.id, "object": "tokenlane.job", "status": "deferred",
                       "reason": decision.reason, "message": decision.message, "status_url": rt.status_url(priced.id)}
            await _respond(send, 202, json.dumps(payload).encode(), "application/json",
                           _tokenlane_headers(rt, priced) + [(b"location", rt.status_url(priced.id).encode())])
        return
    if job is not None:
        job.priced = priced
    await run_admitted(rt, priced, scope, body, send, receive=receive, disconnected=disconnected)


async def run_admitted(rt: Tokenlane, p: Priced, scope: Scope, body: bytes, send: Send, *,
                       receive: Receive | None = None, disconnected: asyncio.Future[Any] | None = None) -> None:
    """Calls the wrapped app for an admitted request and reconciles on every path."""
    body, drop_usage_chunk = _ask_for_stream_usage(p.request, body)
    scope = {**scope, "headers": _with_content_length(scope["headers"], len(body))}
    reports = UsageReports()
    outcome = Outcome(reports=reports)
    finished: dict[str, Any] = {}
    body_given = False

    async def finish() -> dict[str, Any]:
        if not finished:
            fields, written = rt.finish(p, outcome)
            finished.update(fields)
            await asyncio.wrap_future(written)  # the row is on disk before the response completes
        return finished

    async def inner_receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnected is not None:
            return await asyncio.shield(disconnected)
        if receive is not None:
            return await receive()
        await asyncio.Event().wait()  # a job has no client that could disconnect
        raise AssertionError("unreachable")

    held: dict[str, Any] = {}
    buffered = bytearray()
    reader: StreamReader | None = None

    async def inner_send(message: dict[str, Any]) -> None:
        nonlocal reader
        kind = message["type"]
        if kind == "http.response.start":
            outcome.status = message["status"]
            response_headers = list(message.get("headers") or [])
            content_type = _header(response_headers, b"content-type")
            start = {**message, "headers": response_headers + _tokenlane_headers(rt, p)}
            if "text/event-stream" in content_type:
                reader = StreamReader(drop_usage_only_chunks=drop_usage_chunk)
            elif "json" in content_type:
                held.update(start)  # sent with the body, once the cost is known
                return
            await send(start)
            return
        if kind != "http.response.body":
            await send(message)
            return
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if chunk:
            outcome.started_output = True
        if held:
            buffered.extend(chunk)
            if more:
                return
            seen = read_json_response(bytes(buffered))
            outcome.usage, outcome.text = seen.usage, seen.text
            cost = await finish()
            held["headers"] = [*held["headers"], (b"x-tokenlane-cost", usd_text(cost["cost_pico_usd"]).encode())]
            await send(held)
            await send({"type": "http.response.body", "body": bytes(buffered), "more_body": False})
            return
        if reader is not None:
            chunk = reader.feed(chunk)
            if not more:
                chunk += reader.close()
                outcome.usage, outcome.text = reader.result.usage, reader.result.text
        if not more:
            await finish()
        await send({**message, "body": chunk})

    token = _current_reports.set(reports)
    try:
        await rt.app(scope, inner_receive, inner_send)
    except BaseException as exc:
        outcome.error = f"{type(exc).__name__}: {exc}" or "cancelled"
        raise
    finally:
        _current_reports.reset(token)
        if disconnected is not None:
            disconnected.cancel()
        if not finished:
            # The app failed, was cancelled or never finished its response: reconcile now and wait
            # for it (after this row's insert, on the ledger thread) even if this task was cancelled,
            # so that nothing can lose the ledger row or a reservation.
            complete = False
            if reader is not None:
                reader.close()
                outcome.usage, outcome.text = reader.result.usage, reader.result.text
                # A client that hangs up after the stream's end marker got the whole answer.
                complete = reader.complete
            if complete:
                outcome.error = None
            elif outcome.error is None:
                outcome.error = "response not completed"
            fields, written = rt.finish(p, outcome)
            finished.update(fields)
            written.result()


def _ask_for_stream_usage(request: LLMRequest, body: bytes) -> tuple[bytes, bool]:
    """For streamed OpenAI requests, ask the upstream for the final usage chunk (else a stream has
    no usage at all); the chunk is then dropped on the way back since the client did not ask."""
    if not request.stream or request.api not in (OPENAI_CHAT, OPENAI_COMPLETIONS):
        return body, False
    data = json.loads(body)
    options = data.get("stream_options") or {}
    if options.get("include_usage"):
        return body, False
    data["stream_options"] = {**options, "include_usage": True}
    return json.dumps(data).encode(), True


# --- pieces ------------------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1").lower()
    return ""


def _with_content_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers or () if k.lower() != b"content-length"]
    out.append((b"content-length", str(length).encode()))
    return out


# Servers cap the header block themselves (h11: 16 KiB by default); this holds behind any server.
MAX_HEADER_BYTES = 32 * 1024


def _check_header_size(scope: Scope) -> None:
    size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or ())
    if size > MAX_HEADER_BYTES:
        raise RequestError(431, f"request headers of {size} bytes are over the limit of {MAX_HEADER_BYTES} bytes",
                           code="request_header_fields_too_large")


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes is over the limit of {limit} bytes",
                           code="request_too_large")
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(499, "client disconnected", type="request_cancelled", code="client_closed_request")
        chunks.extend(message.get("body", b""))
        if len(chunks) > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
        if not message.get("more_body", False):
            return bytes(chunks)


async def _parse(rt: Tokenlane, scope: Scope, body: bytes) -> LLMRequest:
    extractor = _extractor_for(rt, scope["path"])
    try:
        data: Any = load_json_body(body) if body else None
    except MalformedRequest as exc:
        if extractor is None:
            raise RequestError(400, str(exc), param=exc.param) from None
        data = body  # an extractor's route may take any body; it gets the bytes
    try:
        if extractor is not None:
            result = extractor(scope, data)
            request = await result if inspect.isawaitable(result) else result
            if not isinstance(request, LLMRequest):
                raise MalformedRequest("the route's extractor returned no LLMRequest")
            return request
        api = api_for_path(scope["path"])
        assert api is not None
        request = parse_request(api, data)
        if api == OPENAI_CHAT:
            request.extra["raw_body"] = body.decode("utf-8")
        return request
    except MalformedRequest as exc:
        raise RequestError(400, str(exc), param=exc.param) from None


def _api_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


async def _key_record(rt: Tokenlane, key: str | None) -> dict[str, Any] | None:
    if not key:
        return None
    cached = rt.cached_api_key(key)
    if cached is not None:
        return cached[0]
    return await asyncio.to_thread(rt.api_key_record, key)


async def _identify(rt: Tokenlane, scope: Scope, headers: Mapping[str, str], request: LLMRequest) -> Identity:
    """Who pays: a job's given identity, the identify hook, a key the ledger knows, the body's
    ``user``, a hash of an unknown key, or "anonymous"."""
    given = scope.get("tokenlane.identity")
    if isinstance(given, Identity):
        return given
    if rt.identify is not None:
        found = rt.identify(scope, request)
        found = await found if inspect.isawaitable(found) else found
        if isinstance(found, Identity):
            return found
        if isinstance(found, str) and found:
            return Identity(tenant=found)
    key = _api_key(headers)
    record = await _key_record(rt, key)
    if record is None and rt.settings.require_api_key:
        raise RequestError(401, "a valid API key is required (Authorization: Bearer <key>)",
                           type="invalid_request_error", code="invalid_api_key")
    if record is not None:
        return Identity(tenant=record["tenant"], user_id=record.get("user_id"), key_id=record.get("key_id"),
                        role=record.get("role"))
    if request.tenant:
        return Identity(tenant=request.tenant)
    if rt.settings.trust_user_field and request.user:
        return Identity(tenant=request.user)
    return Identity(tenant=_tenant_without_record(key))


async def _wait_disconnect(receive: Receive) -> dict[str, Any]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message


def _tokenlane_headers(rt: Tokenlane, p: Priced) -> list[tuple[bytes, bytes]]:
    out = [
        (b"x-tokenlane-request-id", p.id.encode()),
        (b"x-tokenlane-estimated-cost", usd_text(p.cost_p50).encode()),
        (b"x-tokenlane-queue-ms", f"{p.queue_ms:.3f}".encode()),
    ]
    st = rt.settings
    if not (st.tpm or st.rpm or st.tenant_tpm or st.tenant_rpm):
        return out  # no rate limits: nothing to report, and no need to ask the scheduler
    limits = rt.scheduler.rate_limits(p.identity.tenant, rt.clock())
    for unit in ("requests", "tokens"):
        if limits.get(f"limit_{unit}") is not None:
            out.append((f"x-ratelimit-limit-{unit}".encode(), str(int(limits[f"limit_{unit}"])).encode()))
            out.append((f"x-ratelimit-remaining-{unit}".encode(), str(max(0, int(limits[f"remaining_{unit}"]))).encode()))
            out.append((f"x-ratelimit-reset-{unit}".encode(), f"{max(0.0, limits[f'reset_{unit}_s']):.3f}s".encode()))
    return out


async def _respond(send: Send, status: int, body: bytes, content_type: str,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Send, exc: RequestError, p: Priced | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, int(exc.retry_after_s + 0.999))).encode()))
    if p is not None:
        headers.append((b"x-tokenlane-request-id", p.id.encode()))
        headers.append((b"x-tokenlane-estimated-cost", usd_text(p.cost_p50).encode()))
    await _respond(send, exc.status, json.dumps(exc.body()).encode(), "application/json", headers)


async def _own_route(rt: Tokenlane, scope: Scope, send: Send, sub: str) -> None:
    headers = _headers(scope)
    if sub == "/usage":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        record = await _key_record(rt, _api_key(headers))
        asked = (query.get("tenant") or [None])[0]
        own = record["tenant"] if record else None
        if asked is None:
            asked = own or _tenant_without_record(_api_key(headers))
        elif rt.settings.require_api_key and asked != own and (record or {}).get("role") != "admin":
            await _send_error(send, RequestError(403, f"this key may not see tenant {asked!r}",
                                                 type="permission_error", code="forbidden"))
            return
        usage = await asyncio.to_thread(rt.usage, asked)
        await _respond(send, 200, json.dumps(usage).encode(), "application/json")
        return
    match = re.fullmatch(r"/jobs/([A-Za-z0-9_\-]+)", sub)
    if match:
        view = await asyncio.to_thread(rt.job, match.group(1))
        if view is None:
            await _send_error(send, RequestError(404, f"no job {match.group(1)!r}", code="not_found"))
        else:
            await _respond(send, 200, json.dumps(view, default=str).encode(), "application/json")
        return
    await _send_error(send, RequestError(404, f"no tokenlane route {sub!r}", code="not_found"))


def _tenant_without_record(key: str | None) -> str:
    """The tenant of a caller the ledger does not know: a hash of its key, else "anonymous"."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"


__all__ = ["TokenlaneMiddleware", "handle_llm_request", "run_admitted"]
