"""Conversation trimming to a token budget, counted with the model's exact tokenizer.

    messages = tokenlane.trim_messages(messages, "gpt-4o", 8000)

Keeps the system prompt and the newest turns, drops the oldest; with ``truncate=True`` the oldest
turn that still fits in part is cut short instead of dropped. A tool call and its results are one
unit: never split. The result always fits: the count is the one the provider bills.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .chat import count_chat_tokens
from .formats import ANTHROPIC_MESSAGES, OPENAI_CHAT, LLMRequest, count_input_tokens

__all__ = ["TrimError", "trim_messages"]

TRUNCATION_MARK = " […]"


class TrimError(ValueError):
    """The system prompt and the newest turn alone exceed the budget; ``tokens`` is their count."""

    def __init__(self, message: str, tokens: int, budget: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.budget = budget


def trim_messages(messages: Sequence[Mapping[str, Any]], model: str, max_tokens: int, *,
                  tools: Sequence[Mapping[str, Any]] | None = None, system: str | None = None,
                  truncate: bool = False) -> list[dict[str, Any]]:
    """The newest part of ``messages`` whose prompt is at most ``max_tokens`` tokens of ``model``.

    ``tools`` are counted (they are sent with every call); ``system`` is an Anthropic-style system
    prompt outside the list. Leading system/developer messages are always kept, and so is the last
    turn. Returns new dicts (the input is not modified); the input itself when it already fits.
    Raises :class:`TrimError` when even the system prompt plus the last turn do not fit.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    messages = [dict(m) for m in messages]
    count = _counter(model, tools, system)
    if count(messages) <= max_tokens:
        return messages
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    kept_head, units = messages[:head], _units(messages[head:])
    if not units:
        raise TrimError(f"the system prompt alone has {count(kept_head)} tokens; the budget is {max_tokens}",
                        count(kept_head), max_tokens)

    def keep(n: int) -> list[dict[str, Any]]:  # the system prompt and the newest n units
        return kept_head + [m for unit in units[len(units) - n:] for m in unit]

    if count(keep(1)) > max_tokens:
        tokens = count(keep(1))
        raise TrimError(f"the system prompt and the last turn have {tokens} tokens; the budget is {max_tokens}",
                        tokens, max_tokens)
    lo = _largest(1, len(units), lambda n: count(keep(n)) <= max_tokens)
    kept = keep(lo)
    if truncate and lo < len(units):
        cut = _truncated(units[len(units) - lo - 1], lambda m: count(kept_head + [m] + kept[len(kept_head):]),
                         max_tokens)
        if cut is not None:
            kept.insert(len(kept_head), cut)
    return kept


def _counter(model: str, tools: Sequence[Mapping[str, Any]] | None,
             system: str | None) -> Callable[[list[dict[str, Any]]], int]:
    """Exact chat counting for OpenAI models; the library's calibrated approximation otherwise."""
    def count(messages: list[dict[str, Any]]) -> int:
        if system is None:
            try:
                return count_chat_tokens(messages, model, tools=tools)
            except KeyError:  # no public tokenizer for this model family
                pass
        api = ANTHROPIC_MESSAGES if system is not None else OPENAI_CHAT
        return count_input_tokens(LLMRequest(api=api, model=model, messages=messages, system=system,
                                             tools=list(tools) if tools else None)).tokens
    return count


def _units(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Messages grouped so that a tool call and its results stay together (OpenAI ``tool_calls`` /
    ``tool`` messages, legacy ``function_call``, Anthropic ``tool_use`` / ``tool_result`` parts)."""
    units: list[list[dict[str, Any]]] = []
    for m in messages:
        if units and _answers_tool_call(m) and (_calls_tools(units[-1][-1]) or _answers_tool_call(units[-1][-1])):
            units[-1].append(m)
        else:
            units.append([m])
    return units


def _calls_tools(m: Mapping[str, Any]) -> bool:
    if m.get("tool_calls") or m.get("function_call"):
        return True
    content = m.get("content")
    return isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") == "tool_use" for p in content)


def _answers_tool_call(m: Mapping[str, Any]) -> bool:
    if m.get("role") in ("tool", "function"):
        return True
    content = m.get("content")
    return isinstance(content, list) and any(
        isinstance(p, Mapping) and p.get("type") == "tool_result" for p in content)


def _truncated(unit: list[dict[str, Any]], count_with: Callable[[dict[str, Any]], int],
               budget: int) -> dict[str, Any] | None:
    """The unit's one plain-text message cut to the longest head that still fits, or None."""
    if len(unit) != 1 or not isinstance(unit[0].get("content"), str):
        return None
    text: str = unit[0]["content"]

    def cut(n: int) -> dict[str, Any]:
        return {**unit[0], "content": text[:n] + TRUNCATION_MARK}

    if count_with(cut(0)) > budget:
        return None
    lo = _largest(0, len(text), lambda n: count_with(cut(n)) <= budget)  # characters of the head that fit
    return cut(lo) if lo > 0 else None


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [lo, hi] with fits(n), given fits(lo) and fits monotone (exact counts
    grow with what is kept)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
