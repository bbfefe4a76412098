"""Example app: every admin page and admin API refuses clients (403) and anonymous callers,
checked route by route from the app's own route table, so a new admin route is covered too."""

from __future__ import annotations

import re

import pytest
from app_support import Client, make_app
from fastapi.routing import APIRoute

from examples.app.routes import admin, api, auth, config, reports, user


def admin_routes(app):
    """(method, path) of every route that only admins may use, from each screen's router."""
    out = []
    for module in (admin, api, auth, config, reports, user):
        for route in module.router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in sorted(route.methods - {"HEAD"}):
                if route.path.startswith("/admin") or (route.path == "/config" and method == "POST"):
                    out.append((method, re.sub(r"\{[^}]+\}", "1", route.path)))
    return out


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def test_the_admin_surface_is_what_we_expect(app):
    paths = {p for _, p in admin_routes(app)}
    for expected in ["/admin", "/admin/users", "/admin/users/1", "/admin/scheduler", "/admin/scheduler/process",
                     "/admin/scheduler/reject", "/admin/scheduler/mode", "/admin/dispatch", "/admin/policy",
                     "/admin/api/scheduler", "/admin/api/overview", "/admin/api/users", "/config"]:
        assert expected in paths


def test_clients_get_403_on_every_admin_route(app):
    with Client(app) as c:
        c.register("client@example.com")
        token = c.token()
        routes = admin_routes(app)
        for method, path in routes:
            if method == "GET":
                r = c.get(path)
            else:  # a valid CSRF token, so the refusal is the role check and nothing else
                r = c.http.request(method, path, data={"csrf_token": token, "policy": "fifo", "mode": "manual", "id": "x"})
            assert r.status_code == 403, (method, path, r.status_code)
        # The JSON API answers in JSON.
        r = c.get("/admin/api/scheduler")
        assert r.json()["error"]["type"] == "permission_error"


def test_anonymous_callers_are_sent_to_login_or_get_401(app):
    with Client(app) as c:
        for method, path in admin_routes(app):
            r = c.http.request(method, path)
            if "/api/" in path:
                assert r.status_code in (401, 403), (method, path)
            elif method == "GET":
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path)
            else:
                assert r.status_code in (303, 403), (method, path)


def test_admins_reach_every_admin_page(app):
    with Client(app) as c:
        c.login()
        for method, path in admin_routes(app):
            if method == "GET" and "{" not in path and path != "/admin/users/1":
                assert c.get(path).status_code == 200, path


def test_users_see_only_their_own_requests(app):
    with Client(app) as c:
        c.register("ada@example.com")
        r = c.form("/requests", {"prompt": "Say hello", "model": "gpt-4o-mini", "priority": "standard"})
        rid = r.headers["location"].rsplit("/", 1)[1]
        assert c.get(f"/requests/{rid}").status_code == 200
        c.logout()
        c.register("bob@example.com")
        assert c.get(f"/requests/{rid}").status_code == 404
        assert c.get(f"/api/requests/{rid}").status_code == 404
        assert rid not in c.get("/requests").text and rid not in c.get("/reports/requests.csv").text
        c.logout()
        c.login()
        assert c.get(f"/requests/{rid}").status_code == 200  # admins see everything
