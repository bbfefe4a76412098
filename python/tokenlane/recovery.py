"""Crash safety of one host's worker processes on a shared SQLite ledger.

- **Owners.** Each worker process has an owner token, ``host:pid:start`` (``start``: the process's
  start time in clock ticks from ``/proc``, so a recycled pid is a different owner). Request rows
  and budget holds carry it; :func:`is_alive` tells a live owner from a dead one on this host.
- **The journal.** Before a response goes out, the request's ledger writes are appended to this
  process's journal file with one ``write()`` (:class:`Journal`), and the ledger thread applies them
  in batches later. The page cache keeps what ``write()`` returned, so a ``kill -9`` of the process
  loses nothing; there is no ``fsync`` per request, so an OS crash or power loss may lose the last
  records, as SQLite's own ``synchronous=NORMAL`` may lose its last commits.
- **Reclaim.** :func:`sweep` finds owners that are dead, applies what is left in their journals
  (idempotent: the ledger applies each record once), then frees their budget holds and marks their
  unfinished rows failed (queued or deferred ones cancelled). Every worker runs it at start-up and
  every ``reclaim_interval_s``; owners on another host are never judged (their liveness is unknown
  here).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger("tokenlane")

_owner: tuple[int, str] | None = None
JOURNAL_SUFFIX = ".journal"
ROTATE_BYTES = 4 * 1024 * 1024  # a journal file is replaced once it is this large and applied


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its closing one.
    return stat[stat.rindex(b")") + 2:].split()[19].decode()


def owner_token() -> str:
    """This process's owner token (recomputed after a fork; every ledger row carries it, so it is
    kept rather than checked against ``os.getpid()``, a system call, on every request)."""
    global _owner
    if _owner is None:
        pid = os.getpid()
        _owner = (pid, f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '0'}")
    return _owner[1]


def _forget_owner() -> None:
    global _owner
    _owner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_owner)


def is_alive(owner: str) -> bool | None:
    """True/False for an owner of this host; None when it is not one (another host, malformed)."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname() or pid <= 0:
        return None
    ticks = _start_ticks(pid)
    if ticks is not None:
        return ticks == start
    if os.path.exists("/proc/self/stat"):
        return False  # /proc works here and this pid has no entry: gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def journal_dir(ledger_path: str) -> Path | None:
    """Where the journals of the workers of a SQLite file live (None for an in-memory ledger)."""
    if not ledger_path or ledger_path == ":memory:":
        return None
    return Path(ledger_path + "-journals")


def journal_files(directory: Path | None, owner: str | None = None) -> list[tuple[str, Path]]:
    """(owner, path) of the journal files in ``directory`` (of one owner if given), oldest first."""
    if directory is None:
        return []
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not name.endswith(JOURNAL_SUFFIX):
            continue
        who, _, seq = name[: -len(JOURNAL_SUFFIX)].rpartition(".")
        if who and seq.isdigit() and (owner is None or who == owner):
            found.append((who, int(seq), Path(entry.path)))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(who, path) for who, _, path in found]


class Journal:
    """This process's journal: records (one JSON object per line, bytes) appended with one
    ``write()`` each. Not thread-safe: the ledger writer serialises :meth:`append` and :meth:`rotate`."""

    def __init__(self, directory: Path, owner: str) -> None:
        self.directory = directory
        self.owner = owner
        directory.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self.path = self._open()

    def _open(self) -> Path:
        path = self.directory / f"{self.owner}.{self._seq}{JOURNAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fd, self._size = fd, 0
        return path

    def append(self, data: bytes) -> None:
        """One ``write()`` of complete lines (raises OSError, e.g. disk full: nothing is answered then)."""
        written = os.write(self._fd, data)
        if written != len(data):  # a short write (disk full mid-way): finish it or fail loudly
            view = memoryview(data)[written:]
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        self._size += len(data)

    def rotate(self) -> Path | None:
        """Starts a new file once this one is large; returns the old one (delete it once every
        record in it is applied), or None."""
        if self._size < ROTATE_BYTES:
            return None
        old, old_fd = self.path, self._fd
        self._seq += 1
        try:
            self.path = self._open()
        except OSError:  # no room for a new file now: keep appending to this one
            self._seq -= 1
            self._fd = old_fd
            return None
        os.close(old_fd)
        return old

    def close(self, remove: bool) -> None:
        """Closes the file; ``remove`` once everything in it is applied."""
        try:
            os.close(self._fd)
        except OSError:
            pass
        if remove:
            for _, path in journal_files(self.directory, self.owner):
                path.unlink(missing_ok=True)


def sweep(ledger: Any, directory: Path | None, me: str, now: float) -> dict[str, int]:
    """Reclaims every dead owner's work (see the module docstring); blocking, on the ledger thread.
    Returns totals: owners, records (journal records replayed), holds, requests."""
    totals = {"owners": 0, "records": 0, "holds": 0, "requests": 0}
    journals: dict[str, list[Path]] = {}
    for who, path in journal_files(directory):
        journals.setdefault(who, []).append(path)
    for owner in sorted(set(ledger.owners()) | set(journals)):
        if owner == me or is_alive(owner) is not False:
            continue
        # First what the dead worker answered (its journal), then free what it still held.
        for path in journals.get(owner, []):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another worker reclaimed it meanwhile
                continue
            if data:
                for problem in ledger.apply_journal(data):
                    log.error("tokenlane: journal record of %s skipped: %s", owner, problem)
                totals["records"] += data.count(b"\n")
        freed = ledger.reclaim(owner, now)
        for path in journals.get(owner, []):
            path.unlink(missing_ok=True)
        totals["owners"] += 1
        totals["holds"] += freed["holds"]
        totals["requests"] += freed["requests"]
        if freed["holds"] or freed["requests"]:
            log.warning("tokenlane: reclaimed dead worker %s: %d budget holds freed, %d requests marked failed",
                        owner, freed["holds"], freed["requests"])
    return totals


__all__ = ["Journal", "is_alive", "journal_dir", "journal_files", "owner_token", "sweep"]
