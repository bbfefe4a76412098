"""Counting whole requests: OpenAI chat requests exactly, other model families approximately."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _core
from .encoding import encoding_for_model, get_encoding


def count_chat_tokens(
    messages: Sequence[Mapping[str, Any]],
    model: str = "gpt-4o",
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    functions: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Prompt tokens of an OpenAI chat request as OpenAI bills them (``usage.prompt_tokens``).

    Adds the per-message overhead, one token per ``name``, the reply priming and the rendered tool
    definitions, with the constants of OpenAI's cookbook. Images in content parts count as a fixed
    estimate (85 tokens at ``detail="low"``, else 765). Raises ValueError on a malformed request.
    """
    request: dict[str, Any] = {"messages": messages}
    if tools:
        request["tools"] = tools
    if functions:
        request["functions"] = functions
    try:
        body = json.dumps(request, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise _core.InvalidArgumentError(f"chat request is not JSON-serialisable: {exc}") from exc
    return encoding_for_model(model)._core.count_chat(body, model)


@dataclass(frozen=True)
class ApproximateCount:
    """An estimate, never exact: ``tokens`` is typically off by ``typical_error`` (relative)."""

    tokens: int
    family: str
    typical_error: float
    calibrated: bool
    exact: bool = False


def count_tokens_approx(text: str, model: str) -> ApproximateCount:
    """Approximate tokens of ``text`` for a model without a public tokenizer (Claude, Gemini, ...).

    See docs/approximate-counting.md for the calibration. UnknownNameError if no family matches.
    """
    family = _core.approximate_family(model)
    tokens = _core.count_approximate(get_encoding("o200k_base")._core, text, model)
    return ApproximateCount(tokens, family["name"], family["typical_error"], family["calibrated"])

