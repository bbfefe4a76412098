"""Fair share across replicas: the local scheduler's fair-share (VTC) counters see the service
every replica gave a tenant, not only this one's.

Each replica counts the tokens it serves per principal and minute in Redis, inside the settlement
script it runs anyway (no extra round trip on the request path). Off the request path, once a
second, :class:`FleetService` reads the last two minutes of those counts for the whole fleet (one
pipelined round trip), subtracts what this replica served itself, and hands the rest, as it grows,
to the scheduler (``add_service``). A tenant served heavily on replica A is therefore ordered
behind a light tenant on replica B, at most a sync interval (plus a settlement) later.

The counts only grow: a figure read before this replica's own settlement reached Redis reads as
less service elsewhere, which the next read corrects; nothing is ever taken back from a counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .redis import RedisState, Service, StateUnavailable, current_minute, stopping

log = logging.getLogger("tokenlane")

Counts = dict[str, list[int]]  # principal → [input tokens, output tokens]


class FleetService:
    def __init__(self, redis: RedisState, add_service: Callable[[str, int, int], None], *,
                 interval_s: float = 1.0) -> None:
        self.redis = redis
        self.add_service = add_service
        self.interval_s = interval_s
        self._own: dict[int, Counts] = {}    # minute → what this replica served (counted when settling)
        self._added: dict[int, Counts] = {}  # minute → service elsewhere already given to the scheduler
        self._task: asyncio.Task[None] | None = None

    def served_here(self, principals: list[str], service: Service) -> None:
        """Records service this replica is settling into Redis (call before the settlement is sent,
        so the fleet's figure never includes it before this record does)."""
        minute = self._own.setdefault(service.minute, {})
        for p in principals:
            counts = minute.setdefault(p, [0, 0])
            counts[0] += service.input_tokens
            counts[1] += service.output_tokens

    async def sync(self) -> int:
        """Reads the fleet's service and adds what other replicas served since the last sync to
        the scheduler's counters; returns how many tenants got some. Raises StateUnavailable."""
        now = current_minute()
        minutes = [now - 1, now]
        fleet = await self.redis.service(minutes)
        touched = 0
        for minute in minutes:
            own, added = self._own.get(minute, {}), self._added.setdefault(minute, {})
            for principal, (fleet_in, fleet_out) in fleet.get(minute, {}).items():
                mine = own.get(principal, (0, 0))
                done = added.setdefault(principal, [0, 0])
                grow_in = max(0, fleet_in - mine[0] - done[0])
                grow_out = max(0, fleet_out - mine[1] - done[1])
                if grow_in or grow_out:
                    self.add_service(principal, grow_in, grow_out)
                    done[0] += grow_in
                    done[1] += grow_out
                    touched += 1
        for book in (self._own, self._added):  # older minutes are settled history
            for minute in [m for m in book if m < now - 1]:
                del book[minute]
        return touched

    def start(self) -> None:
        """Starts the periodic sync on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tokenlane-fair-share")

    async def _loop(self) -> None:
        while not stopping():
            try:
                await self.sync()
            except StateUnavailable:
                if stopping():
                    raise asyncio.CancelledError from None
                # Redis away: the counters keep this replica's own service until it is back
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


__all__ = ["FleetService"]
