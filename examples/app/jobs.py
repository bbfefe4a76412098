"""Submitting a prompt from the web form and reading a request back, for any screen that shows one."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from .security import blocking, tenant_of
from .state import PRIORITIES

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")
STATUSES = ("queued", "deferred", "running", "succeeded", "failed", "rejected", "cancelled")
MAX_PROMPT_CHARS = 32_000


class FormError(ValueError):
    pass


def validate_submission(
    pricing: Any, offered: list[str], prompt: str, model: str, priority: str, deadline_s: str, max_tokens: str
) -> dict[str, Any]:
    prompt = prompt.strip()
    if not prompt:
        raise FormError("Write a prompt first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise FormError(f"The prompt is {len(prompt):,} characters; this form takes up to {MAX_PROMPT_CHARS:,}.")
    if model not in offered or model not in pricing:
        raise FormError(f"Choose one of the offered models ({', '.join(offered)}).")
    if priority not in PRIORITIES:
        raise FormError(f"Priority must be one of {', '.join(PRIORITIES)}.")
    deadline_ms = None
    if deadline_s.strip():
        try:
            seconds = float(deadline_s)
        except ValueError:
            raise FormError("The deadline is a number of seconds from now.") from None
        if not 1 <= seconds <= 7 * 86400:
            raise FormError("The deadline must be between 1 second and 7 days from now.")
        deadline_ms = int(seconds * 1000)
    limit = None
    if max_tokens.strip():
        try:
            limit = int(max_tokens)
        except ValueError:
            raise FormError("Max output tokens must be a whole number.") from None
        cap = pricing.max_output_tokens(model) or 128_000
        if not 1 <= limit <= cap:
            raise FormError(f"Max output tokens must be between 1 and {cap:,} for {model}.")
    return {"prompt": prompt, "model": model, "priority": priority, "deadline_ms": deadline_ms, "max_tokens": limit}


async def submit_prompt(tl: Any, user: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
    """The same path as an API call: counted, estimated, priced, scheduled, run, reconciled."""
    body: dict[str, Any] = {
        "model": form["model"],
        "messages": [{"role": "user", "content": form["prompt"]}],
        "user": tenant_of(user),
        "stream": True,  # the request page shows the answer as it is written
    }
    if form["max_tokens"]:
        body["max_tokens"] = form["max_tokens"]
    return await tl.submit(
        path="/v1/chat/completions",
        body=body,
        tenant=tenant_of(user),
        user_id=int(user["id"]),
        priority=form["priority"],
        deadline_ms=form["deadline_ms"],
    )


async def load_job(tl: Any, request_id: str, user: dict[str, Any]) -> dict[str, Any] | None:
    """The request with its live status, when this user may see it (its owner, or an admin)."""
    view = await blocking(tl.job, request_id)
    if not view:
        return None
    job = flatten(view)
    if user.get("role") != "admin" and job.get("user_id") != user["id"]:
        return None
    return job


def flatten(view: dict[str, Any]) -> dict[str, Any]:
    """``Tokenlane.job`` gives the live job (status, decision, response) around the ledger row
    (``request``); screens want one flat record."""
    row = dict(view.get("request") or {})
    decision = view.get("decision")
    if isinstance(decision, dict):
        row["decision"] = decision.get("decision") or row.get("decision")
        row["reason"] = decision.get("reason") or row.get("reason")
        row["message"] = decision.get("message")
    elif isinstance(decision, str):
        row.setdefault("decision", decision)
    live = view.get("status")
    # The live job knows first; once the ledger row is final it is the truth. A success's usage and
    # cost come with its ledger row, written behind the response: until that row is final the
    # request is shown still running, so a page never says "succeeded" without them.
    if live and row.get("status") not in TERMINAL:
        row["status"] = {"pending": "queued", "succeeded": "running"}.get(live, live)
    row.setdefault("id", view.get("id"))
    row["position"] = view.get("position")
    row["response"] = response_text(view.get("response")) or row.get("response_preview")
    return row


def response_text(response: Any) -> str | None:
    """The generated text of an OpenAI chat.completion, of its stream so far (server-sent events),
    or its error message."""
    if isinstance(response, str) and response.lstrip().startswith("data:"):
        return streamed_text(response)
    if isinstance(response, dict):
        if isinstance(response.get("error"), dict):
            return "Error: " + str(response["error"].get("message"))
        try:
            return response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
    return response if isinstance(response, str) and response else None


def streamed_text(events: str) -> str | None:
    """The text of a chat.completion stream's chunks received so far (a cut-off last event is skipped)."""
    parts: list[str] = []
    for line in events.splitlines():
        data = line[5:].strip() if line.startswith("data:") else ""
        if not data or data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk.get("error"), dict):
            parts.append("\nError: " + str(chunk["error"].get("message")))
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts) or None


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    """What the request page polls: the fields it redraws, as plain JSON."""
    keys = (
        "id", "status", "decision", "reason", "position", "model", "priority", "queue_ms",
        "est_input_tokens", "est_output_p50", "est_output_p90", "est_cost_pico_usd",
        "input_tokens", "output_tokens", "cached_input_tokens", "cost_pico_usd",
        "created_at", "started_at", "finished_at", "error", "message",
    )
    out = {k: job.get(k) for k in keys}
    out["response"] = job.get("response")
    out["done"] = job.get("status") in TERMINAL
    return out


def parse_day(text: str, end: bool = False) -> float | None:
    """A YYYY-MM-DD filter as epoch seconds (UTC); the end of the day for an upper bound."""
    if not text:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise FormError(f"{text!r} is not a date like 2026-01-31.") from None
    if end:
        day += dt.timedelta(days=1)
    return day.timestamp()


def now() -> float:
    return time.time()
