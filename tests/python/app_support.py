"""Helpers for the example app's tests: an app on a temporary database, and a client that logs in
and fills forms the way a browser does (session cookie + the page's CSRF token)."""

from __future__ import annotations

import json
import os
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
    """The app on the test's database: an SQLite file in ``tmp_path``, or (TOKENLANE_TEST_STORE=
    postgres) a PostgreSQL database and a Redis database of its own, as a replica would run with
    TOKENLANE_DB and TOKENLANE_STATE set. A second call with the same ``tmp_path`` reopens them."""
    env = {"TOKENLANE_SPOOL": str(tmp_path / "spool.db")}
    db = str(tmp_path / "app.db")
    if os.environ.get("TOKENLANE_TEST_STORE") == "postgres":
        db, env["TOKENLANE_STATE"] = _app_store(tmp_path)
    settings = Settings(db_path=db, secret_key="test-secret", admin_email=ADMIN_EMAIL,
                        admin_password=ADMIN_PASSWORD, **overrides)
    # The real runtime, ledger and middleware; the simulated model answers at once.
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read once, while the runtime is built
    try:
        return create_app(settings, provider=SimulatedProvider(time_scale=0))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _app_store(tmp_path: Path) -> tuple[str, str]:
    """(PostgreSQL URL, Redis URL) of the app in ``tmp_path``, made on first use (the servers of
    scripts/test, exported by conftest's ``servers`` fixture)."""
    import redis

    from store_support import fresh_database

    saved = tmp_path / "app-store.json"
    if saved.exists():
        return tuple(json.loads(saved.read_text()))  # type: ignore[return-value]
    base = os.environ["TOKENLANE_TEST_REDIS"].rsplit("/", 1)[0]
    n = redis.Redis.from_url(base + "/0").incr("tokenlane-tests:next-db") % 15 + 1
    redis.Redis.from_url(f"{base}/{n}").flushdb()
    urls = (fresh_database(os.environ["TOKENLANE_TEST_PG"]), f"{base}/{n}")
    saved.write_text(json.dumps(urls))
    return urls


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
