"""Fixtures and constants of the browser tests: the example app under uvicorn on a free loopback
port, driven by Playwright through Debian's chromium (/usr/bin/chromium; scripts/setup.sh installs it).
Test modules import the fixtures from here (no conftest.py: tests/python's would be shadowed)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TOKENLANE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO / "docs" / "screenshots"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e-admin-password"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(data: Path, **env_extra: str):
    """The app as a user would start it: `python -m uvicorn examples.app.main:app` from the repo root."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TOKENLANE_"))}
    env.update(
        TOKENLANE_VOCAB_DIR=os.environ.get("TOKENLANE_VOCAB_DIR", str(REPO.parent / "shared" / "vocab")),
        TOKENLANE_APP_DB=str(data / "app.db"),
        TOKENLANE_ADMIN_EMAIL=ADMIN_EMAIL,
        TOKENLANE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENLANE_SECRET_KEY="e2e-secret",
        PYTHONUNBUFFERED="1",
        **env_extra,
    )
    cmd = [sys.executable, "-m", "uvicorn", "examples.app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{(data / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the app did not start:\n{(data / 'server.log').read_text()}")
        time.sleep(0.2)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The app with the labelled simulated model (answers in ~0.1 s instead of ~1 s)."""
    with running_app(tmp_path_factory.mktemp("app"), TOKENLANE_LOCAL_MODEL="0", TOKENLANE_SIM_TIME_SCALE="0.1") as base:
        yield base


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium package)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(page, name: str, phone: bool = False) -> None:
        """docs/screenshots/<name>-desktop.png, and -phone.png (390 px wide) when asked."""
        page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
        if phone:
            size = page.viewport_size
            page.set_viewport_size(PHONE)
            page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
            page.set_viewport_size(size)

    return save
