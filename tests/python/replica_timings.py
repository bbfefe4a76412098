"""Where a replica's time goes, per store (benchmarks/scaleout.py --stages): wraps the calls that
reach PostgreSQL and Redis; ``GET /timings`` answers each one's count and median / p90 wall time
in ms since the last such call (and starts counting afresh). A measuring tool for the benchmark,
never on in production: replica_app.py installs it only with REPLICA_TIMINGS=1.

Stages (each the wall time of one call, as its caller waits for it):

  redis_acquire   the admission script (budgets, slots, buckets), awaited on the event loop
  redis_settle    the settlement script (with a PostgreSQL ledger it stores the final record, and
                  the response waits for it instead of the ledger; with SQLite, in the background)
  reserve         the budget reservation at every level, awaited on the event loop
  reserve_sql     the same, inside the ledger (the database's part, without the hop to its thread)
  records_sql     one batch of ledger records applied (rows, settlements), on the ledger thread
  record_wait     the response's wait for its final record to be applied (no journal: PostgreSQL)
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

_times: dict[str, list[float]] = {}


def _note(stage: str, t0: float) -> None:
    _times.setdefault(stage, []).append((time.perf_counter() - t0) * 1000)


def _timed(stage: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def sync(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(stage, t0)

    @functools.wraps(fn)
    async def coro(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            _note(stage, t0)

    import inspect

    return coro if inspect.iscoroutinefunction(fn) else sync


def take() -> dict[str, dict[str, float]]:
    """The calls timed since the last take()."""
    out = {}
    for stage in sorted(_times):
        values, _times[stage] = _times[stage], []
        if values:
            out[stage] = {"n": len(values), "p50_ms": statistics.median(values),
                          "p90_ms": statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]}
    return out


def install(app: Any) -> None:
    """Wraps the calls; adds ``GET /timings`` to ``app`` (FastAPI)."""
    import asyncio

    from tokenlane.stages import budget, upstream
    from tokenlane.state import redis as redis_state
    from tokenlane import pgledger
    from tokenlane.ledger import Ledger

    redis_state.RedisState.acquire = _timed("redis_acquire", redis_state.RedisState.acquire)
    redis_state.RedisState.settle = _timed("redis_settle", redis_state.RedisState.settle)
    budget.Budget.reserve = _timed("reserve", budget.Budget.reserve)
    for cls in (pgledger.PostgresLedger, Ledger):
        cls.reserve_all = _timed("reserve_sql", cls.reserve_all)
    pgledger.PostgresLedger.apply_journal = _timed("records_sql", pgledger.PostgresLedger.apply_journal)

    wrap_future = asyncio.wrap_future

    async def waited(future: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await wrap_future(future)
        finally:
            _note("record_wait", t0)

    # The upstream stage awaits its final record through asyncio.wrap_future: time that await only.
    upstream.asyncio = _AsyncioWith(wrap_future=waited)  # type: ignore[attr-defined]
    app.add_api_route("/timings", take, methods=["GET"])


class _AsyncioWith:
    """The asyncio module with one function replaced (for one module's global name only)."""

    def __init__(self, **overrides: Any) -> None:
        import asyncio

        self._module = asyncio
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)
