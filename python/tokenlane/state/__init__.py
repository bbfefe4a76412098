"""Shared state of the request-path stages, behind one interface per stage, with a backend per URL.

The request's hot state (:class:`State`): budget reservations at every level of
a principal chain, TPM/RPM buckets and concurrency slots, taken all-or-nothing by one
:class:`Hold` per request. :class:`LocalState` serves one host (budgets in the SQLite ledger,
buckets and slots in-process); a Redis backend (``state="redis://…"``) serves several replicas.
Response-cache entries have their own store interface in :mod:`tokenlane.state.cache` (SQLite / Redis)."""

from .base import DEFAULT_LEASE_S, Denied, Hold, Rate, Slots, State
from .local import LocalState

__all__ = ["DEFAULT_LEASE_S", "Denied", "Hold", "LocalState", "Rate", "Slots", "State"]
