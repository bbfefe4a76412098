"""Request parsing, input counting and usage extraction for the supported API shapes."""

import json

import pytest

import tokenlane
from tokenlane.formats import (
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES,
    MalformedRequest,
    StreamReader,
    api_for_path,
    count_input_tokens,
    parse_request,
    read_json_response,
)


@pytest.mark.parametrize(
    "path, api",
    [
        ("/v1/chat/completions", OPENAI_CHAT),
        ("/openai/deployments/x/chat/completions", OPENAI_CHAT),
        ("/v1/completions", OPENAI_COMPLETIONS),
        ("/v1/responses", OPENAI_RESPONSES),
        ("/v1/embeddings", OPENAI_EMBEDDINGS),
        ("/v1/messages", ANTHROPIC_MESSAGES),
        ("/v1/models", None),
        ("/chat", None),
    ],
)
def test_routes(path, api):
    assert api_for_path(path) == api


def test_chat_request_counts_like_openai():
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"}]
    req = parse_request(OPENAI_CHAT, {"model": "gpt-4o", "messages": messages, "max_tokens": 50, "user": "u1"})
    assert (req.model, req.max_tokens, req.user, req.stream) == ("gpt-4o", 50, "u1", False)
    counted = count_input_tokens(req)
    assert counted.exact
    assert counted.tokens == tokenlane.count_chat_tokens(messages, "gpt-4o")


def test_max_completion_tokens_wins_over_max_tokens():
    req = parse_request(OPENAI_CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
                                      "max_tokens": 10, "max_completion_tokens": 99})
    assert req.max_tokens == 99


def test_completions_default_max_tokens_and_token_array_prompts():
    req = parse_request(OPENAI_COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say hi", [1, 2, 3]]})
    assert req.max_tokens == 16
    enc = tokenlane.encoding_for_model("gpt-3.5-turbo-instruct")
    assert count_input_tokens(req).tokens == len(enc.encode("Say hi")) + 3


def test_anthropic_messages_are_approximate_and_need_max_tokens():
    body = {"model": "claude-sonnet-4-5", "system": "Be brief.", "max_tokens": 100,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me about tokenizers."}]}]}
    req = parse_request(ANTHROPIC_MESSAGES, body)
    assert req.text() == "Be brief.\nTell me about tokenizers."
    counted = count_input_tokens(req)
    assert not counted.exact and counted.tokens > 5
    with pytest.raises(MalformedRequest, match="max_tokens"):
        parse_request(ANTHROPIC_MESSAGES, {k: v for k, v in body.items() if k != "max_tokens"})


def test_responses_and_embeddings():
    req = parse_request(OPENAI_RESPONSES, {"model": "gpt-4o", "input": "Write a haiku", "instructions": "poet",
                                           "max_output_tokens": 40})
    assert req.max_tokens == 40 and req.text() == "poet\nWrite a haiku"
    emb = parse_request(OPENAI_EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["a b", "c"]})
    assert not emb.generates and count_input_tokens(emb).tokens == 3


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "'model' is required"),
        ({"model": "gpt-4o"}, "'messages' must be a non-empty array"),
        ({"model": "gpt-4o", "messages": ["hi"]}, r"'messages\[0\]'"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}, "'n'"),
    ],
)
def test_malformed_chat_bodies_say_what_to_fix(body, message):
    with pytest.raises(MalformedRequest, match=message):
        parse_request(OPENAI_CHAT, body)


def test_json_response_usage_and_text():
    body = json.dumps({"model": "gpt-4o", "choices": [{"message": {"role": "assistant", "content": "Hi!"}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}).encode()
    seen = read_json_response(body)
    assert seen.usage == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    assert seen.text == "Hi!"
    assert read_json_response(b"not json").usage is None


def _sse(*objs):
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_stream_reader_finds_final_usage_chunk_across_split_reads():
    stream = _sse(
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"delta": {"content": "Hello"}}]},
        {"choices": [{"delta": {"content": " world"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )
    reader = StreamReader()
    forwarded = b"".join(reader.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + reader.close()
    assert forwarded == stream  # observing never changes the bytes
    assert reader.result.text == "Hello world"
    assert reader.result.usage == {"prompt_tokens": 5, "completion_tokens": 2}


def test_stream_reader_drops_only_the_usage_chunk_it_asked_for():
    content = _sse({"choices": [{"delta": {"content": "Hi"}}]})
    usage_chunk = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n'
    stream = content.replace(b"data: [DONE]", usage_chunk + b"data: [DONE]")
    reader = StreamReader(drop_usage_only_chunks=True)
    forwarded = b"".join(reader.feed(stream[i:i + 5]) for i in range(0, len(stream), 5)) + reader.close()
    assert forwarded == content
    assert reader.result.usage == {"prompt_tokens": 1, "completion_tokens": 1}


def test_stream_reader_keeps_usage_on_a_chunk_with_choices():
    # Some providers put usage on the last content chunk: it is read and never dropped.
    stream = _sse({"choices": [{"delta": {"content": "x"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    reader = StreamReader(drop_usage_only_chunks=True)
    assert reader.feed(stream) + reader.close() == stream
    assert reader.result.usage["completion_tokens"] == 1


def test_stream_reader_anthropic_events():
    events = [
        ("message_start", {"type": "message_start", "message": {"model": "claude-sonnet-4-5",
                                                               "usage": {"input_tokens": 12, "cache_read_input_tokens": 30,
                                                                         "output_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hey"}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    raw = b"".join(f"event: {e}\r\ndata: {json.dumps(d)}\r\n\r\n".encode() for e, d in events)
    reader = StreamReader()
    reader.feed(raw)
    reader.close()
    assert reader.result.text == "Hey"
    assert reader.result.usage == {"input_tokens": 12, "cache_read_input_tokens": 30, "output_tokens": 7}
    cost = tokenlane.Pricing.default().cost_of_usage("claude-sonnet-4-5", reader.result.usage)
    assert (cost.input_tokens, cost.cached_input_tokens, cost.output_tokens) == (42, 30, 7)


def test_stream_reader_sees_the_end_marker():
    reader = StreamReader()
    reader.feed(_sse({"choices": [{"delta": {"content": "x"}}]})[:-len(b"data: [DONE]\n\n")])
    assert not reader.complete
    reader.feed(b"data: [DONE]\n\n")
    assert reader.complete
