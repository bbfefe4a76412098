"""Helpers for the example app's tests: an app on a temporary database, and a client that logs in
and fills forms the way a browser does (session cookie + the page's CSRF token)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402
from tokenlane.providers import SimulatedProvider  # noqa: E402

from examples.app.main import create_app  # noqa: E402
from examples.app.settings import Settings  # noqa: E402

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "correct horse battery"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def make_app(tmp_path: Path, **overrides: Any) -> Any:
    settings = Settings(
        db_path=str(tmp_path / "app.db"), secret_key="test-secret", admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD, **overrides,
    )
    # The real runtime, ledger and middleware; the simulated model answers at once.
    return create_app(settings, provider=SimulatedProvider(time_scale=0))


class Client:
    """A TestClient that keeps its session and sends the current CSRF token with forms."""

    def __init__(self, app: Any) -> None:
        self.http = TestClient(app, follow_redirects=False)

    def __enter__(self) -> Client:
        self.http.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.__exit__(*exc)

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(path, **kw)

    def token(self) -> str:
        page = self.http.get("/login", follow_redirects=True)
        match = CSRF_META.search(page.text)
        assert match, "every page carries the CSRF token in a meta tag"
        return match.group(1)

    def form(self, path: str, data: dict[str, Any] | None = None, csrf: bool = True) -> Any:
        payload = dict(data or {})
        if csrf:
            payload["csrf_token"] = self.token()
        return self.http.post(path, data=payload)

    def register(self, email: str, password: str = "password-123", name: str = "") -> Any:
        r = self.form("/register", {"email": email, "password": password, "name": name})
        assert r.status_code == 303, r.text
        return r

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Any:
        r = self.form("/login", {"email": email, "password": password})
        assert r.status_code == 303, r.text
        return r

    def logout(self) -> None:
        self.http.get("/logout")
