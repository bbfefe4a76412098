"""Request and response formats of LLM APIs: what a request asks for, and what a response used.

Requests (``parse_request``): OpenAI Chat Completions, Completions, Responses and Embeddings, and
Anthropic Messages, recognised by route; any other route is described by an extractor hook that
returns an :class:`LLMRequest`. Responses (``read_json_response`` and :class:`StreamReader` for SSE):
the provider's ``usage`` when it sends one, and the generated text, so that a response without usage
can still be counted exactly.
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chat import count_chat_tokens, count_tokens_approx
from .encoding import encoding_for_model, get_encoding

OPENAI_CHAT = "openai.chat"
OPENAI_COMPLETIONS = "openai.completions"
OPENAI_RESPONSES = "openai.responses"
OPENAI_EMBEDDINGS = "openai.embeddings"
ANTHROPIC_MESSAGES = "anthropic.messages"
CUSTOM = "custom"

# Route suffix → API. Matched on the path's end so "/v1/chat/completions", "/openai/chat/completions"
# and "/chat/completions" all work.
ROUTE_APIS: dict[str, str] = {
    "/chat/completions": OPENAI_CHAT,
    "/completions": OPENAI_COMPLETIONS,
    "/responses": OPENAI_RESPONSES,
    "/embeddings": OPENAI_EMBEDDINGS,
    "/messages": ANTHROPIC_MESSAGES,
}

# OpenAI's legacy Completions API generates 16 tokens when max_tokens is absent.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class MalformedRequest(ValueError):
    """The body is not a valid request of its API; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what a client controls in a request body (docs/limits.md has the table).

    They keep hostile bodies from costing memory, stack or time (and from overflowing the cost
    arithmetic: ``n`` × ``max_tokens`` × price stays far below 2**63 pico-USD); none is close to what
    a real request needs. The body size limit is the middleware's ``max_body_bytes`` setting.
    """

    json_depth: int = 64            # nesting of arrays and objects in the body
    messages: int = 4096            # messages / input items
    content_parts: int = 1024       # parts of one message's content
    tools: int = 128                # tools or functions (OpenAI's own limit)
    prompts: int = 2048             # items of an array prompt / embeddings input (OpenAI's limit)
    n: int = 128                    # completions per request (OpenAI's limit)
    max_tokens: int = 16_777_216    # any output-token cap (models accept far less)
    model_chars: int = 256
    user_chars: int = 200           # the ledger's limit on a tenant name, which `user` may become
    name_chars: int = 256           # a message's role and name


DEFAULT_LIMITS = RequestLimits()

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # JSON strings, which may hold brackets
# Opening brackets to +1, closing ones to -1 (as signed bytes); every other byte is deleted.
_BRACKETS = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text, in C-speed passes (no recursion)."""
    steps = array("b", _STRINGS.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS))
    return max(accumulate(steps), default=0)


def load_json_body(body: bytes, limits: RequestLimits = DEFAULT_LIMITS) -> Any:
    """Parses a request body, refusing (with :class:`MalformedRequest`) invalid JSON and nesting
    deeper than ``limits.json_depth``, before the parser's recursion could fail on it."""
    if body.count(b"[") + body.count(b"{") > limits.json_depth and _json_depth(body) > limits.json_depth:
        raise MalformedRequest(f"the JSON body nests arrays/objects deeper than {limits.json_depth} levels")
    try:
        return json.loads(body)
    except RecursionError:  # unreachable after the depth check; kept so no body can ever be a 500
        raise MalformedRequest("the JSON body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"the request body is not valid JSON: {exc}") from None


@dataclass
class LLMRequest:
    """What one LLM call asks for, independent of the API shape.

    ``messages`` (chat shapes) or ``prompt`` (text shapes) hold the input; ``n`` is how many
    completions the call asks for (output is billed for each). ``tenant``, ``priority``,
    ``deadline_ms`` and ``tags`` may be filled by an extractor; the middleware fills them otherwise.
    """

    api: str
    model: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[Any] | None = None
    system: str | None = None
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    user: str | None = None
    tools: list[Any] | None = None
    tenant: str | None = None
    priority: str | None = None
    deadline_ms: float | None = None
    generates: bool = True  # False for embeddings: nothing to estimate
    tags: dict[str, str] = field(default_factory=dict)  # cost attribution (an extractor may set them)
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The whole input as plain text (for estimators and approximate counting)."""
        parts: list[str] = []
        if self.system:
            parts.append(self.system)
        for message in self.messages or ():
            parts.append(content_text(message.get("content")))
        if isinstance(self.prompt, str):
            parts.append(self.prompt)
        elif isinstance(self.prompt, list):
            parts.extend(p for p in self.prompt if isinstance(p, str))
        return "\n".join(p for p in parts if p)

    def estimator_input(self) -> str | list[dict[str, Any]]:
        """What estimators take: the chat messages when there are any, else the text."""
        if self.messages and not self.system:
            return self.messages
        return self.text()


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of parts (OpenAI and Anthropic shapes)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type") in ("tool_result", "tool_use"):
                    inner = part.get("content", part.get("input"))
                    out.append(inner if isinstance(inner, str) else json.dumps(inner, ensure_ascii=False))
        return "\n".join(out)
    return str(content)


def api_for_path(path: str) -> str | None:
    """The API a path speaks by default (``None``: not an LLM route)."""
    path = path.rstrip("/")
    for suffix, api in ROUTE_APIS.items():
        if path.endswith(suffix):
            # "/completions" must not swallow "/chat/completions"
            if suffix == "/completions" and path.endswith("/chat/completions"):
                continue
            return api
    return None


def _int_field(body: Mapping[str, Any], name: str, minimum: int = 0, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MalformedRequest(f"'{name}' must be an integer >= {minimum}, got {_shown(value)}", name)
    if maximum is not None and value > maximum:
        raise MalformedRequest(f"'{name}' must be at most {maximum}, got {value}", name)
    return value


def _str_field(body: Mapping[str, Any], name: str, required: bool = False,
               max_chars: int | None = 256) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise MalformedRequest(f"'{name}' is required", name)
        return None
    if not isinstance(value, str) or (required and not value):
        raise MalformedRequest(f"'{name}' must be a non-empty string, got {_shown(value)}", name)
    if max_chars is not None and len(value) > max_chars:
        raise MalformedRequest(f"'{name}' must be at most {max_chars} characters, got {len(value)}", name)
    return value


def _bool_field(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is not None and not isinstance(value, bool):
        raise MalformedRequest(f"'{name}' must be true or false, got {_shown(value)}", name)
    return bool(value)


def _array_field(body: Mapping[str, Any], name: str, max_items: int) -> list[Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise MalformedRequest(f"'{name}' must be an array", name)
    if len(value) > max_items:
        raise MalformedRequest(f"'{name}' may hold at most {max_items} items, got {len(value)}", name)
    return value


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a hostile body must not come back at full size."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _messages_field(body: Mapping[str, Any], limits: RequestLimits, name: str = "messages") -> list[dict[str, Any]]:
    messages = body.get(name)
    if not isinstance(messages, list) or not messages:
        raise MalformedRequest(f"'{name}' must be a non-empty array of messages", name)
    if len(messages) > limits.messages:
        raise MalformedRequest(f"'{name}' may hold at most {limits.messages} messages, got {len(messages)}", name)
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise MalformedRequest(f"'{name}[{i}]' must be an object with a string 'role'", f"{name}[{i}]")
        _check_message(m, f"{name}[{i}]", limits)
    return list(messages)


def _check_message(m: Mapping[str, Any], where: str, limits: RequestLimits) -> None:
    for key in ("role", "name"):
        value = m.get(key)
        if isinstance(value, str) and len(value) > limits.name_chars:
            raise MalformedRequest(f"'{where}.{key}' must be at most {limits.name_chars} characters", f"{where}.{key}")
    content = m.get("content")
    if isinstance(content, list) and len(content) > limits.content_parts:
        raise MalformedRequest(f"'{where}.content' may hold at most {limits.content_parts} parts, got {len(content)}",
                               f"{where}.content")


def parse_request(api: str, body: Any, limits: RequestLimits = DEFAULT_LIMITS) -> LLMRequest:
    """Reads an LLM request body of the given API. Raises :class:`MalformedRequest`."""
    if not isinstance(body, Mapping):
        raise MalformedRequest("the request body must be a JSON object")
    model = _str_field(body, "model", required=True, max_chars=limits.model_chars)
    assert model is not None
    stream = _bool_field(body, "stream")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], Mapping):
        raise MalformedRequest("'stream_options' must be an object", "stream_options")
    n = _int_field(body, "n", minimum=1, maximum=limits.n) or 1
    user = _str_field(body, "user", max_chars=limits.user_chars)
    tools = _array_field(body, "tools", limits.tools)

    def max_tokens_of(name: str, minimum: int = 0) -> int | None:
        return _int_field(body, name, minimum=minimum, maximum=limits.max_tokens)

    if api == OPENAI_CHAT:
        max_tokens = max_tokens_of("max_completion_tokens")
        if max_tokens is None:
            max_tokens = max_tokens_of("max_tokens")
        return LLMRequest(api, model, messages=_messages_field(body, limits), max_tokens=max_tokens, n=n,
                          stream=stream, user=user, tools=tools,
                          extra={"functions": _array_field(body, "functions", limits.tools)})
    if api == OPENAI_COMPLETIONS:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise MalformedRequest("'prompt' must be a string or an array", "prompt")
        _array_field(body, "prompt", limits.prompts)
        max_tokens = max_tokens_of("max_tokens")
        return LLMRequest(api, model, prompt=prompt,
                          max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
                          n=n, stream=stream, user=user)
    if api == OPENAI_RESPONSES:
        items = body.get("input")
        messages: list[dict[str, Any]] | None = None
        prompt: str | None = None
        if isinstance(items, str):
            prompt = items
        elif isinstance(items, list):
            _array_field(body, "input", limits.messages)
            messages = [
                {"role": it.get("role", "user"), "content": it.get("content", it.get("output", ""))}
                for it in items if isinstance(it, Mapping)
            ]
            for i, m in enumerate(messages):
                _check_message(m, f"input[{i}]", limits)
        else:
            raise MalformedRequest("'input' must be a string or an array of input items", "input")
        return LLMRequest(api, model, messages=messages, prompt=prompt,
                          system=_str_field(body, "instructions", max_chars=None),
                          max_tokens=max_tokens_of("max_output_tokens"), stream=stream, user=user, tools=tools)
    if api == OPENAI_EMBEDDINGS:
        inputs = body.get("input")
        if not isinstance(inputs, (str, list)) or inputs == []:
            raise MalformedRequest("'input' must be a string or a non-empty array", "input")
        if isinstance(inputs, list):  # a single string is as valid as an array
            _array_field(body, "input", limits.prompts)
        return LLMRequest(api, model, prompt=inputs, max_tokens=0, user=user, generates=False)
    if api == ANTHROPIC_MESSAGES:
        max_tokens = max_tokens_of("max_tokens", minimum=1)
        if max_tokens is None:
            raise MalformedRequest("'max_tokens' is required by the Messages API", "max_tokens")
        system = body.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise MalformedRequest("'system' must be a string or an array of text blocks", "system")
        if isinstance(system, list):
            _array_field(body, "system", limits.content_parts)
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, Mapping) else None
        if isinstance(user, str) and len(user) > limits.user_chars:
            raise MalformedRequest(f"'metadata.user_id' must be at most {limits.user_chars} characters",
                                   "metadata.user_id")
        return LLMRequest(api, model, messages=_messages_field(body, limits), system=content_text(system) or None,
                          max_tokens=max_tokens, stream=stream,
                          user=user if isinstance(user, str) else None, tools=tools)
    raise MalformedRequest(f"unsupported API {api!r}")


@dataclass(frozen=True)
class InputCount:
    tokens: int
    exact: bool


def _has_exact_encoding(model: str) -> bool:
    try:
        encoding_for_model(model)
    except KeyError:
        return False
    return True


def count_input_tokens(req: LLMRequest) -> InputCount:
    """Prompt tokens of a request: exact for OpenAI models, calibrated approximation otherwise."""
    if _has_exact_encoding(req.model) and req.api in (OPENAI_CHAT, OPENAI_COMPLETIONS,
                                                       OPENAI_EMBEDDINGS, OPENAI_RESPONSES, CUSTOM):
        enc = encoding_for_model(req.model)
        raw = req.extra.get("raw_body")
        if req.api == OPENAI_CHAT and isinstance(raw, str):  # the body as sent: no re-serialising
            return InputCount(enc._core.count_chat(raw, req.model), True)
        if req.messages is not None:
            messages = req.messages
            if req.system:
                messages = [{"role": "system", "content": req.system}, *messages]
            tools = req.tools if req.api == OPENAI_CHAT else None
            return InputCount(count_chat_tokens(_plain_messages(messages), req.model, tools=tools,
                                                functions=req.extra.get("functions")), True)
        prompts = req.prompt if isinstance(req.prompt, list) else [req.prompt or ""]
        total = 0
        for p in prompts:
            if isinstance(p, str):
                total += enc.count(p, disallowed_special=())
            elif isinstance(p, list):  # an array of token ids
                total += len(p)
            else:
                raise MalformedRequest("prompt/input arrays must hold strings or token-id arrays", "prompt")
        return InputCount(total, True)
    text = req.text()
    try:
        return InputCount(count_tokens_approx(text, req.model).tokens, False)
    except KeyError:  # no approximate family either: o200k_base as a generic modern vocabulary
        return InputCount(get_encoding("o200k_base").count(text, disallowed_special=()), False)


def _plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages with Responses-API item content flattened to what chat counting understands."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list) and any(
            isinstance(p, Mapping) and p.get("type") in ("input_text", "output_text") for p in content
        ):
            m = {**m, "content": content_text(content)}
        out.append(dict(m))
    return out


# --- responses -----------------------------------------------------------------------------------


@dataclass
class ResponseUsage:
    """What a response reports: the provider's raw ``usage`` object (``None`` if it sent none) and
    the generated text (used to count output exactly when there is no usage)."""

    usage: dict[str, Any] | None = None
    text_parts: list[str] = field(default_factory=list)
    model: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: responses are read, never trusted."""
    return value if isinstance(value, Mapping) else {}


def _array(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def _collect_text(obj: Mapping[str, Any], out: list[str]) -> None:
    """Generated text of a non-streamed response of any supported shape."""
    for choice in _array(obj.get("choices")):
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message")
        if isinstance(message, Mapping):
            out.append(content_text(message.get("content")))
            for call in _array(message.get("tool_calls")):
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                    out.append(fn["arguments"])
        elif isinstance(choice.get("text"), str):
            out.append(choice["text"])
    if obj.get("type") == "message" and isinstance(obj.get("content"), list):  # Anthropic
        out.append(content_text(obj["content"]))
    for item in _array(obj.get("output")):  # Responses API
        if isinstance(item, Mapping):
            out.append(content_text(item.get("content")))


def read_json_response(body: bytes) -> ResponseUsage:
    """Usage and text of a JSON response body (anything unparsable reads as no usage, no text)."""
    result = ResponseUsage()
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return result
    if isinstance(obj, Mapping):
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            result.usage = dict(usage)
        if isinstance(obj.get("model"), str):
            result.model = obj["model"]
        _collect_text(obj, result.text_parts)
    return result


class StreamReader:
    """Incremental reader of an SSE response (OpenAI chunks, Anthropic events, Responses events).

    ``feed`` takes the body bytes as they pass and returns the bytes to forward: all of them, except
    (when ``drop_usage_only_chunks``) the usage-only chunk that tokenlane itself asked the upstream
    for with ``stream_options.include_usage``, which the client did not ask for.
    """

    def __init__(self, drop_usage_only_chunks: bool = False) -> None:
        self.result = ResponseUsage()
        self.complete = False  # the stream's own end marker was seen ([DONE], message_stop, ...)
        self._drop = drop_usage_only_chunks
        self._buffer = b""
        self._anthropic: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        forward = bytearray()
        while True:
            end, sep_len = _event_end(self._buffer)
            if end < 0:
                break
            event = self._buffer[: end + sep_len]
            self._buffer = self._buffer[end + sep_len:]
            if not self._read_event(event[:end]):
                forward += event
        if not self._drop:
            return chunk  # pass-through untouched; parsing only observes
        return bytes(forward)

    def close(self) -> bytes:
        """End of stream: what is left in the buffer (an incomplete event) is forwarded as is."""
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self._read_event(rest)
        if self._anthropic:
            self.result.usage = dict(self._anthropic)
        return rest if self._drop else b""

    def _read_event(self, raw: bytes) -> bool:
        """Parses one event; returns True when it must be dropped."""
        data_lines = []
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.startswith("data:"):
                data_lines.append(line[5:].lstrip(" "))
        if not data_lines:
            return False
        data = "\n".join(data_lines)
        if data.strip() == "[DONE]":
            self.complete = True
            return False
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        if not isinstance(obj, Mapping):
            return False
        if isinstance(obj.get("model"), str) and not self.result.model:
            self.result.model = obj["model"]
        kind = obj.get("type")
        if kind in ("message_stop", "response.completed"):
            self.complete = True
        if kind == "message_start":  # Anthropic: input side of usage
            usage = _object(obj.get("message")).get("usage")
            if isinstance(usage, Mapping):
                self._anthropic.update(usage)
            return False
        if kind == "message_delta":  # Anthropic: cumulative output tokens
            usage = obj.get("usage")
            if isinstance(usage, Mapping):
                self._anthropic.update({k: v for k, v in usage.items() if v is not None})
            return False
        if kind == "content_block_delta":
            delta = _object(obj.get("delta"))
            text = delta.get("text", delta.get("partial_json"))
            if isinstance(text, str):
                self.result.text_parts.append(text)
            return False
        if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
            self.result.text_parts.append(obj["delta"])
            return False
        if kind == "response.completed":
            usage = _object(obj.get("response")).get("usage")
            if isinstance(usage, Mapping):
                self.result.usage = dict(usage)
            return False
        # OpenAI chat / completions chunk
        for choice in _array(obj.get("choices")):
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                if isinstance(delta.get("content"), str):
                    self.result.text_parts.append(delta["content"])
                for call in _array(delta.get("tool_calls")):
                    fn = call.get("function") if isinstance(call, Mapping) else None
                    if isinstance(fn, Mapping) and isinstance(fn.get("arguments"), str):
                        self.result.text_parts.append(fn["arguments"])
            elif isinstance(choice.get("text"), str):
                self.result.text_parts.append(choice["text"])
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            self.result.usage = dict(usage)
            return self._drop and not obj.get("choices")
        return False


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Position and length of the first event separator (blank line) in ``buffer``, or (-1, 0)."""
    best, length = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buffer.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, length = i, len(sep)
    return best, length


def count_output_tokens(text: str, model: str) -> int:
    """Output tokens of generated text: exact for OpenAI models, approximate otherwise."""
    if not text:
        return 0
    if _has_exact_encoding(model):
        return encoding_for_model(model).count(text, disallowed_special=())
    try:
        return count_tokens_approx(text, model).tokens
    except KeyError:
        return get_encoding("o200k_base").count(text, disallowed_special=())


__all__ = [
    "ANTHROPIC_MESSAGES",
    "CUSTOM",
    "InputCount",
    "LLMRequest",
    "MalformedRequest",
    "OPENAI_CHAT",
    "OPENAI_COMPLETIONS",
    "OPENAI_EMBEDDINGS",
    "OPENAI_RESPONSES",
    "DEFAULT_LIMITS",
    "RequestLimits",
    "ResponseUsage",
    "StreamReader",
    "api_for_path",
    "content_text",
    "count_input_tokens",
    "count_output_tokens",
    "load_json_body",
    "parse_request",
    "read_json_response",
]
