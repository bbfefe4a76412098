"""The stages of the request path, one module each; :mod:`tokenlane.runtime` strings them together.

    parse → identify → cache → caps (+ trim) → price → schedule (with budget) → upstream → reconcile
    → observe                                                                            (+ jobs)

The stage contract (for adding one: caches, caps, routing, alerts, ...):

- A stage is a class in its own module here, built once per :class:`tokenlane.Tokenlane` from the
  objects it needs (``Settings``, ``Pricing``, the ``Ledger``, a ``tokenlane.state`` backend,
  ``Metrics``, the clock): constructor arguments, never the runtime itself, so imports flow one way
  (formats and the core wrappers → stages → runtime → asgi / cli). A stage never imports the
  runtime or the middleware; when it must call back into the path (jobs do), the runtime passes a
  callable down.
- Its one entry point is ``__call__`` (async when it waits: I/O, the queue). It reads and fills the
  request's record (:class:`Priced` after pricing; :class:`Identity` before), and refuses by raising
  :class:`tokenlane.errors.RequestError` (OpenAI-shaped body, status, Retry-After), which the
  runtime turns into the response and the ledger row. It never sends the response itself (only
  ``upstream`` talks to the wrapped app).
- Blocking work (the ledger, SQLite) runs on the :class:`LedgerThread` or ``asyncio.to_thread``;
  nothing blocks the event loop. Hot-path CPU work belongs in the C++ core.
- State that several worker processes or replicas must share (reservations, buckets, slots, marks)
  goes through :mod:`tokenlane.state`, never a module-level dict, so the Redis backend covers it.
- A stage that is switched off costs nothing: the runtime does not build it (or it returns at its
  first line on a settings flag read at construction), so the path does no work for it.
- Tests: one test module per stage, plus the end-to-end middleware tests.
"""

from .base import Identity, LedgerThread, Outcome, Priced
from .budget import Budget
from .cache import ResponseCache
from .caps import TierCaps
from .identify import Identify
from .jobs import Job, Jobs
from .observe import Observe
from .parse import Parse
from .price import Price
from .prompt_cache import PromptCachePredictor
from .reconcile import Reconcile
from .schedule import Schedule
from .upstream import Upstream

__all__ = ["Budget", "Identify", "Identity", "Job", "Jobs", "LedgerThread", "Observe", "Outcome", "Parse", "Price",
           "Priced", "PromptCachePredictor", "Reconcile", "ResponseCache", "Schedule", "TierCaps", "Upstream"]
