"""Small ASGI plumbing the stages and the middleware share: header access, plain responses,
OpenAI-shaped error responses, waiting for a client to hang up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers, names lower-cased (a repeated header keeps its last value)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """One response header's value, lower-cased ("" when absent)."""
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1").lower()
    return ""


def with_content_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers or () if k.lower() != b"content-length"]
    out.append((b"content-length", str(length).encode()))
    return out


async def respond(send: Send, status: int, body: bytes, content_type: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def respond_json(send: Send, status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await respond(send, status, json.dumps(value, default=str).encode(), "application/json", headers)


async def send_error(send: Send, exc: RequestError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """The OpenAI-shaped error response of a refusal, with Retry-After when it has one."""
    out = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.retry_after_s is not None:
        out.append((b"retry-after", str(max(1, int(exc.retry_after_s + 0.999))).encode()))
    await respond_json(send, exc.status, exc.body(), out + list(headers or []))


async def wait_disconnect(receive: Receive) -> dict[str, Any]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message


class DisconnectWatch:
    """Watches for the client hanging up, from the moment a request has to wait (queued). It is
    started only then: an admitted request's app reads ``receive`` itself, and a watcher task per
    request would be work every response waits for. Once started, the app reads the hang-up from
    :attr:`future` (one reader of ``receive`` at a time)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.future: asyncio.Future[dict[str, Any]] | None = None

    def start(self) -> asyncio.Future[dict[str, Any]]:
        if self.future is None:
            self.future = asyncio.ensure_future(wait_disconnect(self.receive))
        return self.future

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


__all__ = ["DisconnectWatch", "Receive", "Scope", "Send", "header", "request_headers", "respond", "respond_json", "send_error",
           "wait_disconnect", "with_content_length"]
