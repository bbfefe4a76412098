"""The one error type of the request path: an HTTP status and an OpenAI-shaped body.

Every stage raises it; the middleware turns it into the response. It sits at the bottom of the
package so that stages need not import the runtime.
"""

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


__all__ = ["RequestError"]
