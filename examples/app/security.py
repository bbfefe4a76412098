"""Passwords, sessions, CSRF, login throttling and the role checks every route depends on."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import quote

from anyio import to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import Depends, HTTPException, Request

_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" close to "wrong password".
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD_LENGTH = 8
MAX_ID = 2**63 - 1  # ledger ids are SQLite integers: a larger path id is a 400, not an overflow
ROLES = ("client", "admin")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def public_user(user: dict[str, Any] | None) -> dict[str, Any] | None:
    """A user row safe to render or serialise: never the password hash."""
    if user is None:
        return None
    return {k: v for k, v in user.items() if k != "password_hash"}


def tenant_of(user: dict[str, Any]) -> str:
    """The tenant a user's requests are scheduled and budgeted under."""
    return user.get("tenant") or user["email"]


async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs a blocking ledger call off the event loop."""
    return await to_thread.run_sync(lambda: fn(*args, **kwargs))


# -- sessions ----------------------------------------------------------------------------------------
# The session itself is Starlette's SessionMiddleware: a cookie signed with itsdangerous, HttpOnly,
# SameSite=Lax, Secure when configured. It holds only the user id and the CSRF token.


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def credentials_mark(request: Request, user: dict[str, Any]) -> str:
    """What a session is bound to: the user's id, password hash and role, under the app's secret.
    Changing the password or the role (or disabling the user) changes it, which ends every
    session of that user on its next request, wherever the cookie is."""
    secret = request.app.state.settings.resolved_secret_key().encode()
    fields = f"{user['id']}\x1f{user.get('password_hash') or ''}\x1f{user.get('role')}"
    return hmac.new(secret, fields.encode(), hashlib.sha256).hexdigest()


def login_session(request: Request, user: dict[str, Any]) -> None:
    # A new session on login (and on re-login after a password change): a token or cookie planted
    # before authentication is worthless afterwards.
    request.session.clear()
    request.session["uid"] = int(user["id"])
    request.session["mark"] = credentials_mark(request, user)
    request.session["csrf"] = secrets.token_urlsafe(32)


def logout_session(request: Request) -> None:
    request.session.clear()


async def require_csrf(request: Request) -> None:
    """Every state-changing request carries the session's token in the form or a header."""
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise HTTPException(status_code=403, detail="The form expired or did not come from this site. Reload the page and try again.")


# -- who is asking -------------------------------------------------------------------------------------


class LoginRequired(Exception):
    """Raised by ``require_user``; HTML routes answer with a redirect to /login, APIs with 401."""


def wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(("/api/", "/admin/api/", "/v1/")) or "application/json" in request.headers.get("accept", "")


async def current_user(request: Request) -> dict[str, Any] | None:
    if "user" in request.scope.get("state", {}):
        return request.state.user
    uid = request.session.get("uid")
    user = None
    if isinstance(uid, int):
        user = await blocking(request.app.state.tl.ledger.get_user, uid)
        mark = request.session.get("mark")
        valid = isinstance(mark, str) and user is not None and hmac.compare_digest(mark, credentials_mark(request, user))
        if user is not None and (user.get("disabled") or not valid):
            request.session.clear()  # disabled, or the password or role changed since this session began
            user = None
    request.state.user = public_user(user)
    return request.state.user


async def require_user(user: dict[str, Any] | None = Depends(current_user)) -> dict[str, Any]:
    if user is None:
        raise LoginRequired()
    return user


async def require_admin(user: dict[str, Any] = Depends(require_user)) -> dict[str, Any]:
    if user.get("role") != "admin":
        raise HTTPException(status_code=403, detail="This page is for administrators.")
    return user


def login_redirect_target(request: Request) -> str:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return "/login?next=" + quote(target, safe="")


def safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a login to another host."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/dashboard"


# -- login throttling ------------------------------------------------------------------------------------


class LoginThrottle:
    """Counts failed logins in a sliding window, per (email, client IP) and per client IP across
    emails (one address trying many accounts); in memory, per process."""

    def __init__(self, max_failures: int, window_s: float, max_failures_per_ip: int | None = None) -> None:
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures * 5 if max_failures_per_ip is None else max_failures_per_ip
        self.window_s = window_s
        self._failures: dict[tuple[str | None, str], deque[float]] = {}

    def _recent(self, key: tuple[str | None, str], now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, email: str, ip: str, now: float | None = None) -> float | None:
        """Seconds until the next attempt is allowed, or None when one is allowed now."""
        now = time.time() if now is None else now
        waits = []
        for key, limit in (((email.lower(), ip), self.max_failures), ((None, ip), self.max_failures_per_ip)):
            q = self._recent(key, now)
            if limit and len(q) >= limit:
                waits.append(max(1.0, q[0] + self.window_s - now))
        return max(waits) if waits else None

    def failed(self, email: str, ip: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if len(self._failures) > 100_000:  # bound memory under a credential-stuffing flood
            self._failures.clear()
        self._recent((email.lower(), ip), now).append(now)
        self._recent((None, ip), now).append(now)  # None: every email from this address

    def succeeded(self, email: str, ip: str) -> None:
        self._failures.pop((email.lower(), ip), None)


# -- response headers -------------------------------------------------------------------------------------

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    # Everything is served by the app itself: no CDN, no inline script.
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding the headers above to every HTTP response that lacks them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers") or []}
                message["headers"] = list(message.get("headers") or []) + [h for h in _HEADERS if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
