"""Refusals: :class:`RequestError` (an HTTP status and an OpenAI-shaped error body) and how a
scheduler decision to refuse looks over HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RequestError(Exception):
    """A request tokenlane refuses: HTTP status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after_s: float | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def ledger_unavailable(exc: Exception) -> RequestError:
    """The ledger cannot answer a call the request needs (PostgreSQL down; SQLite locked, on a full
    disk or read-only past the ledger thread's retries): 503, retry shortly."""
    return RequestError(503, f"the ledger is unavailable: {exc}", type="service_unavailable",
                        code="ledger_unavailable", retry_after_s=1.0)


# Scheduler reasons → how the refusal looks over HTTP (status, OpenAI error type, code).
_REFUSALS: dict[str, tuple[int, str, str]] = {
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "exceeds_budget": (429, "insufficient_quota", "insufficient_quota"),
    "rate_limit_rpm": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "rate_limit_tpm": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "concurrency": (429, "rate_limit_exceeded", "rate_limit_exceeded"),
    "queue_full": (429, "rate_limit_exceeded", "queue_full"),
    "max_wait": (429, "rate_limit_exceeded", "queue_timeout"),
    "deadline": (429, "rate_limit_exceeded", "deadline_unreachable"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "admin": (409, "request_rejected", "admin"),
    "cancelled": (499, "request_cancelled", "cancelled"),
}


def refusal(decision: Any) -> RequestError:
    """The RequestError for a scheduler Decision that refuses (or sheds) a request."""
    status, type_, code = _REFUSALS.get(decision.reason, (429, "rate_limit_exceeded", decision.reason))
    return RequestError(status, decision.message, type=type_, code=code, retry_after_s=decision.retry_after_s)


def decision_dict(decision: Any) -> dict[str, Any]:
    """A scheduler Decision as the JSON a job's status and ``Tokenlane.submit`` show."""
    return {"decision": decision.kind, "reason": decision.reason, "message": decision.message,
            "position": getattr(decision, "position", None), "eta_s": getattr(decision, "eta_s", None),
            "retry_after_s": decision.retry_after_s}


__all__ = ["RequestError", "decision_dict", "ledger_unavailable", "refusal"]
