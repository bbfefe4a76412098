"""Stage: who pays for a request. The billing principal is authenticated: a job's given identity,
the ``identify`` hook, an API key the ledger knows (with its member's team and organisation), an
extractor's tenant, a hash of an unknown bearer key, or "anonymous". The body's ``user`` (when
``trust_user_field``) is only the end user inside that principal: it narrows, it never pays."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..asgi_io import Scope
from ..config import Settings
from ..errors import RequestError
from ..formats import LLMRequest
from ..ledger import Ledger
from .base import Identity

IdentifyHook = Callable[[Mapping[str, Any], LLMRequest], Any]  # -> Identity | str | None (or awaitable)

KEY_CACHE_S = 30.0  # how long a key's ledger record is trusted before it is read again


def api_key(headers: Mapping[str, str]) -> str | None:
    """The caller's key: ``Authorization: Bearer <key>`` or ``x-api-key``."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def tenant_without_record(key: str | None) -> str:
    """The tenant of a caller the ledger does not know: a hash of its key, else "anonymous"."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"


class Identify:
    def __init__(self, settings: Settings, ledger: Ledger, hook: IdentifyHook | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.hook = hook
        self._keys: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def cached_api_key(self, key: str) -> tuple[dict[str, Any] | None] | None:
        """The cached ledger record of an API key, as a 1-tuple; ``None`` when not cached."""
        hit = self._keys.get(hashlib.sha256(key.encode()).hexdigest())
        return (hit[1],) if hit and hit[0] > time.monotonic() else None

    def api_key_record(self, key: str) -> dict[str, Any] | None:
        """The ledger's record of an API key, cached for 30 s (blocking: call from a thread)."""
        record = self.ledger.verify_api_key(key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[hashlib.sha256(key.encode()).hexdigest()] = (time.monotonic() + KEY_CACHE_S, record)
        return record

    def forget_keys(self) -> None:
        """Drops the cached key records (after a member's team, organisation or role changed)."""
        self._keys.clear()

    async def key_record(self, key: str | None) -> dict[str, Any] | None:
        if not key:
            return None
        cached = self.cached_api_key(key)
        if cached is not None:
            return cached[0]
        return await asyncio.to_thread(self.api_key_record, key)

    async def __call__(self, scope: Scope, headers: Mapping[str, str], request: LLMRequest) -> Identity:
        given = scope.get("tokenlane.identity")
        if isinstance(given, Identity):
            return given
        # The body's `user` only ever narrows: it names an end user inside the authenticated
        # principal (who keeps paying for it), never a principal of its own.
        end_user = request.user if self.settings.trust_user_field and request.user else None
        if self.hook is not None:
            found = self.hook(scope, request)
            found = await found if inspect.isawaitable(found) else found
            if isinstance(found, Identity):
                if found.end_user is None and end_user:
                    found.end_user = end_user
                return found
            if isinstance(found, str) and found:
                return Identity(tenant=found, end_user=end_user)
        key = api_key(headers)
        record = await self.key_record(key)
        if record is None and self.settings.require_api_key:
            raise RequestError(401, "a valid API key is required (Authorization: Bearer <key>)",
                               type="invalid_request_error", code="invalid_api_key")
        if record is not None:
            return identity_of_key(record, end_user)
        if request.tenant:  # an extractor (the app's own code) named it
            return Identity(tenant=request.tenant, end_user=end_user)
        return Identity(tenant=tenant_without_record(key), end_user=end_user)


def identity_of_key(record: Mapping[str, Any], end_user: str | None = None) -> Identity:
    """The identity of a ledger API key's record (its member's tenant, team and organisation)."""
    return Identity(tenant=record["tenant"], user_id=record.get("user_id"), key_id=record.get("key_id"),
                    role=record.get("role"), org=record.get("org") or None, team=record.get("team") or None,
                    end_user=end_user)


__all__ = ["Identify", "IdentifyHook", "api_key", "identity_of_key", "tenant_without_record"]
