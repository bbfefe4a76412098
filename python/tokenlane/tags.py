"""Cost attribution tags: ``X-Tokenlane-Tags: feature=search,team=growth`` recorded per request.

Tags come from the header, from an extractor (``LLMRequest.tags``) and from the identify hook
(``Identity.tags``); the app's own hooks win over the client's header for the same key. Reports
group by any tag key (``tokenlane report --by tag:feature``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .sidecar import Sidecar

HEADER = "x-tokenlane-tags"
MAX_TAGS = 16
_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_VALUE = re.compile(r"[^,=\x00-\x1f]{1,128}")


class TagError(ValueError):
    """A malformed tag list; the message says what is wrong."""


def parse_tags(text: str) -> dict[str, str]:
    """``"feature=search, team=growth"`` → ``{"feature": "search", "team": "growth"}``."""
    tags: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise TagError(f"X-Tokenlane-Tags: expected key=value pairs separated by commas (keys: letters, digits, "
                           f"_ . -, up to 64; values up to 128 characters), got {item[:80]!r}")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise TagError(f"X-Tokenlane-Tags: at most {MAX_TAGS} tags per request, got {len(tags)}")
    return tags


def merge_tags(*sources: Mapping[str, str] | None) -> dict[str, str]:
    """Later sources win for the same key (header, then extractor, then identify hook)."""
    out: dict[str, str] = {}
    for source in sources:
        if source:
            out.update({str(k): str(v) for k, v in source.items()})
    return out


class TagStore:
    """Request tags in the ledger's file (the ``request_tags`` table)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._db = sidecar

    def record(self, request_id: str, tags: Mapping[str, str]) -> None:
        if not tags:
            return
        with self._db.connection() as c:
            c.executemany("INSERT INTO request_tags (request_id, key, value) VALUES (?, ?, ?) "
                          "ON CONFLICT (request_id, key) DO UPDATE SET value = excluded.value",
                          [(request_id, k, v) for k, v in tags.items()])

    def keys(self, limit: int = 50) -> list[str]:
        """The tag keys in use (for a grouping menu)."""
        with self._db.connection() as c:
            return [r["key"] for r in c.execute("SELECT DISTINCT key FROM request_tags ORDER BY key LIMIT ?", (limit,))]

    def get(self, request_id: str) -> dict[str, str]:
        with self._db.connection() as c:
            rows = c.execute("SELECT key, value FROM request_tags WHERE request_id = ?", (request_id,)).fetchall()
        return {r["key"]: r["value"] for r in rows}


__all__ = ["HEADER", "TagError", "TagStore", "merge_tags", "parse_tags"]
