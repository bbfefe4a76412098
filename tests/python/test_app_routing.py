"""The example app's routing box on /config: validated, applied to the running runtime, versioned in
the config history, and in force again after a restart."""

from __future__ import annotations

import json

import pytest
from app_support import Client, make_app


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def test_routing_rules_are_validated_applied_and_recorded(tmp_path, app):
    routing = {"model_groups": {"auto": ["gpt-4o-mini", "gpt-4o"]},
               "routes": [{"name": "code", "model": "gpt-4.1", "models": ["auto"], "tasks": ["code"]}]}
    with Client(app) as c:
        c.login()
        bad = c.form("/config", {"section": "routing", "routing": json.dumps({"routes": [{"model": "m", "tasks": ["poem"]}]})})
        assert bad.status_code == 400 and "tasks must be among" in bad.text
        assert "not valid JSON" in c.form("/config", {"section": "routing", "routing": "{routes"}).text
        assert c.form("/config", {"section": "routing", "routing": json.dumps(routing)}).status_code == 303
        tl = app.state.tl
        assert tl.route is not None and tl.route.router.groups == {"auto": ("gpt-4o-mini", "gpt-4o")}
        assert tl.ledger.get_config("routing") == routing
        assert any(h["key"] == "routing" for h in tl.ledger.config_history(10))
        assert "&#34;tasks&#34;" in c.get("/config").text or '"tasks"' in c.get("/config").text
    # a restart on the same database: the saved rules are in force again
    again = make_app(tmp_path)
    with Client(again) as c:
        c.login()
        assert again.state.tl.route is not None and again.state.tl.route.router.rules[0].name == "code"
        assert c.form("/config", {"section": "routing", "routing": ""}).status_code == 303
        assert again.state.tl.route is None
