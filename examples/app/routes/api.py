"""JSON endpoints: the request page's live status, and the OpenAI-compatible
``POST /v1/chat/completions`` that API-key clients (the OpenAI SDKs) call through the middleware."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from ..jobs import job_json, load_job
from ..security import blocking, require_user

router = APIRouter()


@router.get("/api/requests/{request_id}")
async def request_status(request: Request, request_id: str, user: dict[str, Any] = Depends(require_user)) -> dict[str, Any]:
    job = await load_job(request.app.state.tl, request_id, user)
    if job is None:
        raise HTTPException(status_code=404, detail="No such request.")
    return job_json(job)


def openai_error(status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status, headers=headers)


async def api_identity(request: Request) -> dict[str, Any] | None:
    """The user behind this call: a background job submitted by the web form (the runtime vouches
    for it), or an active API key in ``Authorization: Bearer``. None when neither."""
    given = request.scope.get("tokenlane.identity")  # set by Tokenlane.submit on its own requests only
    if given is not None and getattr(given, "user_id", None) is not None:
        return {"user_id": given.user_id, "tenant": given.tenant}
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    found = await blocking(request.app.state.tl.ledger.verify_api_key, token.strip())
    if not found:
        return None
    user = await blocking(request.app.state.tl.ledger.get_user, found["user_id"])
    if user is None or user.get("disabled"):
        return None
    return found


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    who = await api_identity(request)
    if who is None:
        return openai_error(
            401, "Missing or invalid API key. Create one on /keys and send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error", "invalid_api_key",
        )
    try:
        body = await request.json()
    except ValueError:
        return openai_error(400, "The body is not valid JSON.", "invalid_request_error")
    problem = _check_body(body)
    if problem:
        return openai_error(400, problem, "invalid_request_error")
    provider = request.app.state.provider
    if body.get("stream"):
        return SSEResponse(provider, body)
    try:
        result = await provider.chat(body)
    except Exception as e:  # the upstream failed after retries: say so in OpenAI's shape
        return openai_error(502, f"The model provider failed: {e}", "api_error", "upstream_error")
    return JSONResponse(result)


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required (a string)."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required (a non-empty list of {role, content})."
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return "Every message needs a 'role' and 'content'."
    return None


class SSEResponse(Response):
    """The chunks as server-sent events. The closing ``data: [DONE]`` travels in the response's last
    message, so the middleware has reconciled the request by the time a client sees the end (a
    StreamingResponse sends an empty last message after it, which a client that hangs up at [DONE]
    can cut off, leaving the request recorded as not completed)."""

    media_type = "text/event-stream"

    def __init__(self, provider: Any, body: dict[str, Any]) -> None:
        # Not Response.__init__: it would announce a content-length of 0.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.provider = provider
        self.body_json = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for chunk in self.provider.stream_chat(self.body_json):
                data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception as e:  # headers are sent: report the failure in the stream, as OpenAI does
            err = {"error": {"message": f"The model provider failed: {e}", "type": "api_error", "code": "upstream_error"}}
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(err).encode() + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
