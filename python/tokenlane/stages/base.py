"""What the stages share: who a request is charged to (:class:`Identity`), the request once
counted and priced (:class:`Priced`), what happened downstream (:class:`Outcome`), and the one
thread that makes this process's ledger calls (:class:`LedgerThread`)."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .._core import InvalidArgumentError, StorageError
from ..formats import LLMRequest
from ..providers import UsageReports

log = logging.getLogger("tokenlane")


_random = bytearray()


def new_request_id() -> str:
    """``req_`` and 128 random bits in hex, as unguessable as ``uuid4`` (a job's id is its status
    URL's only secret). The random bytes are read 256 ids at a time: each ``os.urandom`` call lets
    go of the GIL, a hand-off to the ledger thread that every request would otherwise pay."""
    global _random
    if not _random:
        _random = bytearray(os.urandom(16 * 256))
    chunk = _random[-16:]
    del _random[-16:]
    return "req_" + chunk.hex()


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
    reserved_tokens: int = 0  # tokens reserved in the ledger (token budgets)
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
    row_json: bytes | None = None             # the ledger row as decided, JSON (reused by the final record)
    decided: tuple[str, Any] | None = None    # (row status, the scheduler's decision), once decided
    prepared: Any = None  # the core's PreparedChat (fast path): the estimator learns from it after the response
    settling: Any = None  # the shared state's settlement (an asyncio task): see settled()
    record_written: Any = None  # the ledger's Future of the final record Redis keeps meanwhile

    async def settled(self, timeout_s: float = 1.0) -> None:
        """When Redis keeps the request's final ledger record (``record_written``): waits until
        the settlement stored it (which also gives the reservation back, so what the client reads
        next, its usage, is settled), or, when Redis did not within ``timeout_s`` (unreachable: it
        retries on its own), until the ledger has the record instead. Every answered request is in
        Redis or in the ledger. (With a journal the record is durable already: nothing to wait for.)"""
        if self.record_written is None:
            return
        s = self.settling
        if s is not None and not s.done():
            await asyncio.wait({s}, timeout=timeout_s)
        if s is None or not s.done() or s.cancelled() or s.exception() is not None or not s.result():
            try:
                await asyncio.wrap_future(self.record_written)
            except StorageError:  # the ledger stayed unwritable past its retries: logged there
                log.error("tokenlane: ledger row of %s not written yet (kept for retry)", self.id)

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


# How long the ledger thread lets records gather before it applies a batch: rows reach SQLite (and
# other processes) this much later; this process's own reads wait for them (LedgerThread.flush).
BATCH_DELAY_S = 0.01


class LedgerThread:
    """One thread does every ledger call of this process, in submission order, off the event loop
    (the ledger serialises on its connection anyway; order keeps a row's insert before its update).

    **Write-behind.** A request's ledger writes are *records* (:meth:`record`): one JSON line each,
    appended to this process's journal with one ``write()`` (:mod:`tokenlane.recovery`) before the
    response goes out, and applied by this thread in batches, one transaction per batch, each record
    exactly once (``Ledger.apply_journal``). Nothing the response waits for crosses to this thread.
    Reads through the ledger (``Ledger.before_read`` = :meth:`flush`) first wait for the records
    queued so far. A ledger without ``apply_journal`` (PostgreSQL: replicas on other hosts, no local
    journal) gets the same records applied call by call, and the caller awaits them.

    A call that fails with a storage error (database locked past its busy timeout, disk full,
    read-only file) is retried on this thread with backoff for up to ``retry_s``: later calls wait
    behind it, so order holds, and the process resumes by itself when the condition clears. Each
    failure goes to ``on_error`` (a metric and a log line); after ``retry_s`` the error is raised to
    the caller (a batch of records is kept, and retried with the next one). Every ledger call is one
    transaction, rolled back on failure, so a retry is safe. ``sweep`` (if given) runs on this
    thread every ``sweep_s`` seconds (dead workers' reclaim)."""

    def __init__(self, retry_s: float = 30.0, on_error: Callable[[str, BaseException], None] | None = None, *,
                 ledger: Any = None, journal: Any = None, sweep: Callable[[], Any] | None = None,
                 sweep_s: float = 10.0) -> None:
        self.retry_s = retry_s
        self.on_error = on_error
        self.ledger = ledger
        self.journal = journal  # tokenlane.recovery.Journal; None: records live in memory until applied
        self.sweep, self.sweep_s = sweep, sweep_s
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()  # the records, their futures and the journal file
        self._records: list[bytes] = []
        self._after: list[tuple[Future[Any], Callable[[], Any] | None]] = []
        self._scheduled = False   # an apply job is queued
        self._waited = False      # a record a response waits for is queued (see record's ``waited``)
        self._in_after = False    # this thread is running the callbacks of an applied batch
        self._queued = 0          # records queued so far, and applied so far (for flush)
        self._applied = 0
        self._retired: list[Any] = []  # journal files whose records are all applied once this batch is
        self._closed = False
        self._queued_at_call = 0
        # Set when something waits behind a gathering batch (a record a response waits for, or
        # another call): the batch applies at once rather than after BATCH_DELAY_S.
        self._hurry = threading.Event()
        self._jobs_pending = 0  # jobs put and not yet run (flush waits for them)
        # A SQLite ledger: the core applies the records on a native thread of its own (no GIL: the
        # event loop never hands its lock over for them); other ledgers: this thread, in batches.
        core = getattr(ledger, "_led", None)
        self._native: Any = None
        if core is not None and hasattr(ledger, "apply_journal"):
            from .. import _core

            self._native = _core.JournalApplier(core, BATCH_DELAY_S)
        self._native_ledger = core
        self._native_retired: list[tuple[int, Any]] = []  # (last record's sequence, journal file)
        _open_threads.add(self)

    @property
    def write_behind(self) -> bool:
        """True when records are durable once :meth:`record` returns (a journal file)."""
        return self.journal is not None

    # --- calls ----------------------------------------------------------------------------------

    def _put(self, job: Callable[[], None], *, hurry: bool = True) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="tokenlane-ledger", daemon=True)
                    self._thread.start()
        with self._start_lock:
            self._jobs_pending += 1
        self._jobs.put(job)
        if hurry:
            self._hurry.set()  # a batch gathering in front of it applies now

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

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Runs a blocking ledger call on the ledger thread (from any thread); returns its Future.
        A submitted call always runs: its future cannot be cancelled. (A task awaiting it is
        cancelled when its client hangs up, e.g. just after a stream's last event; the row's final
        update, queued behind the settlement, must still happen, or the row stays ``running``.)"""
        future: Future[Any] = _Uncancellable()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                self._flush_native()  # a call sees every record queued before it
                future.set_result(self._durable(fn, *args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        if self._closed:
            job()
        else:
            self._put(job)
        return future

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Like :meth:`submit`, from the event loop: await the result when it matters (cancelling
        the awaiting task does not cancel the call)."""
        return asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def beside(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Like :meth:`write`, for a call that needs no order with this thread's others (a
        PostgreSQL budget reservation: one statement on a pool of connections): on the event
        loop's executor, beside this thread rather than queued behind its batches, with the same
        retries (a request waits out a short ledger outage instead of failing)."""
        return asyncio.get_running_loop().run_in_executor(None, lambda: self._durable(fn, *args, **kwargs))

    # --- records (write-behind) -----------------------------------------------------------------

    def record(self, line: bytes, *, durable: bool = True, after: Callable[[], Any] | None = None,
               waited: bool = True) -> Future[Any] | None:
        """Queues one journal record (a JSON object and a newline) for the next batch. ``durable``:
        appended to the journal file first, so from now on a ``kill -9`` cannot lose it (raises
        OSError when the file cannot be written). Returns a Future of ``after()`` (run on this
        thread once the record is applied) when ``after`` is given or the record is not durable
        before it is applied (no journal: await it before answering); else None. Not ``waited``:
        no response waits for the Future (Redis keeps the record meanwhile), so the record gathers
        with others for BATCH_DELAY_S, as a record with no Future does."""
        if self._native is not None:
            return self._record_native(line, durable, after)
        future: Future[Any] | None = None
        with self._lock:
            journaled = False
            if durable and self.journal is not None:
                try:
                    self.journal.append(line)
                    journaled = True
                except OSError as exc:  # disk full, file too large: then the caller waits for the ledger
                    if self.on_error is not None:
                        self.on_error("journal", exc)
            self._records.append(line)
            self._queued += 1
            if after is not None or (durable and not journaled):
                future = _Uncancellable()
                self._after.append((future, after))
            hurry = future is not None and waited
            self._waited = self._waited or hurry
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            if self._closed:
                self._apply_pending()
            else:
                # A record nobody waits for (one that is durable already, or a request's decided row
                # on PostgreSQL) lets others gather behind it; one a response waits for, or any
                # call queued behind the batch, sets it going at once (on PostgreSQL the decided row
                # and the final record of a quick request are one round trip, not two in a row).
                if not hurry:
                    self._put(self._apply_later, hurry=False)
                else:
                    self._put(self._apply_pending)
        elif hurry:
            self._hurry.set()
        return future

    def _record_native(self, line: bytes, durable: bool, after: Callable[[], Any] | None) -> Future[Any] | None:
        journaled = False
        with self._lock:  # the file's order is the applier's order
            if durable and self.journal is not None:
                try:
                    self.journal.append(line)
                    journaled = True
                except OSError as exc:  # disk full, file too large: then the caller waits for the ledger
                    if self.on_error is not None:
                        self.on_error("journal", exc)
            seq = self._native.push(line)
            self._queued = seq
            if journaled:
                old = self.journal.rotate()
                if old is not None:
                    self._native_retired.append((seq, old))
        if after is None and (journaled or not durable):
            return None
        return self.submit(self._await_native, after, must_apply=durable and not journaled)

    def _await_native(self, after: Callable[[], Any] | None, must_apply: bool) -> Any:
        """(On this thread, after the flush every call makes.) Raises StorageError when a record
        that is in no journal is still not applied (the caller answers and logs it)."""
        if must_apply and self._native.take_status()["applied"] < self._queued_at_call:
            raise StorageError("the ledger did not take the record in time (kept, and retried)")
        return after() if after is not None else None

    def _flush_native(self, timeout_s: float | None = None) -> bool:
        """Waits until the records queued so far are applied (at most ``timeout_s``, default
        ``retry_s``); reports the applier's failures and skipped records."""
        if self._native is None:
            return True
        self._queued_at_call = self._queued
        done = self._native.flush(self.retry_s if timeout_s is None else timeout_s)
        self._poll_native()
        return done

    def _poll_native(self) -> None:
        status = self._native.take_status()
        self._applied = status["applied"]
        for problem in status["skipped"]:
            log.error("tokenlane: ledger record skipped: %s", problem)
        if status["failures"]:
            exc = StorageError(status["last_error"])
            if self.on_error is not None:
                self.on_error("retried", exc)
            log.error("tokenlane: %d ledger records kept until the ledger comes back: %s",
                      status["queued"] - status["applied"], exc)
            core = getattr(self.ledger, "_led", None)
            if core is not None and core is not self._native_ledger:  # reconnected (read-only file fixed)
                self._native.set_ledger(core)
                self._native_ledger = core
        while self._native_retired and self._native_retired[0][0] <= status["applied"]:
            self._native_retired.pop(0)[1].unlink(missing_ok=True)

    def _apply_later(self) -> None:
        # The first record since the last batch: let more arrive (the GIL is free meanwhile), so
        # this thread takes the GIL once per batch rather than once per request; until something
        # waits for the batch (see record).
        with self._lock, self._start_lock:
            if not self._waited and self._jobs_pending <= 1:
                self._hurry.clear()  # left from a call that ran already: nothing waits now
        self._hurry.wait(BATCH_DELAY_S)
        self._apply_pending()

    def _apply_pending(self) -> None:
        with self._lock:
            batch, after, self._records, self._after = self._records, self._after, [], []
            self._scheduled = self._waited = False
            self._hurry.clear()  # whatever waited for the records is in this batch
            applied_to = self._queued
            if self.journal is not None:
                old = self.journal.rotate()
                if old is not None:
                    self._retired.append(old)
        if not batch:
            return
        try:
            skipped = self._durable(self._apply, b"".join(batch))
        except StorageError as exc:
            # Kept, in order, for the next batch (journaled ones are in the file too). A caller
            # waiting to answer until its record is written is told now: it answers and logs.
            waiting = [(future, fn) for future, fn in after if fn is None]
            with self._lock:
                self._records[:0] = batch
                self._after[:0] = [(future, fn) for future, fn in after if fn is not None]
            log.error("tokenlane: %d ledger records kept until the ledger comes back: %s", len(batch), exc)
            for future, _ in waiting:
                future.set_exception(exc)
            return
        except BaseException as exc:  # a bug: never lose the futures' waiters
            for future, _ in after:
                future.set_exception(exc)
            raise
        for problem in skipped:
            log.error("tokenlane: ledger record skipped: %s", problem)
        self._applied = max(self._applied, applied_to)
        # A callback that reads the ledger (a budget alert's check) flushes it first: that must not
        # apply the records queued since this batch and run their callbacks inside this one's.
        self._in_after = True
        try:
            for future, fn in after:
                try:
                    future.set_result(fn() if fn is not None else None)
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            self._in_after = False
        retired, self._retired = self._retired, []
        for path in retired:
            path.unlink(missing_ok=True)

    def _apply(self, data: bytes) -> list[str]:
        apply = getattr(self.ledger, "apply_journal", None)
        if apply is not None:
            return apply(data)
        return apply_records(self.ledger, data)

    def flush(self) -> None:
        """Returns once every record queued before the call is applied (from any thread; with a
        ledger outage, after ``retry_s`` at most)."""
        if self._native is not None:
            if threading.current_thread() is self._thread or self._closed or self._thread is None:
                self._flush_native()
            elif self._jobs_pending or self._applied < self._queued:
                self.submit(lambda: None).result()  # calls queued before (tags, ...) and the records
            return
        on_thread = threading.current_thread() is self._thread or self._closed or self._thread is None
        if self._applied >= self._queued and (on_thread or not self._jobs_pending):
            return  # (a call queued before, such as a request's tags, is waited for too)
        if on_thread and self._in_after:
            return  # (see _apply_pending: a record's callback sees the ledger as of its batch)
        if on_thread:
            self._apply_pending()
            return
        self.submit(lambda: None).result()

    # --- the thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        next_sweep = time.monotonic() + (self.sweep_s if self.sweep else 3600.0)
        while True:
            wait = max(0.0, next_sweep - time.monotonic())
            queued = True
            try:
                job = self._jobs.get(timeout=min(wait, 1.0) if self._native is not None else wait)
            except queue.Empty:
                queued = False
                # idle: a batch kept back by an outage gets its retry; the applier's news is read
                job = self._poll_native if self._native is not None else self._apply_pending
            if job is None:
                return
            try:
                job()
            except BaseException:  # never let one job end the thread
                log.exception("tokenlane: ledger thread job failed")
            finally:
                if queued:
                    with self._start_lock:
                        self._jobs_pending -= 1
            if self.sweep is not None and time.monotonic() >= next_sweep:
                try:
                    self.sweep()
                except BaseException:
                    log.exception("tokenlane: reclaiming dead workers failed (retried later)")
                next_sweep = time.monotonic() + self.sweep_s
            elif self.sweep is None:
                next_sweep = time.monotonic() + 3600.0

    def close(self) -> None:
        """Applies what is queued and stops the thread (at exit; later calls run inline)."""
        if self._closed:
            return
        if self._thread is not None and self._thread.is_alive():
            done = self.submit(self._apply_pending)
            self._jobs.put(None)
            try:
                done.result(timeout=self.retry_s + 5)
            except Exception:  # noqa: BLE001 - at exit: report, never hang
                log.exception("tokenlane: ledger records left unapplied at exit (in the journal)")
            self._thread.join(timeout=5)
        self._closed = True
        self._apply_pending()
        applied = True
        if self._native is not None:
            applied = self._flush_native(timeout_s=min(self.retry_s, 10.0))
            self._native = None  # the applier stops (it applied all it could)
        if self.journal is not None:
            self.journal.close(remove=applied and not self._records)


def apply_records(ledger: Any, data: bytes) -> list[str]:
    """Journal records applied call by call, for a ledger without ``apply_journal`` (PostgreSQL)."""
    skipped = []
    for line in data.splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        try:
            if "row" in r and ledger.get_request(r["id"]) is None:
                ledger.insert_request(r["row"])
            if "final" in r:
                ledger.update_request(r["id"], **r["final"])
                if r.get("budgets"):
                    ledger.settle_all(r["budgets"], r.get("reserved") or 0, r.get("actual") or 0, r["now"],
                                      hold=r["id"], reserved_tokens=r.get("reserved_tokens") or 0,
                                      actual_tokens=r.get("tokens") or 0)
        except InvalidArgumentError as exc:
            skipped.append(f"{exc}: {line[:200]!r}")
    return skipped


class _Uncancellable(Future):  # type: ignore[type-arg]
    def cancel(self) -> bool:
        return False


_open_threads: weakref.WeakSet[LedgerThread] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At exit, every ledger thread applies what it still holds (what a SIGTERM'd worker answered)."""
    for thread in list(_open_threads):
        thread.close()


__all__ = ["Identity", "LedgerThread", "Outcome", "Priced", "apply_records", "end_user_principal", "level_of",
           "new_request_id"]
