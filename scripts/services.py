#!/usr/bin/env python3
"""Private PostgreSQL and Redis servers on loopback, for the tests and the benchmarks.

    python scripts/services.py start DIR     # prints `export TOKENLANE_TEST_PG=... TOKENLANE_TEST_REDIS=...`
    python scripts/services.py stop DIR

From Python (tests, benchmarks): ``Services(dir).start()``, then ``pg_url`` / ``redis_url``, and
``stop_pg()`` / ``start_pg()`` / ``stop_redis()`` / ``start_redis()`` to take one down mid-run.
Each server gets a free port and keeps its data in DIR; PostgreSQL runs as the ``postgres`` user
when we are root (it refuses to run as root). Debian's packages (postgresql-15, redis-server) come
from scripts/setup.sh.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/setup.sh installs postgresql-15)")
    return path


def available() -> bool:
    """Whether both servers can be started here."""
    try:
        _pg_bin("initdb")
    except RuntimeError:
        return False
    return shutil.which("redis-server") is not None


class Services:
    """One PostgreSQL and one Redis server with their data under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.pg_dir = self.root / "pg"
        if os.geteuid() == 0 and (self.root / "pg_path").exists():
            self.pg_dir = Path((self.root / "pg_path").read_text().strip())
        self.redis_dir = self.root / "redis"
        self.ports_file = self.root / "ports"
        self.pg_port = self.redis_port = 0
        if self.ports_file.exists():
            self.pg_port, self.redis_port = map(int, self.ports_file.read_text().split())

    @property
    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> Services:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pg_port = self.pg_port or free_port()
        self.redis_port = self.redis_port or free_port()
        self.ports_file.write_text(f"{self.pg_port} {self.redis_port}\n")
        self.start_pg()
        self.start_redis()
        return self

    def stop(self) -> None:
        self.stop_redis()
        self.stop_pg()
        if (self.root / "pg_path").exists():
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            (self.root / "pg_path").unlink()

    # --- PostgreSQL ---------------------------------------------------------------------------

    def _as_postgres(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        done = subprocess.run(args, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done

    def start_pg(self) -> None:
        if not (self.pg_dir / "PG_VERSION").exists():
            if os.geteuid() == 0:
                # The postgres user may not traverse root's private temp directories: its data
                # goes in a directory of its own (removed by stop()).
                self.pg_dir = Path(tempfile.mkdtemp(prefix="tokenlane-pg-"))
                (self.root / "pg_path").write_text(str(self.pg_dir))
                shutil.chown(self.pg_dir, "postgres")
            else:
                self.pg_dir.mkdir(parents=True, exist_ok=True)
            self._as_postgres([_pg_bin("initdb"), "-D", str(self.pg_dir), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"])
        # Test servers: no fsync (a killed server's WAL is still in the page cache; only a machine
        # crash would lose it), but every commit is in the WAL, so stopping it "immediate" loses nothing.
        options = (f"-p {self.pg_port} -k {self.pg_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=300")
        self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-l", str(self.pg_dir / "log"),
                           "-o", options, "-w", "-t", "60", "start"])

    def stop_pg(self, mode: str = "fast") -> None:
        if (self.pg_dir / "postmaster.pid").exists():
            self._as_postgres([_pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-m", mode, "-w", "stop"])

    # --- Redis --------------------------------------------------------------------------------

    def start_redis(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.redis_dir / "redis.pid"
        subprocess.run(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(self.redis_dir),
                        "--daemonize", "yes", "--pidfile", str(pidfile),
                        "--logfile", str(self.redis_dir / "log"), "--maxclients", "2000"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.redis_port}")

    def stop_redis(self) -> None:
        pidfile = self.redis_dir / "redis.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip() or 0)
        subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown", "nosave"],
                       capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        pidfile.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    services = Services(argv[2])
    if argv[1] == "start":
        services.start()
        print(f"export TOKENLANE_TEST_PG={services.pg_url} TOKENLANE_TEST_REDIS={services.redis_url}")
    else:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
