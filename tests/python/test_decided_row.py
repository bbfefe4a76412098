"""The decided row (issue 16): written once the event loop is done with the request's step, so the
wrapped app starts first; a request answered within that step journals one record, its final one,
which carries the row as decided."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI
from fastapi.responses import Response

from tokenlane import Tokenlane, TokenlaneMiddleware

ANSWER = json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}).encode()
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello"}]}).encode()


def _app(rt: Tokenlane, seen: list, wait: bool) -> TokenlaneMiddleware:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        if wait:  # an upstream call: the loop turns, and the row shows the request running meanwhile
            await asyncio.sleep(0.01)
            rt.thread.flush()
            seen.extend(r["status"] for r in rt.ledger.list_requests(limit=10))
        return Response(ANSWER, media_type="application/json")

    return TokenlaneMiddleware(app, runtime=rt)


async def _call(app: TokenlaneMiddleware) -> dict:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("t", 80), "state": {},
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]}
    sent: dict = {}
    given = False

    async def receive() -> dict:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            sent.update(status=message["status"], headers=dict(message["headers"]))

    await app(scope, receive, send)
    await asyncio.sleep(0)  # the loop turns, as a server's does
    return sent


def _records(rt: Tokenlane, monkeypatch) -> list[bytes]:
    lines: list[bytes] = []
    record = rt.thread.record

    def counting(line: bytes, **kw):
        lines.append(line)
        return record(line, **kw)

    monkeypatch.setattr(rt.thread, "record", counting)
    return lines


def test_answered_within_the_step_journals_one_record_with_the_decided_row(tmp_path, monkeypatch) -> None:
    rt = Tokenlane(db=str(tmp_path / "l.db"))
    app = _app(rt, [], wait=False)

    async def twice() -> dict:
        await _call(app)  # the first request reads the tenant's budget and the budget list: the loop turns
        lines[:] = []
        return await _call(app)

    lines = _records(rt, monkeypatch)
    sent = asyncio.run(twice())
    assert sent["status"] == 200
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["row"]["decision"] == "admit" and record["row"]["status"] == "running"
    assert record["final"]["status"] == "succeeded"
    rt.thread.flush()
    row = rt.ledger.get_request(sent["headers"][b"x-tokenlane-request-id"].decode())
    assert (row["status"], row["decision"], row["input_tokens"], row["output_tokens"]) == ("succeeded", "admit", 9, 2)


def test_a_request_that_waits_shows_running_then_is_settled(tmp_path, monkeypatch) -> None:
    rt = Tokenlane(db=str(tmp_path / "l.db"))
    lines = _records(rt, monkeypatch)
    seen: list[str] = []
    sent = asyncio.run(_call(_app(rt, seen, wait=True)))
    assert sent["status"] == 200
    assert seen == ["running"]  # the decided row was written while the app waited
    assert [("final" in json.loads(line)) for line in lines] == [False, True]
    rt.thread.flush()
    row = rt.ledger.get_request(sent["headers"][b"x-tokenlane-request-id"].decode())
    assert (row["status"], row["decision"]) == ("succeeded", "admit")
