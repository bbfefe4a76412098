"""Stage: call the wrapped app for an admitted request and watch its response: the usage (JSON
body, stream chunks, or the handler's reported calls), the generated text, the status. A JSON
response is held until its cost is known (``x-tokenlane-cost``); a stream passes through. Whatever
happens (error, cancellation, a client that hangs up), ``reconcile`` runs exactly once and its
ledger write completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .._core import StorageError
from ..asgi_io import Receive, Scope, Send, header, with_content_length
from ..config import Settings
from ..formats import OPENAI_CHAT, OPENAI_COMPLETIONS, LLMRequest, StreamReader, read_json_response
from ..pricing import usd_text
from ..providers import UsageReports, _current_reports
from ..scheduler import Scheduler
from .base import Outcome, Priced
from .reconcile import fallbacks

ReconcileFn = Callable[[Priced, Outcome], tuple[dict[str, Any], Future[Any] | None]]
log = logging.getLogger("tokenlane")


class Upstream:
    def __init__(self, settings: Settings, scheduler: Scheduler, reconcile: ReconcileFn,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.reconcile = reconcile
        self.clock = clock
        self.app: Any = None  # the wrapped ASGI app, set by the middleware

    def headers(self, p: Priced) -> list[tuple[bytes, bytes]]:
        """The x-tokenlane-* and (with rate limits configured) x-ratelimit-* response headers."""
        out = [
            (b"x-tokenlane-request-id", p.id.encode()),
            (b"x-tokenlane-estimated-cost", usd_text(p.cost_p50).encode()),
            (b"x-tokenlane-queue-ms", f"{p.queue_ms:.3f}".encode()),
        ]
        if p.state_mode == "local":  # Redis unreachable: this replica enforced 1/N of each limit itself
            out.append((b"x-tokenlane-state", b"local"))
        if p.cache is not None:
            out.append((b"x-tokenlane-cache", p.cache.encode()))
        if p.clamped_max_tokens is not None:
            out.append((b"x-tokenlane-max-tokens-clamped", str(p.clamped_max_tokens).encode()))
        if p.untrimmed_input_tokens is not None:
            out.append((b"x-tokenlane-trimmed-input-tokens", f"{p.untrimmed_input_tokens}->{p.input_tokens}".encode()))
        st = self.settings
        if not (st.tpm or st.rpm or st.tenant_tpm or st.tenant_rpm):
            return out  # no rate limits: nothing to report, and no need to ask the scheduler
        limits = p.rate_limits or self.scheduler.rate_limits(p.identity.tenant, self.clock())
        for unit in ("requests", "tokens"):
            if limits.get(f"limit_{unit}") is not None:
                out.append((f"x-ratelimit-limit-{unit}".encode(), str(int(limits[f"limit_{unit}"])).encode()))
                out.append((f"x-ratelimit-remaining-{unit}".encode(),
                            str(max(0, int(limits[f"remaining_{unit}"]))).encode()))
                out.append((f"x-ratelimit-reset-{unit}".encode(), f"{max(0.0, limits[f'reset_{unit}_s']):.3f}s".encode()))
        return out

    @staticmethod
    def served_headers(p: Priced, reports: UsageReports) -> list[tuple[bytes, bytes]]:
        """Which model answered, and after how many upstream attempts and fallbacks (known once the
        upstream answered: these go out with the first byte of the body)."""
        out = [(b"x-tokenlane-model", (reports.served_model or p.request.model).encode())]
        if reports.attempts:
            out += [(b"x-tokenlane-attempts", str(len(reports.attempts)).encode()),
                    (b"x-tokenlane-fallback", str(fallbacks(reports.attempts)).encode())]
        if p.route_rule:
            out.append((b"x-tokenlane-route-rule", p.route_rule.encode()))
        return out

    async def __call__(self, p: Priced, scope: Scope, body: bytes, send: Send, *,
                       receive: Receive | None = None, disconnected: asyncio.Future[Any] | None = None) -> Outcome:
        """Runs the app; returns what it saw (``body`` holds a JSON response, ``text`` a stream's)."""
        body, drop_usage_chunk = _ask_for_stream_usage(p.request, body)
        scope = {**scope, "headers": with_content_length(scope["headers"], len(body))}
        reports = UsageReports()
        outcome = Outcome(reports=reports)
        finished: dict[str, Any] = {}
        body_given = False

        async def finish() -> dict[str, Any]:
            if not finished:
                # The row is journaled (on disk) before the response completes; without a
                # journal (PostgreSQL) we wait for the ledger itself.
                fields, wait = self.reconcile(p, outcome)
                finished.update(fields)
                outcome.cost_pico_usd = fields["cost_pico_usd"]
                if wait is not None:
                    try:
                        await asyncio.wrap_future(wait)
                    except StorageError:  # the ledger stayed unwritable past its retries: the answer still goes out
                        log.error("tokenlane: ledger row of %s not written: %s", p.id, fields)
                await p.settled()
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
        stream_start: dict[str, Any] = {}
        buffered = bytearray()
        reader: StreamReader | None = None

        async def inner_send(message: dict[str, Any]) -> None:
            nonlocal reader
            kind = message["type"]
            if kind == "http.response.start":
                outcome.status = message["status"]
                response_headers = list(message.get("headers") or [])
                content_type = header(response_headers, b"content-type")
                start = {**message, "headers": response_headers + self.headers(p)}
                if "text/event-stream" in content_type:
                    reader = StreamReader(drop_usage_only_chunks=drop_usage_chunk)
                    stream_start.update(start)  # sent with the first chunk, once the upstream answered
                    return
                if "json" in content_type:
                    held.update(start)  # sent with the body, once the cost is known
                    return
                await send({**start, "headers": start["headers"] + self.served_headers(p, reports)})
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
                outcome.body = bytes(buffered)
                seen = read_json_response(outcome.body)
                outcome.usage, outcome.text = seen.usage, seen.text
                cost = await finish()
                held["headers"] = [*held["headers"], *self.served_headers(p, reports),
                                   (b"x-tokenlane-cost", usd_text(cost["cost_pico_usd"]).encode())]
                await send(held)
                await send({"type": "http.response.body", "body": bytes(buffered), "more_body": False})
                return
            if stream_start:
                await send({**stream_start, "headers": stream_start["headers"] + self.served_headers(p, reports)})
                stream_start.clear()
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
            await self.app(scope, inner_receive, inner_send)
        except BaseException as exc:
            outcome.error = f"{type(exc).__name__}: {exc}" or "cancelled"
            raise
        finally:
            _current_reports.reset(token)
            if disconnected is not None:
                disconnected.cancel()
            if not finished:
                # The app failed, was cancelled or never finished its response: reconcile now and
                # wait for it (after this row's insert, on the ledger thread) even if this task was
                # cancelled, so that nothing can lose the ledger row or a reservation.
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
                fields, wait = self.reconcile(p, outcome)
                finished.update(fields)
                if wait is not None:
                    try:
                        # The write is queued on the ledger thread and completes without us; waiting
                        # longer would hold the event loop while the ledger retries an outage.
                        wait.result(timeout=5.0)
                    except FutureTimeout:
                        log.error("tokenlane: ledger row of %s still pending (the ledger is retrying)", p.id)
                    except StorageError:
                        log.error("tokenlane: ledger row of %s not written: %s", p.id, fields)
                if p.settling is not None:
                    # (A second cancellation while waiting ends the wait; the first one goes on.)
                    with contextlib.suppress(asyncio.CancelledError):
                        await p.settled()
        return outcome


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


__all__ = ["Upstream"]
