"""Templates, formatting filters and the one ``render`` every HTML route uses."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined

from .security import csrf_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

PICO = Decimal(10) ** 12


def usd(pico: int | None, digits: int = 6) -> str:
    """Pico-dollars as a dollar amount for display, with enough digits for small requests."""
    if pico is None or isinstance(pico, Undefined):
        return "—"
    value = Decimal(int(pico)) / PICO
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "$" + text


def usd_input(pico: int | None) -> str:
    """Pico-dollars as the exact amount a form field takes back ("" for none)."""
    if pico is None or isinstance(pico, Undefined):
        return ""
    text = format(Decimal(int(pico)) / PICO, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def price(value: Any) -> str:
    """A Decimal price per million tokens as plain dollars ($10, $0.075), never 1E+1."""
    if value is None or isinstance(value, Undefined):
        return "—"
    text = format(Decimal(value), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "$" + text


def num(n: Any) -> str:
    if n is None or n == "" or isinstance(n, Undefined):
        return "—"
    if isinstance(n, float):
        return f"{n:,.1f}"
    return f"{int(n):,}"


def when(ts: float | None) -> str:
    if not ts or isinstance(ts, Undefined):
        return "—"
    return dt.datetime.fromtimestamp(float(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(ts: float | None) -> str:
    """A timestamp for dense tables: minutes, UTC implied (the full time is in the title)."""
    return when(ts)[:16]


def ms(value: float | None) -> str:
    if value is None or isinstance(value, Undefined):
        return "—"
    value = float(value)
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


templates.env.filters.update(price=price, usd=usd, usd_input=usd_input, num=num, when=when, short=short, ms=ms)
templates.env.globals["STATUS_CLASSES"] = {
    "succeeded": "ok",
    "running": "info",
    "queued": "warn",
    "deferred": "warn",
    "failed": "bad",
    "rejected": "bad",
    "cancelled": "muted",
}


def flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session.setdefault("flash", []).append([kind, message])


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    state = request.app.state
    flashes = request.session.pop("flash", []) if "session" in request.scope else []
    base = {
        "request": request,
        "user": getattr(request.state, "user", None),
        "csrf_token": csrf_token(request) if "session" in request.scope else "",
        "flashes": flashes,
        "simulated": getattr(state.provider, "simulated", False),
        "path": request.url.path,
    }
    base.update(context)
    return templates.TemplateResponse(request, template, base, status_code=status_code)
