"""Time helpers both ledgers (SQLite in the core, PostgreSQL in Python) and the Redis state share:
budget windows (UTC hour, day, month) and timestamps given as seconds or aware datetimes."""

from __future__ import annotations

import datetime as _dt

from ._core import InvalidArgumentError


def unix_seconds(t: float | _dt.datetime | None) -> float | None:
    if t is None:
        return None
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise InvalidArgumentError("naive datetime: give it a timezone (e.g. datetime.timezone.utc)")
        return t.timestamp()
    raise InvalidArgumentError(f"expected Unix seconds or an aware datetime, got {type(t).__name__}")


def budget_window(period: str, now: float) -> tuple[int, int | None]:
    """(start, end) in Unix seconds of the UTC hour / day / month around `now`; (0, None) for "total".
    The same bounds the core's ledger uses; the PostgreSQL ledger and Redis state use them too."""
    if period == "hour":
        start = int(now // 3600 * 3600)
        return start, start + 3600
    if period == "day":
        start = int(now // 86400 * 86400)
        return start, start + 86400
    if period == "month":
        t = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (t + _dt.timedelta(days=32)).replace(day=1)
        return int(t.timestamp()), int(nxt.timestamp())
    return 0, None


__all__ = ["budget_window", "unix_seconds"]
