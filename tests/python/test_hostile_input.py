"""Hostile request bodies: every limit of docs/limits.md refused with an OpenAI-shaped 4xx naming the
parameter (through the real middleware and SQLite ledger), and property tests that the request and
response parsers and the SSE reader take any input without raising anything but MalformedRequest."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenlane import Tokenlane
from tokenlane.formats import (
    ANTHROPIC_MESSAGES,
    DEFAULT_LIMITS,
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES,
    LLMRequest,
    MalformedRequest,
    StreamReader,
    load_json_body,
    parse_request,
    read_json_response,
)

from middleware_app import build_app

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(tmp_path):
    rt = Tokenlane(db=str(tmp_path / "ledger.db"))
    with TestClient(build_app(rt), raise_server_exceptions=False) as c:
        c.runtime = rt
        yield c


def post(client, body: bytes | dict, **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/chat/completions", content=content,
                       headers={"content-type": "application/json", **headers})


def test_100000_nested_arrays_in_an_unknown_field_are_a_400_not_a_500(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    r = post(client, b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "x": ' + deep + b"}")
    assert r.status_code == 400, r.text
    assert "deeper than 64 levels" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.runtime.ledger.list_requests(limit=10) == []  # refused before anything was reserved


def test_n_of_a_billion_is_a_400_naming_n(client):
    r = post(client, {"model": "gpt-4o", "messages": MSGS, "n": 1_000_000_000})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "n"


@pytest.mark.parametrize("extra, param", [
    ({"n": DEFAULT_LIMITS.n + 1}, "n"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
    ({"messages": MSGS * (DEFAULT_LIMITS.messages + 1)}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 1025}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "name": "n" * 300}]}, "messages[0].name"),
    ({"messages": [{"role": "r" * 300, "content": "x"}]}, "messages[0].role"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({"tools": 5}, "tools"),
    ({"functions": [{"name": "f"}] * 129}, "functions"),
    ({"model": "m" * 257}, "model"),
    ({"user": "u" * 201}, "user"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": 5}, "stream_options"),
])
def test_every_client_controlled_size_has_a_limit_naming_its_parameter(client, extra, param):
    r = post(client, {"model": "gpt-4o", "messages": MSGS, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert len(r.content) < 2000  # the refusal does not echo a hostile value at full size


def test_headers_over_the_limit_are_431(client):
    r = post(client, {"model": "gpt-4o", "messages": MSGS}, **{f"x-junk-{i}": "v" * 1000 for i in range(40)})
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "request_header_fields_too_large"


def test_limits_hold_for_every_api():
    too_many = ["x"] * (DEFAULT_LIMITS.prompts + 1)
    for api, body, param in [
        (OPENAI_COMPLETIONS, {"model": "m", "prompt": too_many}, "prompt"),
        (OPENAI_EMBEDDINGS, {"model": "m", "input": too_many}, "input"),
        (OPENAI_RESPONSES, {"model": "m", "input": [{"role": "user", "content": "x"}] * 4097}, "input"),
        (OPENAI_RESPONSES, {"model": "m", "input": "x", "max_output_tokens": 10**9}, "max_output_tokens"),
        (ANTHROPIC_MESSAGES, {"model": "m", "max_tokens": 10, "messages": MSGS,
                              "metadata": {"user_id": "u" * 201}}, "metadata.user_id"),
    ]:
        with pytest.raises(MalformedRequest) as err:
            parse_request(api, body)
        assert err.value.param == param


def test_depth_is_counted_outside_strings_only():
    inside = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[" * 500 + "\\\"{" * 100}]})
    assert load_json_body(inside.encode())["model"] == "m"
    assert load_json_body(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(MalformedRequest, match="deeper than 64"):
        load_json_body(b"[" * 65 + b"]" * 65)
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        load_json_body(b"{" * 10 + b"]")


# --- properties: any input, no exception but MalformedRequest ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
# Bodies shaped like requests, with hostile values in the fields that matter.
request_like = st.fixed_dictionaries({}, optional={
    "model": json_values | st.sampled_from(["gpt-4o", "claude-sonnet-4-5", ""]),
    "messages": json_values | st.lists(st.fixed_dictionaries({"role": json_values | st.just("user")},
                                                             optional={"content": json_values, "name": json_values}),
                                       max_size=3),
    "n": json_values, "max_tokens": json_values, "max_completion_tokens": json_values,
    "max_output_tokens": json_values, "stream": json_values, "stream_options": json_values,
    "tools": json_values, "functions": json_values, "user": json_values, "prompt": json_values,
    "input": json_values, "system": json_values, "metadata": json_values, "instructions": json_values,
})
APIS = [OPENAI_CHAT, OPENAI_COMPLETIONS, OPENAI_RESPONSES, OPENAI_EMBEDDINGS, ANTHROPIC_MESSAGES]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(api=st.sampled_from(APIS), body=request_like | json_values)
def test_parse_request_reads_or_refuses_any_json(api, body):
    try:
        request = parse_request(api, body)
    except MalformedRequest:
        return
    assert isinstance(request, LLMRequest) and request.model
    assert 1 <= request.n <= DEFAULT_LIMITS.n
    request.text()  # what estimators read must never raise either


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_load_json_body_parses_or_refuses_any_bytes(body):
    try:
        load_json_body(body)
    except MalformedRequest:
        pass


response_chunks = st.fixed_dictionaries({}, optional={
    "model": json_values, "usage": json_values, "type": st.sampled_from(
        ["message_start", "message_delta", "content_block_delta", "message_stop", "response.completed",
         "response.output_text.delta"]) | json_values,
    "choices": json_values | st.lists(st.fixed_dictionaries({}, optional={
        "delta": json_values, "text": json_values, "message": json_values}), max_size=2),
    "message": json_values, "delta": json_values, "response": json_values, "content": json_values,
    "output": json_values,
})


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | response_chunks.map(lambda v: json.dumps(v).encode()))
def test_read_json_response_never_raises(body):
    seen = read_json_response(body)
    assert isinstance(seen.text, str)


def _sse(events: list[object], raw: list[bytes]) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + b"".join(raw) + b"data: [DONE]\n\n"


@settings(max_examples=300, deadline=None)
@given(events=st.lists(response_chunks, max_size=6), raw=st.lists(st.binary(max_size=40), max_size=3),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8), drop=st.booleans())
def test_stream_reader_takes_any_stream_split_anywhere(events, raw, cuts, drop):
    stream = _sse(events, raw)
    whole = StreamReader(drop_usage_only_chunks=drop)
    forwarded_whole = whole.feed(stream) + whole.close()
    split = StreamReader(drop_usage_only_chunks=drop)
    forwarded, start = b"", 0
    for cut in sorted(set(c for c in cuts if c < len(stream))) + [len(stream)]:
        forwarded += split.feed(stream[start:cut])
        start = cut
    forwarded += split.close()
    # Where the bytes are cut never changes what is read or forwarded.
    assert (split.result.usage, split.result.text, split.complete) == \
        (whole.result.usage, whole.result.text, whole.complete)
    assert forwarded == forwarded_whole
    if not drop:
        assert forwarded == stream
