"""Stage: read the body and turn it into an :class:`LLMRequest` (a known API shape by path, or a
route's extractor)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from ..asgi_io import Receive, Scope
from ..errors import RequestError
from ..formats import OPENAI_CHAT, LLMRequest, MalformedRequest, api_for_path, load_json_body, parse_request

Extractor = Callable[[Scope, Any], Union[LLMRequest, Awaitable[LLMRequest]]]

# Servers cap the header block themselves (h11: 16 KiB by default); this holds behind any server.
MAX_HEADER_BYTES = 32 * 1024


class Parse:
    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.extractors: list[tuple[re.Pattern[str], Extractor]] = []

    def add_extractor(self, pattern: str, fn: Extractor) -> None:
        self.extractors.append((re.compile(pattern), fn))

    def extractor_for(self, path: str) -> Extractor | None:
        for pattern, fn in self.extractors:
            if pattern.search(path):
                return fn
        return None

    def handles(self, path: str) -> bool:
        """Whether a POST to ``path`` is an LLM request."""
        return api_for_path(path) is not None or self.extractor_for(path) is not None

    async def read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.items())
        if header_bytes > MAX_HEADER_BYTES:
            raise RequestError(431, f"request headers of {header_bytes} bytes are over the limit of "
                               f"{MAX_HEADER_BYTES} bytes", code="request_header_fields_too_large")
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes is over the limit of {limit} bytes",
                               code="request_too_large")
        chunks: bytearray | None = None
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(499, "client disconnected", type="request_cancelled", code="client_closed_request")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if chunks is None and not more and type(body) is bytes and len(body) <= limit:
                return body  # the usual case: one message holds the whole body (no copy)
            if chunks is None:
                chunks = bytearray()
            chunks.extend(body)
            if len(chunks) > limit:
                raise RequestError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            if not more:
                return bytes(chunks)

    async def parse(self, scope: Scope, body: bytes) -> LLMRequest:
        extractor = self.extractor_for(scope["path"])
        try:
            data: Any = load_json_body(body) if body else None
        except MalformedRequest as exc:
            if extractor is None:
                raise RequestError(400, str(exc), param=exc.param) from None
            data = body  # an extractor's route may take any body: it gets the bytes
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


__all__ = ["Extractor", "Parse"]
