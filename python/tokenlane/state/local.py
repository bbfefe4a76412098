"""The one-host backend of :class:`tokenlane.state.State`.

Budgets live in the SQLite ledger, which every worker process of the host shares: a hold's levels
are reserved in one write transaction (``Ledger.reserve_all``), so workers cannot overspend
together at any level. Rate buckets and concurrency slots live in this process (each worker
enforces them for itself, as the scheduler does); they die with it, so they need no lease. Budget
reservations in the ledger are recorded as holds with their owner (the worker process): a worker
killed mid-request leaves them until another worker's reclaim frees them
(:mod:`tokenlane.recovery`; the Redis backend leases them instead).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Any

from ..ledger import Ledger
from ..recovery import owner_token
from .base import Denied, Hold, State

MINUTE = 60.0


class LocalState(State):
    def __init__(self, ledger: Ledger, run: Any = None, *, beside: Any = None) -> None:
        """``run(fn, *args)`` starts a blocking ledger call off the event loop and returns its
        future (the runtime passes its ledger thread, which keeps calls in order); default: the
        loop's executor. ``beside(fn, *args)`` likewise, for a reservation on a ledger that
        ``reserves_concurrently`` (PostgreSQL: one statement on a pool of connections), which then
        does not queue behind the ledger thread's batches of records."""
        self.ledger = ledger
        self._run = run or _in_thread
        self._reserve = (beside or _in_thread) if getattr(ledger, "reserves_concurrently", False) else self._run
        # bucket → (time, tokens, requests, hold id) of the last minute; a settle's correction is an entry too
        self._events: dict[str, deque[tuple[float, int, int, str]]] = {}
        self._running: dict[str, int] = {}                       # slots key → requests running

    async def acquire(self, hold: Hold, now: float) -> Denied | None:
        denied = self._take_local(hold, now)
        if denied is not None:
            return denied
        if hold.budgets and (hold.amount_pico_usd > 0 or hold.amount_tokens > 0):
            # Recorded with this worker as its owner: reclaimed if the worker dies (tokenlane.recovery).
            try:
                failed = await self._reserve(partial(self.ledger.reserve_all, list(hold.budgets), hold.amount_pico_usd,
                                                     now, hold=hold.id, owner=owner_token(), tokens=hold.amount_tokens))
            except BaseException:  # the ledger failed (or the wait was interrupted): nothing is taken
                self._give_back_local(hold, now, count_rates=True)
                if getattr(self.ledger, "reserves_concurrently", False):
                    # PostgreSQL: the reservation may have committed with its answer lost. Releasing
                    # its hold frees it if it is there and nothing if not (spooled during an outage).
                    self._run(partial(self.ledger.release_all, list(hold.budgets), hold.amount_pico_usd, now,
                                      hold=hold.id, reserved_tokens=hold.amount_tokens))
                raise
            if failed >= 0:
                self._give_back_local(hold, now, count_rates=True)
                usage = await self._run(self.ledger.usage, hold.budgets[failed], now)
                resets = usage.get("resets_at")
                return Denied("budget", hold.budgets[failed],
                              None if resets is None else max(1.0, resets - now), usage)
        return None

    def settle(self, hold: Hold, actual_pico_usd: int, actual_tokens: int, now: float) -> Awaitable[None]:
        self.give_back(hold, actual_tokens, now)
        if not hold.budgets:
            return _done()
        return self._run(partial(self.ledger.settle_all, list(hold.budgets), hold.amount_pico_usd, actual_pico_usd,
                                 now, hold=hold.id, reserved_tokens=hold.amount_tokens, actual_tokens=actual_tokens))

    def give_back(self, hold: Hold, actual_tokens: int, now: float) -> None:
        """The in-process part of :meth:`settle` (the runtime settles the ledger part in the
        request's final journal record, with its row)."""
        self._give_back_local(hold, now, count_rates=False, correction=actual_tokens - hold.tokens)

    def release(self, hold: Hold, now: float) -> Awaitable[None]:
        self._give_back_local(hold, now, count_rates=True)
        if not hold.budgets or (hold.amount_pico_usd <= 0 and hold.amount_tokens <= 0):
            return _done()
        return self._run(partial(self.ledger.release_all, list(hold.budgets), hold.amount_pico_usd, now, hold=hold.id,
                                 reserved_tokens=hold.amount_tokens))

    async def renew(self, holds: Sequence[Hold], now: float) -> None:
        return None  # in-process holds end with the process; ledger reservations have no lease here

    async def set_budget(self, principal: str, limit_pico_usd: int | None, window: str, now: float) -> None:
        await self._run(self.ledger.set_budget, principal, limit_pico_usd, window, now)

    async def usage(self, principal: str, now: float) -> dict[str, Any]:
        return dict(await self._run(self.ledger.usage, principal, now))

    # --- in-process rates and slots (no await between check and take: atomic on the event loop) ----

    def _take_local(self, hold: Hold, now: float) -> Denied | None:
        for slots in hold.slots:
            if self._running.get(slots.key, 0) >= slots.limit:
                return Denied("slots", slots.key, None, {"limit": slots.limit})
        for rate in hold.rates:
            events = self._window(rate.key, now)
            requests = sum(r for _, _, r, _ in events)
            tokens = max(0, sum(t for _, t, _, _ in events))
            retry = max(0.001, events[0][0] + MINUTE - now) if events else 0.001
            if rate.rpm is not None and requests + 1 > rate.rpm:
                return Denied("rate", rate.key, retry, {"rpm": rate.rpm})
            if rate.tpm is not None and tokens > 0 and tokens + hold.tokens > rate.tpm:
                return Denied("rate", rate.key, retry, {"tpm": rate.tpm})
        for slots in hold.slots:
            self._running[slots.key] = self._running.get(slots.key, 0) + 1
        for rate in hold.rates:
            self._events.setdefault(rate.key, deque()).append((now, hold.tokens, 1, hold.id))
        return None

    def _give_back_local(self, hold: Hold, now: float, *, count_rates: bool, correction: int = 0) -> None:
        for slots in hold.slots:
            left = self._running.get(slots.key, 0) - 1
            if left > 0:
                self._running[slots.key] = left
            else:
                self._running.pop(slots.key, None)
        for rate in hold.rates:
            events = self._events.get(rate.key)
            if events is None:
                continue
            if count_rates:  # never ran: neither its request nor its tokens count
                for entry in events:
                    if entry[3] == hold.id:
                        events.remove(entry)
                        break
            elif correction:  # ran: count what it really used instead of the estimate
                events.append((now, correction, 0, hold.id))

    def _window(self, key: str, now: float) -> deque[tuple[float, int, int, str]]:
        events = self._events.setdefault(key, deque())
        while events and events[0][0] <= now - MINUTE:
            events.popleft()
        return events


def _in_thread(fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Starts ``fn(*args)`` on the default executor at once (``asyncio.to_thread`` would only start
    when awaited)."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


__all__ = ["LocalState"]
