"""Stage: the batch lane. A chat request with priority ``batch`` skips the live queue: its budget is
reserved, the caller gets ``202`` and a job (``GET /tokenlane/jobs/{id}``), and the request goes
through the provider's batch API (:class:`tokenlane.batch.BatchLane`); its result lands in the job
and its ledger row, priced at the batch rate. Built only when a lane is configured
(:meth:`tokenlane.Tokenlane.use_batch_lane`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from ..asgi_io import Send, respond_json
from ..batch import BatchLane
from ..formats import OPENAI_CHAT
from ..providers import ProviderError
from .base import Outcome, Priced
from .jobs import Job, Jobs

log = logging.getLogger("tokenlane")


class Batch:
    def __init__(self, lane: BatchLane, reserve: Callable[..., Any], reconcile: Callable[..., Any],
                 write_row: Callable[[Priced], Any], jobs: Jobs, clock: Callable[[], float]) -> None:
        self.lane = lane
        self.reserve = reserve        # async (priced, now): the budget stage's reservation (429 when full)
        self.reconcile = reconcile    # (priced, outcome) -> (fields, written)
        self.write_row = write_row    # (priced) -> future of the ledger insert
        self.jobs = jobs
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def applies(self, p: Priced) -> bool:
        return p.priority == "batch" and p.request.api == OPENAI_CHAT

    def decision(self, p: Priced) -> dict[str, Any]:
        return {"decision": "defer", "reason": "batch_lane", "status_url": self.jobs.status_url(p.id),
                "message": "sent through the provider's batch API at the batch price; the result lands in the job"}

    async def __call__(self, p: Priced, scope: dict[str, Any], body: bytes, send: Send, job: Job | None,
                       headers: list[tuple[bytes, bytes]],
                       on_decision: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Raises RequestError (429) when the budget has no room for the request."""
        now = self.clock()
        await self.reserve(p, now)
        p.batch = True
        p.admitted_at = now
        self.write_row(p)
        if on_decision:
            on_decision(self.decision(p))
        http = job is None
        job = job or Job(id=p.id, scope=scope, body=body)
        job.priced, job.status, job.decision = p, "deferred", self.decision(p)
        self.jobs.keep(job)
        task = asyncio.ensure_future(self._run(p, job, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if http:
            url = self.jobs.status_url(p.id)
            await respond_json(send, 202, {"id": p.id, "object": "tokenlane.job", "status": "deferred",
                                           "reason": "batch_lane", "status_url": url},
                               headers + [(b"location", url.encode())])

    async def _run(self, p: Priced, job: Job, body: bytes) -> None:
        outcome = Outcome()
        try:
            result = await self.lane.run(json.loads(body))
            outcome.status, outcome.usage = 200, result.get("usage")
            outcome.text = "".join((c.get("message") or {}).get("content") or "" for c in result.get("choices") or ())
            outcome.started_output = True
            job.response_status, job.response_type = 200, "application/json"
            job.response_body = json.dumps(result).encode()
            job.status = "succeeded"
        except Exception as exc:  # noqa: BLE001 - the job and the ledger row must say why
            status = exc.status if isinstance(exc, ProviderError) else 502
            outcome.status, outcome.error = status, f"batch lane: {exc}"
            job.response_status, job.response_type = status, "application/json"
            job.response_body = json.dumps({"error": {"message": str(exc), "type": "api_error",
                                                      "code": "batch_failed"}}).encode()
            job.status = "failed"
            log.warning("tokenlane batch request %s failed: %s", p.id, exc)
        _, wait = self.reconcile(p, outcome)
        if wait is not None:
            await asyncio.wrap_future(wait)
        await p.settled()
        if job.done is not None:
            job.done.set()

    async def aclose(self) -> None:
        await self.lane.aclose()


__all__ = ["Batch"]
