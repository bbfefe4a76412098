"""What the stages share: who a request is charged to (:class:`Identity`), the request once
counted and priced (:class:`Priced`), what happened downstream (:class:`Outcome`), and the one
thread that makes this process's ledger calls (:class:`LedgerThread`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._core import StorageError
from ..formats import LLMRequest
from ..providers import UsageReports


@dataclass
class Identity:
    """Who pays. ``tenant`` is the authenticated billing principal (a ledger key's member, the
    identify hook's answer, a hash of an unknown bearer key, or "anonymous"); ``org`` and ``team``
    sit above it, a ledger ``key_id`` and the ``end_user`` (the body's ``user`` or a hook's
    sub-identity) below it. Every level in :meth:`chain` is charged; the end user only narrows."""

    tenant: str
    user_id: int | None = None
    key_id: int | None = None
    role: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # attribution the identify hook adds
    org: str | None = None
    team: str | None = None
    end_user: str | None = None

    def chain(self) -> tuple[str, ...]:
        """The budget principals a request is charged to, top level first."""
        levels = []
        if self.org:
            levels.append(f"org:{self.org}")
        if self.team:
            levels.append(f"team:{self.org}/{self.team}" if self.org else f"team:{self.team}")
        levels.append(self.tenant)
        if self.key_id is not None:
            levels.append(f"apikey:{self.key_id}")
        if self.end_user:
            levels.append(end_user_principal(levels[-1], self.end_user))
        return tuple(levels)

    @property
    def owner(self) -> str:
        """The principal whose end users the end-user level belongs to (the key, else the tenant)."""
        return f"apikey:{self.key_id}" if self.key_id is not None else self.tenant


def end_user_principal(owner: str, end_user: str) -> str:
    """The budget principal of an end user inside ``owner`` (a key or a tenant)."""
    return f"{owner}/user:{end_user[:100]}"


def level_of(principal: str) -> str:
    """org | team | key | end_user | tenant, from a principal's name."""
    if "/user:" in principal:
        return "end_user"
    for prefix, level in (("org:", "org"), ("team:", "team"), ("apikey:", "key"), ("key:", "key")):
        if principal.startswith(prefix):
            return level
    return "tenant"


@dataclass
class Priced:
    """One request, counted, estimated and priced, as the scheduler sees it."""

    id: str
    route: str
    request: LLMRequest
    identity: Identity
    input_tokens: int
    input_exact: bool
    est_p50: int
    est_p90: int
    est_source: str
    max_output: int
    cost_p50: int
    cost_p90: int
    cost_max: int
    priority: str
    deadline_s: float | None
    arrival: float
    admitted_at: float | None = None
    reserved_ledger: int = 0  # pico-USD reserved in the ledger (cross-process budget)
    state_mode: str | None = None  # with shared state: "shared", or "local" while Redis is unreachable
    rate_limits: dict[str, float] | None = None  # x-ratelimit values the shared state gave (else the scheduler's)
    requested_model: str | None = None  # set when routing served another model than the one asked for
    route_rule: str | None = None       # the routing rule that chose the served model
    batch: bool = False                 # sent through the provider's batch API (priced at the batch rate)
    hold: Any = None          # what the budget stage took from the shared state (a tokenlane.state.Hold)
    tags: dict[str, str] = field(default_factory=dict)  # attribution: header, extractor, identify hook
    # what the cost levers did before pricing (None: that stage is off or did nothing)
    cache: str | None = None                  # x-tokenlane-cache: miss | bypass (a hit never gets priced)
    tier: str | None = None
    clamped_max_tokens: int | None = None     # x-tokenlane-max-tokens-clamped
    untrimmed_input_tokens: int | None = None  # prompt tokens before trimming
    predicted_cached_tokens: int = 0          # provider prompt cache, predicted (priced at the cached rate)

    def scheduler_request(self) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": self.identity.tenant,
            "user": str(self.identity.user_id) if self.identity.user_id is not None else None,
            "priority": self.priority, "deadline_s": self.deadline_s, "model": self.request.model,
            "input_tokens": self.input_tokens, "est_output_p50": self.est_p50, "est_output_p90": self.est_p90,
            "max_tokens": self.max_output, "cost_p50_pico_usd": self.cost_p50,
            "cost_p90_pico_usd": self.cost_p90, "cost_max_pico_usd": self.cost_max,
        }

    @property
    def queue_ms(self) -> float:
        return 0.0 if self.admitted_at is None else (self.admitted_at - self.arrival) * 1000.0


@dataclass
class Outcome:
    """What happened downstream, as far as the middleware saw it."""

    status: int | None = None          # HTTP status the app answered with (None: nothing sent)
    usage: dict[str, Any] | None = None  # the response's own usage object
    text: str = ""                     # generated text seen in the response
    reports: UsageReports = field(default_factory=UsageReports)
    error: str | None = None
    started_output: bool = False       # any response body went out
    body: bytes = b""                  # a JSON response as the app sent it (what the cache stores)
    cost_pico_usd: int | None = None   # the actual cost, once reconciled


class LedgerThread:
    """One thread does every ledger call of this process, in submission order, off the event loop
    (the ledger serialises on its connection anyway; order keeps a row's insert before its update).

    A call that fails with a storage error (database locked past its busy timeout, disk full,
    read-only file) is retried on this thread with backoff for up to ``retry_s``: later calls wait
    behind it, so order holds, and the process resumes by itself when the condition clears. Each
    failure goes to ``on_error`` (a metric and a log line); after ``retry_s`` the error is raised to
    the caller. Every ledger call is one transaction, rolled back on failure, so a retry is safe."""

    def __init__(self, retry_s: float = 30.0, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenlane-ledger")
        self.retry_s = retry_s
        self.on_error = on_error

    def _durable(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except StorageError as exc:
                gave_up = time.monotonic() + delay > deadline
                if self.on_error is not None:
                    self.on_error("gave_up" if gave_up else "retried", exc)
                if gave_up:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Runs a blocking ledger call on the ledger thread; await the result when it matters."""
        loop = asyncio.get_running_loop()
        # Shielded: a caller cancelled while the call waits its turn (a client gone, a shutdown) must
        # not take the write out of the queue, as cancelling the executor's future would.
        return asyncio.shield(loop.run_in_executor(self._pool, lambda: self._durable(fn, *args, **kwargs)))

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Like :meth:`write`, from any thread; returns a concurrent Future."""
        return self._pool.submit(self._durable, fn, *args, **kwargs)


__all__ = ["Identity", "LedgerThread", "Outcome", "Priced", "end_user_principal", "level_of"]
