"""/register, /login, /logout."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from ..security import (
    MIN_PASSWORD_LENGTH,
    blocking,
    current_user,
    hash_password,
    login_session,
    logout_session,
    require_csrf,
    require_user,
    safe_next,
    verify_password,
)
from ..state import apply_default_budget
from ..web import flash, render

router = APIRouter()

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def check_credentials(email: str, password: str) -> str | None:
    """The problem with a new account's email/password, or None."""
    if not EMAIL_RE.match(email):
        return "Enter a valid email address."
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "That password is too long."
    return None


@router.get("/register")
async def register_form(request: Request, user: Any = Depends(current_user)) -> Response:
    if user:
        return RedirectResponse("/dashboard", status_code=303)
    return render(request, "register.html", title="Create an account")


@router.post("/register", dependencies=[Depends(require_csrf)])
async def register(request: Request, email: str = Form(""), password: str = Form(""), name: str = Form("")) -> Response:
    email = email.strip().lower()
    problem = check_credentials(email, password)
    led = request.app.state.tl.ledger
    if problem is None and await blocking(led.get_user_by_email, email) is not None:
        problem = "An account with this email already exists. Log in instead."
    if problem:
        return render(request, "register.html", status_code=400, title="Create an account", error=problem, email=email, name=name)
    password_hash = await blocking(hash_password, password)
    uid = await blocking(led.create_user, email, password_hash=password_hash, role="client", name=name.strip()[:100] or None)
    await blocking(apply_default_budget, request.app.state.tl, email)
    login_session(request, await blocking(led.get_user, uid))
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str = "", user: Any = Depends(current_user)) -> Response:
    if user:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", title="Log in", next=safe_next(next) if next else "")


@router.post("/login", dependencies=[Depends(require_csrf)])
async def login(request: Request, email: str = Form(""), password: str = Form(""), next: str = Form("")) -> Response:
    email = email.strip().lower()
    ip = client_ip(request)
    throttle = request.app.state.login_throttle
    wait = throttle.retry_after(email, ip)
    if wait is not None:
        minutes = max(1, round(wait / 60))
        return render(
            request, "login.html", status_code=429, title="Log in", email=email, next=next,
            error=f"Too many failed attempts from your address. Try again in {minutes} minute(s).",
        )
    led = request.app.state.tl.ledger
    user = await blocking(led.get_user_by_email, email)
    ok = await blocking(verify_password, user.get("password_hash") if user else None, password)
    if not ok or user is None or user.get("disabled"):
        throttle.failed(email, ip)
        message = "This account is disabled. Ask an administrator." if ok and user and user.get("disabled") else "Wrong email or password."
        return render(request, "login.html", status_code=401, title="Log in", email=email, next=next, error=message)
    throttle.succeeded(email, ip)
    login_session(request, user)
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/account/password", dependencies=[Depends(require_csrf)])
async def change_password(request: Request, current_password: str = Form(""), new_password: str = Form(""),
                          user: dict[str, Any] = Depends(require_user)) -> Response:
    """A new password ends every other session of the user (their mark changes); this one is renewed."""
    led = request.app.state.tl.ledger
    stored = await blocking(led.get_user, int(user["id"]))
    if not await blocking(verify_password, stored.get("password_hash") if stored else None, current_password):
        raise HTTPException(status_code=403, detail="The current password is wrong.")
    problem = check_credentials(user["email"], new_password)
    if problem:
        raise HTTPException(status_code=400, detail=problem)
    await blocking(led.update_user, int(user["id"]), password_hash=await blocking(hash_password, new_password))
    login_session(request, await blocking(led.get_user, int(user["id"])))
    flash(request, "Password changed. Every other session of yours has ended.")
    return RedirectResponse("/keys", status_code=303)


@router.post("/logout", dependencies=[Depends(require_csrf)])
async def logout(request: Request) -> Response:
    logout_session(request)
    return RedirectResponse("/login", status_code=303)


@router.get("/logout")
async def logout_get(request: Request) -> Response:
    # A plain link works too: logging out is harmless, so it needs no token.
    logout_session(request)
    return RedirectResponse("/login", status_code=303)
