"""A local OpenAI-shaped upstream over HTTP, for tests and demos: the simulated model behind
``/v1/chat/completions`` (JSON and SSE), ``/v1/files`` and ``/v1/batches``, with injected faults.

    app = upstream_app(SimulatedProvider(time_scale=0), faults=Faults(statuses=[429, 503]))
    # uvicorn.run(app, port=0) -> the first two chat calls fail with 429 and 503, then it answers

Faults are what fallbacks must survive: error statuses (with ``Retry-After``), a prompt longer than
a context limit (400 ``context_length_exceeded``), a slow answer (a client timeout), and a stream cut
off after some chunks (the provider has generated, and bills, the tokens sent so far). Every call is
logged in ``Faults.log`` so tests can check what the upstream really saw. Needs starlette and
python-multipart (the ``app`` and ``dev`` extras).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .providers import ProviderError, counted_usage


@dataclass
class Faults:
    """What the next chat calls do instead of answering (consumed in order), and standing limits."""

    statuses: list[int | None] = field(default_factory=list)  # next calls fail with these (None: no fault)
    retry_after_s: float | None = None
    context_limit: int | None = None                   # prompts above this many tokens get a 400
    delay_s: float = 0.0                               # every call waits this long first
    cut_stream_after: int | None = None                # streams break after this many content chunks
    log: list[dict[str, Any]] = field(default_factory=list)


def upstream_app(provider: Any, faults: Faults | None = None, *, models: Sequence[str] | None = None) -> Any:
    """A Starlette app serving ``provider`` (SimulatedProvider or any object with its methods)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    faults = faults or Faults()

    def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> Response:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)

    async def chat(request: Request) -> Response:
        body = await request.json()
        usage = counted_usage(body, "")
        faults.log.append({"model": body.get("model"), "stream": bool(body.get("stream")),
                           "prompt_tokens": usage["prompt_tokens"]})
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if models is not None and body.get("model") not in models:
            return error(404, f"The model {body.get('model')!r} does not exist", "model_not_found")
        status = faults.statuses.pop(0) if faults.statuses else None
        if status is not None:
            headers = {"retry-after": str(faults.retry_after_s)} if faults.retry_after_s is not None else None
            return error(status, f"injected fault {status}", headers=headers)
        if faults.context_limit is not None and usage["prompt_tokens"] > faults.context_limit:
            return error(400, f"This model's maximum context length is {faults.context_limit} tokens; the "
                              f"messages have {usage['prompt_tokens']}", "context_length_exceeded")
        if not body.get("stream"):
            return JSONResponse(await provider.chat(body))

        async def events() -> Any:
            sent = 0
            async for chunk in provider.stream_chat(body):
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                    sent += 1
                    if faults.cut_stream_after is not None and sent >= faults.cut_stream_after:
                        faults.cut_stream_after = None
                        raise ConnectionResetError("injected: stream cut")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def upload(request: Request) -> Response:
        async with request.form() as form:
            file = form.get("file")
            if file is None or isinstance(file, str):
                return error(400, "multipart field 'file' is required")
            return JSONResponse(await provider.upload_file(
                await file.read(), purpose=str(form.get("purpose") or "batch"), filename=file.filename or "batch.jsonl"))

    async def content(request: Request) -> Response:
        try:
            data = await provider.file_content(request.path_params["file_id"])
        except ProviderError as exc:
            return error(exc.status, str(exc))
        return Response(data, media_type="application/jsonl")

    async def create_batch(request: Request) -> Response:
        body = await request.json()
        try:
            return JSONResponse(await provider.create_batch(
                body.get("input_file_id", ""), endpoint=body.get("endpoint", ""),
                completion_window=body.get("completion_window", "24h"), metadata=body.get("metadata")))
        except ProviderError as exc:
            return error(exc.status, str(exc))

    async def get_batch(request: Request) -> Response:
        try:
            return JSONResponse(await provider.retrieve_batch(request.path_params["batch_id"]))
        except ProviderError as exc:
            return error(exc.status, str(exc))

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
    ])


__all__ = ["Faults", "upstream_app"]
