"""Example app: registration, login, sessions, CSRF and login throttling."""

from __future__ import annotations

import pytest
from app_support import ADMIN_EMAIL, ADMIN_PASSWORD, Client, make_app


@pytest.fixture
def client(tmp_path):
    with Client(make_app(tmp_path)) as c:
        yield c


def test_register_logs_in_and_lands_on_dashboard(client):
    r = client.register("Ada@Example.com", name="Ada")
    assert r.headers["location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200 and "Hello, Ada" in page.text
    assert "ada@example.com" in page.text  # emails are stored lower-case


@pytest.mark.parametrize(
    "email,password,problem",
    [("not-an-email", "password-123", "valid email"), ("a@b.co", "short", "at least 8")],
)
def test_register_rejects_bad_input(client, email, password, problem):
    r = client.form("/register", {"email": email, "password": password})
    assert r.status_code == 400 and problem in r.text


def test_register_refuses_a_taken_email(client):
    client.register("ada@example.com")
    client.logout()
    r = client.form("/register", {"email": "ada@example.com", "password": "password-456"})
    assert r.status_code == 400 and "already exists" in r.text


def test_login_form_uses_email_and_password_inputs(client):
    page = client.get("/login").text
    assert 'name="email"' in page and 'name="password"' in page and 'name="csrf_token"' in page


def test_login_and_logout(client):
    client.register("ada@example.com", "password-123")
    client.logout()
    assert client.get("/dashboard").headers["location"].startswith("/login")
    r = client.form("/login", {"email": "ada@example.com", "password": "wrong-password"})
    assert r.status_code == 401 and "Wrong email or password" in r.text
    client.login("ada@example.com", "password-123")
    assert client.get("/dashboard").status_code == 200
    r = client.form("/logout")
    assert r.status_code == 303
    assert client.get("/dashboard").status_code == 303


def test_seeded_admin_can_log_in(client):
    client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert client.get("/admin").status_code == 200


def test_session_cookie_is_httponly_samesite_and_signed(client):
    r = client.register("ada@example.com")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "tokenlane_session=" in cookie
    # A tampered cookie is not a session.
    value = client.http.cookies["tokenlane_session"]
    client.http.cookies.clear()
    client.http.cookies.set("tokenlane_session", value)
    assert client.get("/dashboard").status_code == 200
    client.http.cookies.clear()
    client.http.cookies.set("tokenlane_session", value[:-6] + ("AAAAAA" if not value.endswith("AAAAAA") else "BBBBBB"))
    assert client.get("/dashboard").status_code == 303


def test_forms_without_the_csrf_token_are_refused(client):
    r = client.form("/register", {"email": "ada@example.com", "password": "password-123"}, csrf=False)
    assert r.status_code == 403
    client.register("ada@example.com")
    for path, data in [("/keys", {"name": "x"}), ("/requests", {"prompt": "hi", "model": "gpt-4o-mini"}), ("/logout", {})]:
        assert client.form(path, data, csrf=False).status_code == 403, path
        r = client.http.post(path, data={**data, "csrf_token": "forged"})
        assert r.status_code == 403, path


def test_login_attempts_are_rate_limited_per_email_and_ip(tmp_path):
    with Client(make_app(tmp_path, login_max_failures=3)) as client:
        client.register("ada@example.com", "password-123")
        client.logout()
        for _ in range(3):
            assert client.form("/login", {"email": "ada@example.com", "password": "nope-nope"}).status_code == 401
        r = client.form("/login", {"email": "ada@example.com", "password": "password-123"})
        assert r.status_code == 429 and "Too many failed attempts" in r.text
        # Another account from the same address is not locked out.
        client.login(ADMIN_EMAIL, ADMIN_PASSWORD)


def test_login_redirects_only_to_local_paths(client):
    client.register("ada@example.com", "password-123")
    client.logout()
    for target, expected in [("/keys", "/keys"), ("https://evil.example/", "/dashboard"), ("//evil.example", "/dashboard")]:
        r = client.form("/login", {"email": "ada@example.com", "password": "password-123", "next": target})
        assert r.headers["location"] == expected
        client.logout()


def test_disabled_users_cannot_log_in_and_lose_their_session(client):
    client.register("ada@example.com", "password-123")
    ada = client.http.app.state.tl.ledger.get_user_by_email("ada@example.com")
    client.http.app.state.tl.ledger.update_user(ada["id"], disabled=True)
    assert client.get("/dashboard").status_code == 303
    r = client.form("/login", {"email": "ada@example.com", "password": "password-123"})
    assert r.status_code == 401 and "disabled" in r.text


def test_passwords_are_stored_as_argon2_and_never_rendered(client):
    client.register("ada@example.com", "password-123")
    stored = client.http.app.state.tl.ledger.get_user_by_email("ada@example.com")["password_hash"]
    assert stored.startswith("$argon2id$")
    client.logout()
    client.login()
    for path in ["/dashboard", "/admin", "/admin/users", "/admin/api/users", "/config", "/keys", "/requests", "/reports"]:
        body = client.get(path).text
        assert "$argon2" not in body and "password_hash" not in body, path


def test_pages_carry_security_headers(client):
    r = client.get("/login")
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "onsubmit=" not in r.text and "onclick=" not in r.text


def test_a_database_server_needs_the_session_key_given():
    """Replicas on PostgreSQL share no file to keep a generated key in, and must all sign sessions
    with the same one: starting without TOKENLANE_SECRET_KEY is a clear error."""
    from examples.app.settings import Settings

    with pytest.raises(SystemExit, match="TOKENLANE_SECRET_KEY"):
        Settings(db_path="postgresql://app@db/tokenlane").resolved_secret_key()
    assert Settings(db_path="postgresql://app@db/tokenlane", secret_key="s").resolved_secret_key() == "s"
