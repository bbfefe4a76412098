"""Reading prompts and prompt/output records, shared by the estimators (training) and the
evaluation helpers: the text the estimators read from a prompt, and evaluation/training data
(see ``tokenlane.evaluation`` for the accepted shapes) as parallel columns.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from . import _core

Prompt = Union[str, Sequence[Mapping[str, Any]]]

_MESSAGE_SEPARATOR = "\x1e"  # kMessageSeparator in cpp/include/tokenlane/estimator.hpp
_ROLE_SEPARATOR = "\x1f"


def _part_text(part: Any, where: str) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        raise _core.InvalidArgumentError(f"{where}: a content part must be a str or a dict, got {type(part).__name__}")
    kind = part.get("type", "text")
    if kind in ("text", "input_text", "output_text"):
        text = part.get("text", "")
        if not isinstance(text, str):
            raise _core.InvalidArgumentError(f"{where}: a text part's 'text' must be a str")
        return text
    if kind == "tool_result":  # Anthropic: content is a str or a list of parts
        return _content_text(part.get("content"), where)
    if kind == "tool_use":  # Anthropic: the call's input is part of the prompt
        return str(part.get("input", ""))
    return ""  # images, audio, files: their text length is unknown here


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(t for t in (_part_text(p, f"{where}[{i}]") for i, p in enumerate(content)) if t)
    raise _core.InvalidArgumentError(f"{where}: content must be a str or a list of parts, got {type(content).__name__}")


def flatten_prompt(prompt: Prompt) -> str:
    """The text the estimators read: a str as is; chat messages (OpenAI or Anthropic shape, content
    a str or a list of parts) as ``role\\x1fcontent`` joined by ``\\x1e``, so the core can tell the
    first and last message apart. Raises InvalidArgumentError for anything else."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise _core.InvalidArgumentError(
            f"prompt must be a str or a list of chat messages, got {type(prompt).__name__}"
        )
    parts = []
    for i, msg in enumerate(prompt):
        if not isinstance(msg, Mapping):
            raise _core.InvalidArgumentError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role = msg.get("role", "")
        if not isinstance(role, str):
            raise _core.InvalidArgumentError(f"messages[{i}]['role'] must be a str")
        parts.append(role + _ROLE_SEPARATOR + _content_text(msg.get("content"), f"messages[{i}]['content']"))
    return _MESSAGE_SEPARATOR.join(parts)


_OPTIONAL_TEXT = ("route", "tenant", "task")
_OPTIONAL_COUNTS = ("max_tokens", "input_tokens")


@dataclass
class Records:
    """Parallel columns, in the order given (the online replay order)."""

    prompts: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    routes: list[str] | None = None
    tenants: list[str] | None = None
    tasks: list[str] | None = None
    max_tokens: list[int | None] | None = None
    input_tokens: list[int | None] | None = None
    prompt_keys: list[str] = field(default_factory=list)  # the original prompt text, for grouping
    # Cut by max_tokens (finish_reason "length", or output_tokens >= max_tokens): a lower bound.
    truncated: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _iter_path(path: Path) -> Iterable[Mapping[str, Any]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise _core.InvalidArgumentError(f"no .json or .jsonl files under {path}")
        for f in files:
            yield from _iter_path(f)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _core.InvalidArgumentError(f"cannot read evaluation data {path}: {exc}") from exc
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _core.InvalidArgumentError(f"{path}:{n}: not JSON: {exc}") from exc
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _core.InvalidArgumentError(f"{path}: not JSON: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("records", data.get("data"))
    if not isinstance(data, list):
        raise _core.InvalidArgumentError(f"{path}: expected a JSON list of records")
    yield from data


def _rows(data: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        return _iter_path(Path(data))
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return (row for d in data for row in _iter_path(Path(d)))
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebook and dev extras
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        return data.to_dict("records")
    if isinstance(data, Iterable) and not isinstance(data, Mapping):
        return data
    raise _core.InvalidArgumentError(
        "data must be a DataFrame, a list of records, or paths to JSON/JSONL files"
    )


def load_records(data: Any) -> Records:
    """Reads evaluation/training data into parallel columns (see the module docstring)."""
    if isinstance(data, Records):
        return data
    from .encoding import get_encoding

    enc = None
    r = Records()
    opt_text: dict[str, list[str]] = {k: [] for k in _OPTIONAL_TEXT}
    opt_count: dict[str, list[int | None]] = {k: [] for k in _OPTIONAL_COUNTS}
    seen_text = set()
    seen_count = set()
    reasons: list[Any] = []
    for i, row in enumerate(_rows(data)):
        if not isinstance(row, Mapping):
            raise _core.InvalidArgumentError(f"record {i} is not a dict")
        prompt = row.get("prompt", row.get("messages", row.get("instruction")))
        model = row.get("model", row.get("generator"))
        if _missing(prompt) or _missing(model):
            raise _core.InvalidArgumentError(
                f"record {i} needs a prompt (or messages / instruction) and a model (or generator)"
            )
        out = row.get("output_tokens")
        if _missing(out):
            text = row.get("output")
            if not isinstance(text, str):
                raise _core.InvalidArgumentError(f"record {i} needs output_tokens (or the response text in output)")
            if enc is None:
                enc = get_encoding("o200k_base")
            out = enc.count(text, disallowed_special=())
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int) or out < 0:
            raise _core.InvalidArgumentError(f"record {i}: output_tokens must be an int >= 0, got {out!r}")
        flat = flatten_prompt(prompt)
        r.prompts.append(flat)
        r.prompt_keys.append(flat)
        r.models.append(str(model))
        r.output_tokens.append(out)
        for k in _OPTIONAL_TEXT:
            v = row.get(k)
            if not _missing(v):
                seen_text.add(k)
            opt_text[k].append("" if _missing(v) else str(v))
        for k in _OPTIONAL_COUNTS:
            v = row.get(k)
            if not _missing(v):
                seen_count.add(k)
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "max_tokens" else 0):
                    raise _core.InvalidArgumentError(f"record {i}: {k} must be a positive int, got {v!r}")
            opt_count[k].append(None if _missing(v) else v)
        reasons.append(row.get("finish_reason"))
    if not r.prompts:
        raise _core.InvalidArgumentError("no records in the evaluation data")
    r.routes = opt_text["route"] if "route" in seen_text else None
    r.tenants = opt_text["tenant"] if "tenant" in seen_text else None
    r.tasks = opt_text["task"] if "task" in seen_text else None
    r.max_tokens = opt_count["max_tokens"] if "max_tokens" in seen_count else None
    r.input_tokens = opt_count["input_tokens"] if "input_tokens" in seen_count else None
    caps = r.max_tokens or [None] * len(r.prompts)
    cut = [truncated(o, m, f if isinstance(f, str) else None) for o, m, f in zip(r.output_tokens, caps, reasons)]
    r.truncated = cut if any(cut) else None
    return r


_CUT_REASONS = frozenset({"length", "max_tokens"})  # OpenAI finish_reason, Anthropic stop_reason


def truncated(output_tokens: int, max_tokens: int | None, finish_reason: str | None = None) -> bool:
    """Whether a response was cut by its cap, so its length is only a lower bound."""
    return finish_reason in _CUT_REASONS or (max_tokens is not None and output_tokens >= max_tokens)


__all__ = ["Prompt", "Records", "flatten_prompt", "load_records", "truncated"]
