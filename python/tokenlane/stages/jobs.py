"""Jobs: deferred requests and requests submitted from code (``Tokenlane.submit``). They take the
same request path as HTTP requests (passed in as ``run_request``), with the wrapped app called in
the background and its response kept for the job's status URL."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..asgi_io import Send
from ..errors import decision_dict
from ..ledger import Ledger
from ..scheduler import Scheduler
from .base import Identity, LedgerThread, Priced, new_request_id

log = logging.getLogger("tokenlane")

# (scope, receive, send, job, on_decision) -> None: the runtime's request path.
RunRequest = Callable[..., Awaitable[None]]
# (priced, scope, body, send) -> None: the upstream stage for an admitted request.
RunAdmitted = Callable[..., Awaitable[None]]


@dataclass
class Job:
    """A deferred or code-submitted request, run in the background."""

    id: str
    scope: dict[str, Any]
    body: bytes
    priced: Priced | None = None
    status: str = "pending"            # pending | queued | deferred | running | succeeded | failed | rejected
    decision: dict[str, Any] | None = None
    response_status: int | None = None
    response_body: bytes = b""
    response_type: str = ""
    done: asyncio.Event | None = None

    def view(self) -> dict[str, Any]:
        result: Any = None
        if self.response_body:
            try:
                result = json.loads(self.response_body)
            except ValueError:
                result = self.response_body.decode("utf-8", "replace")
        return {"id": self.id, "status": self.status, "decision": self.decision,
                "response_status": self.response_status, "response": result}


class Jobs:
    def __init__(self, ledger: Ledger, thread: LedgerThread, scheduler: Scheduler, route_prefix: str,
                 clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.thread = thread
        self.scheduler = scheduler
        self.route_prefix = route_prefix
        self.clock = clock
        self.run_request: RunRequest | None = None    # set by the runtime
        self.run_admitted: RunAdmitted | None = None  # set by the runtime
        self._jobs: dict[str, Job] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def status_url(self, job_id: str) -> str:
        return f"{self.route_prefix}/jobs/{job_id}"

    def keep(self, job: Job) -> None:
        """Remembers a job (a deferred HTTP request becomes one)."""
        self._jobs[job.id] = job

    async def submit(self, path: str, body: Mapping[str, Any], *, tenant: str, user_id: int | None = None,
                     priority: str = "standard", deadline_ms: float | None = None,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        raw = json.dumps(body).encode()
        hdrs = {"content-type": "application/json", "x-tokenlane-priority": priority, **(headers or {})}
        if deadline_ms is not None:
            hdrs["x-tokenlane-deadline-ms"] = str(deadline_ms)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), str(v).encode()) for k, v in hdrs.items()],
            "client": ("tokenlane-job", 0), "server": ("tokenlane", 0),
            "tokenlane.identity": Identity(tenant=tenant, user_id=user_id),
        }
        job = Job(id=new_request_id(), scope=scope, body=raw, done=asyncio.Event())
        self.keep(job)
        decided: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._spawn(self._start(job, decided))
        return await decided

    def view(self, job_id: str) -> dict[str, Any] | None:
        """A job's status, with its response when done (``None`` if unknown here and in the ledger);
        blocking (reads the ledger)."""
        job = self._jobs.get(job_id)
        row = self.ledger.get_request(job_id)
        if job is None and row is None:
            return None
        view = job.view() if job else {"id": job_id, "status": row["status"] if row else None}
        if row is not None:
            view["request"] = row
        if self.scheduler.status(job_id) == "queued":
            for entry in self.scheduler.snapshot(self.clock()).get("queue", []):
                if entry.get("id") == job_id:
                    view["position"] = entry.get("position")
        return view

    def resolve(self, request_id: str, rejection: Any) -> None:
        """The scheduler let a deferred/queued job run (``rejection`` None) or refused it."""
        job = self._jobs.get(request_id)
        if job is None or job.status not in ("deferred", "queued") or job.priced is None:
            return
        if rejection is None:
            self._spawn(self._run(job))
        else:
            job.status = "rejected"
            job.decision = decision_dict(rejection)
            self.thread.write(self.ledger.update_request, job.id, status="rejected",
                              reason=rejection.reason, finished_at=self.clock())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start(self, job: Job, decided: asyncio.Future[dict[str, Any]]) -> None:
        assert self.run_request is not None

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": job.body, "more_body": False}

        def on_decision(info: dict[str, Any]) -> None:
            job.decision = info
            job.status = {"admit": "running", "queue": "queued", "defer": "deferred"}.get(info["decision"], "rejected")
            if not decided.done():
                decided.set_result({"id": job.id, **info, "status_url": self.status_url(job.id)})

        try:
            await self.run_request(job.scope, receive, _job_send(job), job=job, on_decision=on_decision)
        except Exception as exc:  # a job has no client to tell: keep the error on the job
            job.status = "failed"
            job.response_body = json.dumps({"error": {"message": str(exc), "type": "server_error"}}).encode()
            log.exception("tokenlane job %s failed", job.id)
        finally:
            if job.status not in ("deferred", "queued"):
                _finish(job)
            if not decided.done():
                decided.set_result({"id": job.id, "decision": "reject", "reason": "error",
                                    "message": job.view().get("response"), "status_url": self.status_url(job.id)})

    async def _run(self, job: Job) -> None:
        """A deferred/queued job the scheduler just let run."""
        assert job.priced is not None and self.run_admitted is not None
        job.status = "running"
        job.priced.admitted_at = self.clock()
        try:
            await self.run_admitted(job.priced, job.scope, job.body, _job_send(job))
        except Exception as exc:
            job.status = "failed"
            log.exception("tokenlane job %s failed: %s", job.id, exc)
        _finish(job)


def _finish(job: Job) -> None:
    if job.status == "running":
        ok = job.response_status is not None and job.response_status < 400
        job.status = "succeeded" if ok else "failed"
    if job.done is not None:
        job.done.set()


def _job_send(job: Job) -> Send:
    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            job.response_status = message["status"]
            job.response_type = dict(message.get("headers") or []).get(b"content-type", b"").decode()
        elif message["type"] == "http.response.body":
            job.response_body += message.get("body", b"")
    return send


__all__ = ["Job", "Jobs"]
