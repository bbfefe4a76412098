"""A small FastAPI app for the middleware tests and the overhead benchmark: an OpenAI-compatible
proxy route on the simulated provider, a handler-calls-the-model route, and a plain route."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tokenlane import Tokenlane, TokenlaneMiddleware
from tokenlane.formats import CUSTOM, LLMRequest
from tokenlane.providers import ProviderError, SimulatedProvider


def build_app(runtime: Tokenlane | None = None, *, provider: Any = None, **settings: Any) -> FastAPI:
    provider = provider or SimulatedProvider(time_scale=0)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if body.get("stream"):
            async def events():
                async for chunk in provider.stream_chat(body):
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(await provider.chat(body))

    @app.post("/ask")
    async def ask(request: Request) -> Any:
        # The usual FastAPI shape: the handler builds the prompt and calls the model itself.
        form = await request.json()
        answer = await provider.chat({"model": "gpt-4o-mini",
                                      "messages": [{"role": "user", "content": form["question"]}]})
        return {"answer": answer["choices"][0]["message"]["content"]}

    @app.exception_handler(ProviderError)
    async def upstream_failed(request: Request, exc: ProviderError) -> JSONResponse:
        status, body, headers = exc.response()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    def ask_extractor(scope: Any, body: Any) -> LLMRequest:
        return LLMRequest(CUSTOM, "gpt-4o-mini", messages=[{"role": "user", "content": body["question"]}],
                          max_tokens=400)

    if runtime is not None:
        app.add_middleware(TokenlaneMiddleware, runtime=runtime, extractors={"^/ask$": ask_extractor})
    else:
        app.add_middleware(TokenlaneMiddleware, extractors={"^/ask$": ask_extractor}, **settings)
    return app
