"""PostgreSQL and Redis for the tests: the servers of scripts/services.py and fresh databases."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def services_module():
    """scripts/services.py, imported by path (tests and benchmarks start the same servers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tokenlane_services", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_database(admin_url: str) -> str:
    """A new, empty PostgreSQL database on the server of `admin_url`; returns its URL."""
    import uuid

    import psycopg

    name = "tl_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + "/" + name


class Replicas:
    """N uvicorn processes of tests/python/replica_app.py (``python -m uvicorn replica_app:app``),
    each configured by the given environment (TOKENLANE_DB, TOKENLANE_STATE, ...), plus ``own[i]``
    for replica i alone."""

    def __init__(self, n: int, env: dict[str, str], log_dir: Path, own: list[dict[str, str]] | None = None) -> None:
        import os
        import subprocess
        import sys

        services = services_module()
        self.ports = [services.free_port() for _ in range(n)]
        self.procs = []
        self.logs = []
        for i, port in enumerate(self.ports):
            log = open(log_dir / f"replica{i}.log", "wb")
            self.logs.append(log)
            # Each replica its own spool, as on its own host (own[i] may give it another one)
            spool = {"TOKENLANE_SPOOL": env["TOKENLANE_SPOOL"].replace(".db", f"-{i}.db")} if "TOKENLANE_SPOOL" in env else {}
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "replica_app:app", "--app-dir", str(REPO / "tests" / "python"),
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
                env={**os.environ, **env, **spool, **(own[i] if own and i < len(own) else {})}, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir))
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.log_dir = log_dir
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until every replica answers /health (generous: a loaded 2-core machine starts slowly)."""
        import time

        import httpx

        deadline = time.monotonic() + timeout_s
        for i, url in enumerate(self.urls):
            while True:
                if self.procs[i].poll() is not None:
                    raise RuntimeError(f"replica {i} exited with {self.procs[i].returncode}: {self._log(i)}")
                try:
                    if httpx.get(url + "/health", timeout=10).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {i} did not start within {timeout_s} s: {self._log(i)}")
                time.sleep(0.1)

    def _log(self, i: int) -> str:
        self.logs[i].flush()
        return (self.log_dir / f"replica{i}.log").read_text(errors="replace")[-2000:]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def kill(self, i: int) -> None:
        """kill -9: no shutdown, no settle, no lease renewal."""
        import signal

        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except Exception:  # noqa: BLE001 - a stuck replica must not hang the suite
                p.kill()
        for log in self.logs:
            log.close()
