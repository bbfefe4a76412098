"""The interface of the hot state that worker processes and replicas share.

One request takes a :class:`Hold` when it is admitted and gives it back when it ends, so a backend
needs one round trip at admission (:meth:`State.acquire`) and one at the end (:meth:`State.settle`
or :meth:`State.release`):

- **budgets**: the request's amount (pico-USD, and tokens for token budgets) is reserved at
  *every* level of its principal chain (organisation → team → member → API key → end user), all
  or nothing; settle charges the actual cost and tokens at every level and frees the rest;
- **rates**: TPM / RPM buckets (one minute, sliding), taken from all or none;
- **slots**: concurrency slots, all or none.

Everything a hold takes carries its lease: a backend shared by replicas frees the hold of a
replica that stopped renewing (killed) once ``lease_s`` has passed; :meth:`State.renew` extends the
leases of the holds still running. Money is integer pico-USD, times are Unix seconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True)
class Rate:
    """A bucket: at most ``tpm`` tokens and ``rpm`` requests in any minute (None: no limit)."""

    key: str
    tpm: int | None = None
    rpm: int | None = None


@dataclass(frozen=True)
class Slots:
    """At most ``limit`` requests of ``key`` running at once."""

    key: str
    limit: int


@dataclass(frozen=True)
class Hold:
    """What one request takes from the shared state while it runs."""

    id: str                                 # the request id
    budgets: tuple[str, ...] = ()           # principals charged, top level first; all or none
    amount_pico_usd: int = 0                # reserved at every one of them
    amount_tokens: int = 0                  # tokens (input + output) reserved at every one of them
    rates: tuple[Rate, ...] = ()
    slots: tuple[Slots, ...] = ()
    tokens: int = 0                         # what the rates count (prompt + expected output)


@dataclass(frozen=True)
class Denied:
    """Why a hold was refused: the first thing without room."""

    kind: str                               # "budget" | "rate" | "slots"
    key: str                                # the principal or bucket
    retry_after_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class State(ABC):
    """Shared hot state (see the module docstring). Backends: :class:`tokenlane.state.LocalState`
    (one host), a Redis backend for several replicas."""

    lease_s: float = DEFAULT_LEASE_S

    @abstractmethod
    async def acquire(self, hold: Hold, now: float) -> Denied | None:
        """Takes everything the hold names, or nothing: ``None`` when taken, else why not."""

    @abstractmethod
    def settle(self, hold: Hold, actual_pico_usd: int, actual_tokens: int, now: float) -> Awaitable[None]:
        """The request ended: charge ``actual`` (and ``actual_tokens``) at every budget level, free
        the rest of the reservation and the slots, correct the token buckets by
        ``actual_tokens - hold.tokens``.
        Starts the work before returning (a task or a future, so it runs even if nobody awaits)."""

    @abstractmethod
    def release(self, hold: Hold, now: float) -> Awaitable[None]:
        """The request did not run after all: free everything, charge nothing (started at once)."""

    @abstractmethod
    async def renew(self, holds: Sequence[Hold], now: float) -> None:
        """Extends the leases of holds still running (called periodically while they run)."""

    @abstractmethod
    async def set_budget(self, principal: str, limit_pico_usd: int | None, window: str, now: float) -> None:
        """Sets (``None``: removes) a principal's USD budget per window hour | day | month | total."""

    @abstractmethod
    async def usage(self, principal: str, now: float) -> dict[str, Any]:
        """spent/reserved/limit/remaining_pico_usd, window, resets_at of a principal."""

    async def close(self) -> None:
        """Frees connections (nothing to do for in-process state)."""


__all__ = ["DEFAULT_LEASE_S", "Denied", "Hold", "Rate", "Slots", "State"]
