"""Stage: who pays for a request. A job's given identity, the ``identify`` hook, an API key the
ledger knows, an extractor's tenant, the body's ``user`` (when trusted), a hash of an unknown key,
or "anonymous"."""

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
        if self.hook is not None:
            found = self.hook(scope, request)
            found = await found if inspect.isawaitable(found) else found
            if isinstance(found, Identity):
                return found
            if isinstance(found, str) and found:
                return Identity(tenant=found)
        key = api_key(headers)
        record = await self.key_record(key)
        if record is None and self.settings.require_api_key:
            raise RequestError(401, "a valid API key is required (Authorization: Bearer <key>)",
                               type="invalid_request_error", code="invalid_api_key")
        if record is not None:
            return Identity(tenant=record["tenant"], user_id=record.get("user_id"), key_id=record.get("key_id"),
                            role=record.get("role"))
        if request.tenant:
            return Identity(tenant=request.tenant)
        if self.settings.trust_user_field and request.user:
            return Identity(tenant=request.user)
        return Identity(tenant=tenant_without_record(key))


__all__ = ["Identify", "IdentifyHook", "api_key", "tenant_without_record"]
