"""The batch lane: chat requests that can wait go through the provider's batch API at its batch price.

    lane = BatchLane(provider)                 # OpenAICompatibleProvider, SimulatedProvider, ...
    response = await lane.run(body)            # a Chat Completions response, once its batch is done

Requests are collected for ``flush_after_s`` (or until ``max_batch`` are waiting), written as one
JSONL file in OpenAI's batch shape (``{"custom_id", "method", "url", "body"}`` per line), uploaded
(``POST /v1/files``), submitted (``POST /v1/batches``), polled (``GET /v1/batches/{id}``) and their
results downloaded (``GET /v1/files/{output_file_id}/content``); each result goes back to the
request that asked for it, by ``custom_id``.

An upstream without a batch API gets the local off-peak executor instead: each request runs as a
normal call, one at a time, whenever ``idle()`` says the live traffic leaves room (and list price
applies, since no discount was given).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .providers import ProviderError

DONE = ("completed", "failed", "expired", "cancelled")


def has_batch_api(provider: Any) -> bool:
    return all(hasattr(provider, m) for m in ("upload_file", "create_batch", "retrieve_batch", "file_content"))


class BatchLane:
    """Collects waiting chat requests into provider batches (see the module docstring)."""

    def __init__(self, provider: Any, *, max_batch: int = 500, flush_after_s: float = 1.0, poll_s: float = 2.0,
                 idle: Callable[[], bool] | None = None) -> None:
        self.provider = provider
        self.max_batch = max_batch
        self.flush_after_s = flush_after_s
        self.poll_s = poll_s
        self.idle = idle or (lambda: True)
        self.batch_api = has_batch_api(provider)
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches: list[dict[str, Any]] = []  # every batch submitted, as the provider last described it

    async def run(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The response to one Chat Completions body (not streamed), once its batch is done.

        Raises ProviderError when the provider reports an error for this request or the batch fails."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        if not self.batch_api:
            self._spawn(self._off_peak(body, future))
            return await future
        self._pending.append((f"tl-{uuid.uuid4().hex}", body, future))
        if len(self._pending) >= self.max_batch:
            self._flush_now()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await future

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_after_s)
        self._flusher = None
        self._flush_now()

    def _flush_now(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        items, self._pending = self._pending, []
        if items:
            self._spawn(self._submit(items))

    async def _submit(self, items: list[tuple[str, dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        waiting = {custom_id: future for custom_id, _, future in items}
        try:
            lines = [json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
                     for cid, body, _ in items]
            file = await self.provider.upload_file(("\n".join(lines) + "\n").encode(), purpose="batch")
            batch = await self.provider.create_batch(file["id"], endpoint="/v1/chat/completions")
            self.batches.append(batch)
            while batch.get("status") not in DONE:
                await asyncio.sleep(self.poll_s)
                batch = await self.provider.retrieve_batch(batch["id"])
                self.batches[-1] = batch
            for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
                if file_id:
                    self._deliver(await self.provider.file_content(file_id), waiting)
            for future in waiting.values():
                if not future.done():
                    future.set_exception(ProviderError(f"batch {batch['id']} ended {batch.get('status')} "
                                                       "without a result for this request", status=502))
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc if isinstance(exc, ProviderError)
                                         else ProviderError(f"batch submission failed: {exc}", status=502))

    @staticmethod
    def _deliver(content: bytes, waiting: Mapping[str, asyncio.Future[dict[str, Any]]]) -> None:
        for line in content.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            future = waiting.get(item.get("custom_id"))
            if future is None or future.done():
                continue
            response = item.get("response") or {}
            if item.get("error") or response.get("status_code", 500) >= 400:
                error = item.get("error") or (response.get("body") or {}).get("error") or {}
                future.set_exception(ProviderError(f"batch request failed: {error.get('message', error)}",
                                                   status=int(response.get("status_code") or 400), body=error))
            else:
                future.set_result(response["body"])

    async def _off_peak(self, body: dict[str, Any], future: asyncio.Future[dict[str, Any]]) -> None:
        try:
            while not self.idle():
                await asyncio.sleep(self.poll_s)
            future.set_result(await self.provider.chat(body))
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting request
            if not future.done():
                future.set_exception(exc)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for task in list(self._tasks):
            task.cancel()


__all__ = ["BatchLane", "has_batch_api"]
