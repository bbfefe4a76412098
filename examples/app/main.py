"""The example app: FastAPI screens for users and admins on top of the tokenlane middleware.

``main.py`` only assembles: settings, the tokenlane runtime and provider, the session middleware,
the routers (one per screen) and the error pages. Run from the repository root:

    python -m uvicorn examples.app.main:app --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from tokenlane.providers import ProviderError

from . import state
from .routes import admin, api, auth, config, reports, user
from .security import LoginRequired, LoginThrottle, SecurityHeaders, hash_password, login_redirect_target, verify_password, wants_json
from .limits import UserLimits, identify_hook
from .settings import Settings
from .web import HERE, render

log = logging.getLogger("tokenlane.app")


def seed_admin(tl: Any, settings: Settings) -> None:
    """The admin named by TOKENLANE_ADMIN_EMAIL/PASSWORD exists with that password; with neither set
    and no admin at all, one is created with a generated password, printed once."""
    led = tl.ledger
    if settings.admin_email and settings.admin_password:
        email = settings.admin_email.strip().lower()
        existing = led.get_user_by_email(email)
        if existing is None:
            led.create_user(email, password_hash=hash_password(settings.admin_password), role="admin", name="Administrator")
        else:
            fields: dict[str, Any] = {}
            if existing.get("role") != "admin":
                fields["role"] = "admin"
            if existing.get("disabled"):
                fields["disabled"] = False
            if not verify_password(existing.get("password_hash"), settings.admin_password):
                fields["password_hash"] = hash_password(settings.admin_password)
            if fields:
                led.update_user(existing["id"], **fields)
        return
    if any(u.get("role") == "admin" for u in led.list_users()):
        return
    email = "admin@localhost"
    password = secrets.token_urlsafe(12)
    led.create_user(email, password_hash=hash_password(password), role="admin", name="Administrator")
    print(
        f"\n  tokenlane app: created the first administrator\n    email:    {email}\n    password: {password}\n"
        "  (shown once; set TOKENLANE_ADMIN_EMAIL / TOKENLANE_ADMIN_PASSWORD to choose your own)\n",
        file=sys.stderr,
        flush=True,
    )


def build_runtime(settings: Settings, user_limits: UserLimits) -> Any:
    """The tokenlane runtime on the app's database, with the limits, default budget and policy an
    admin saved on /config (they are construction-time settings of the scheduler), and the
    per-user request limits checked before anything is scheduled."""
    from tokenlane import Ledger, Tokenlane

    ledger = Ledger(settings.db_path)
    user_limits.load(ledger)
    identify = identify_hook(user_limits)
    # /metrics (tenants, spend) is for operators: only an admin's API key reads it.
    kwargs: dict[str, Any] = {"db": settings.db_path, "require_api_key": True, "metrics_access": "admin"}
    if "TOKENLANE_REDACT_PROMPTS" not in os.environ:
        # The app shows users their own prompts and responses, so the ledger keeps a preview of both.
        kwargs["redact_prompts"] = False
    if settings.policy:
        kwargs["policy"] = settings.policy
    if settings.max_concurrency:
        kwargs["max_concurrency"] = settings.max_concurrency
    if settings.local_model:
        from tokenlane import Pricing
        from tokenlane.local_model import PRICING

        kwargs["pricing"] = Pricing.default().with_overrides(PRICING)
    kwargs.update(state.runtime_kwargs(ledger))
    runtime = Tokenlane(ledger=ledger, identify=identify, **kwargs)
    identify.runtime = runtime
    return runtime


def create_app(
    settings: Settings | None = None, runtime: Any = None, provider: Any = None, middleware: Any = None
) -> FastAPI:
    """The app; tests pass their own settings (a temporary database) and may pass the runtime."""
    settings = settings or Settings.from_env()
    user_limits = UserLimits()
    if runtime is None:
        runtime = build_runtime(settings, user_limits)
    else:
        user_limits.load(runtime.ledger)
    local_server: Any = None
    if provider is None and runtime.upstreams is not None:
        provider = runtime.upstreams  # the `upstreams` / `fallbacks` of TOKENLANE_CONFIG
    elif provider is None and not settings.local_model:
        from tokenlane.providers import provider_from_env

        provider = provider_from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal local_server
        seed_admin(runtime, settings)
        state.apply_saved_settings(runtime)
        if app.state.provider is None:  # the local model: started with the app, stopped with it
            from tokenlane.local_model import LocalModelServer

            local_server = await asyncio.to_thread(LocalModelServer.start)
            app.state.provider = local_server.provider()
            log.info("local model SmolLM2-135M-Instruct served by llama.cpp at %s", local_server.base_url)
        try:
            yield
        finally:
            if local_server is not None:
                await app.state.provider.aclose()
                await asyncio.to_thread(local_server.stop)

    app = FastAPI(title="tokenlane", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.tl = runtime
    app.state.provider = provider
    app.state.user_limits = user_limits
    app.state.login_throttle = LoginThrottle(settings.login_max_failures, settings.login_window_s)

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (auth, user, config, admin, reports, api):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        target = "/dashboard" if request.session.get("uid") else "/login"
        return RedirectResponse(target, status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if wants_json(request):
            return JSONResponse({"error": {"message": "Log in first.", "type": "authentication_error", "code": "login_required"}}, status_code=401)
        return RedirectResponse(login_redirect_target(request), status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if wants_json(request):
            kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
            return JSONResponse(
                {"error": {"message": str(exc.detail), "type": kind, "code": None}}, status_code=exc.status_code, headers=exc.headers
            )
        titles = {403: "Not allowed", 404: "Not found", 405: "Not allowed", 429: "Too many attempts"}
        return render(
            request, "error.html", status_code=exc.status_code,
            title=titles.get(exc.status_code, "Something went wrong"), message=str(exc.detail),
        )

    @app.exception_handler(ProviderError)
    async def upstream_failed(request: Request, exc: ProviderError) -> Response:
        status, body, headers = exc.response()  # the upstream's failure, OpenAI-shaped (502/503/429 ...)
        if wants_json(request):
            return JSONResponse(body, status_code=status, headers=headers)
        return render(request, "error.html", status_code=status, title="The model is unavailable",
                      message=body["error"]["message"])

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors())
        message = f"Missing or invalid field(s): {fields}."
        if wants_json(request):
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": None}}, status_code=400)
        return render(request, "error.html", status_code=400, title="Invalid input", message=message)

    app.add_middleware(SecurityHeaders)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.resolved_secret_key(),
        session_cookie="tokenlane_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.https_only,
    )
    # Tokenlane.submit runs the form's jobs through the app below the middleware, with a scope of its
    # own that lacks Starlette's "app" key; routes read app.state through it.
    app.add_middleware(_WithApp, owner=app)
    if middleware is None:
        from tokenlane import TokenlaneMiddleware as middleware
    # Outermost: every request, /v1/chat/completions and the form's background jobs alike, is counted,
    # priced and scheduled before the route runs.
    app.add_middleware(middleware, runtime=runtime)
    return app


class _WithApp:
    """Pure ASGI: puts the FastAPI app in scopes that reach it without passing through it."""

    def __init__(self, app: Any, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if "app" not in scope:
            scope["app"] = self.owner
        await self.app(scope, receive, send)


def __getattr__(name: str) -> Any:
    # `examples.app.main:app` is built on first access, so importing this module (tests) opens no database.
    if name == "app":
        value = create_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
