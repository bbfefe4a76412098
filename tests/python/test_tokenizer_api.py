"""The tiktoken-shaped API: specials, batching, models, chat counting, errors and rank files."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

import tokenlane
from conftest import OFFICIAL, VOCAB_DIR
from tokenlane import _vocab


@pytest.fixture(scope="module")
def o200k():
    return tokenlane.get_encoding("o200k_base")


def test_special_token_policy_matches_tiktoken(o200k, tiktoken_module):
    ref = tiktoken_module.get_encoding("o200k_base")
    text = "a <|endoftext|> b <|endofprompt|>"
    for kwargs in ({"allowed_special": "all"}, {"allowed_special": {"<|endoftext|>"}, "disallowed_special": ()},
                   {"disallowed_special": ()}, {"allowed_special": {"<|endofprompt|>"}, "disallowed_special": ()}):
        assert o200k.encode(text, **kwargs) == ref.encode(text, **kwargs), kwargs
        assert o200k.count(text, **kwargs) == len(ref.encode(text, **kwargs))
    for kwargs in ({}, {"allowed_special": {"<|endoftext|>"}}, {"disallowed_special": {"<|endofprompt|>"}}):
        with pytest.raises(ValueError, match="disallowed special token"):
            o200k.encode(text, **kwargs)
        with pytest.raises(ValueError):
            ref.encode(text, **kwargs)
    assert o200k.special_tokens_set == ref.special_tokens_set
    assert o200k.n_vocab == ref.n_vocab and o200k.eot_token == ref.eot_token


def test_batches_match_single_calls(o200k):
    texts = [f"doc {i} " + "word " * i + "東京" for i in range(200)]
    for threads in (1, 2, 0):
        assert o200k.encode_batch(texts, num_threads=threads) == [o200k.encode(t) for t in texts]
        assert o200k.count_batch(texts, num_threads=threads) == [o200k.count(t) for t in texts]
    with pytest.raises(ValueError):
        o200k.count_batch(["fine", "not <|endoftext|> fine"])
    with pytest.raises(TypeError):
        o200k.encode_batch(["fine", 3])


def test_token_lists_share_one_int_per_id_and_never_free_it(o200k):
    """Lists share one int object per id (bindings' IntCache). From CPython 3.12 on, each token holds
    exactly one reference to it, also in batches and for ids first seen in the call, and deleting the
    lists gives them back. Before 3.12 the shared ints are immortal: lists take and give back no
    reference that could ever free them."""
    import gc
    import sys
    immortal = sys.version_info < (3, 12)
    text = "the cat and the hat and the bat " * 50 + "Zyzzyva quixotically flummoxed" * 3
    warm = o200k.encode(text)
    the = max(set(warm), key=warm.count)  # " the"
    before = sys.getrefcount(the)
    lists = [o200k.encode(text), *o200k.encode_batch([text, text[::-1], text], num_threads=2)]
    held = sum(ids.count(the) for ids in lists)
    assert held > 100
    assert sys.getrefcount(the) - before == (0 if immortal else held)
    del lists
    gc.collect()
    assert sys.getrefcount(the) == before - (held if immortal else 0)
    novel = o200k.encode("".join(chr(0x4E00 + 7 * k) for k in range(300)) * 3)  # ints made during the call
    one = max(set(novel), key=novel.count)
    while_held, held = sys.getrefcount(one), novel.count(one)
    del novel
    gc.collect()
    assert sys.getrefcount(one) == while_held - held
    if immortal:
        assert sys.getrefcount(the) > 2**59 and sys.getrefcount(one) > 2**59
    assert o200k.decode(o200k.encode(text)) == text


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4", "gpt-3.5-turbo-0125", "o3-mini",
                                   "gpt-5", "gpt-4.1-nano", "text-embedding-3-large", "text-davinci-003",
                                   "davinci", "ft:gpt-4o-2024-08-06:org::id", "gpt-oss-20b"])
def test_models_map_like_tiktoken(model, tiktoken_module):
    assert tokenlane.encoding_name_for_model(model) == tiktoken_module.encoding_name_for_model(model)


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="claude-3"):
        tokenlane.encoding_for_model("claude-3")
    with pytest.raises(tokenlane.UnknownNameError, match="known encodings"):
        tokenlane.get_encoding("o300k_base")


def test_chat_counting_follows_openai_rules(o200k):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "name": "ann", "content": "What is 2+2?"}]
    per_message = sum(3 + sum(o200k.count(v) for v in m.values()) for m in messages)
    assert tokenlane.count_chat_tokens(messages, model="gpt-4o") == per_message + 1 + 3
    tools = [{"type": "function", "function": {"name": "add", "description": "Add numbers.",
              "parameters": {"type": "object", "properties": {"a": {"type": "number", "description": "x"}}}}}]
    with_tools = tokenlane.count_chat_tokens(messages, model="gpt-4o", tools=tools)
    assert with_tools == per_message + 1 + 3 + 7 + o200k.count("add:Add numbers") + 3 + 3 + o200k.count("a:number:x") + 12
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tokenlane.count_chat_tokens([{"content": "no role"}], model="gpt-4o")


def test_approximate_counts_are_labelled():
    approx = tokenlane.count_tokens_approx("Bonjour tout le monde, comment allez-vous ?", "claude-sonnet-4-5")
    assert approx.exact is False and approx.family == "claude" and approx.tokens > 0
    assert 0 < approx.typical_error < 1
    with pytest.raises(tokenlane.UnknownNameError):
        tokenlane.count_tokens_approx("x", "totally-unknown-model")


def test_rank_files_are_cached_verified_and_errors_say_how_to_fix(tmp_path, monkeypatch):
    source = tokenlane.get_encoding("r50k_base")._core  # loaded from TOKENLANE_VOCAB_DIR
    assert source.name == "r50k_base"
    offline = tmp_path / "offline"
    offline.mkdir()
    monkeypatch.setenv("TOKENLANE_VOCAB_DIR", str(offline))
    with pytest.raises(tokenlane.VocabularyError, match="TOKENLANE_VOCAB_DIR"):
        tokenlane._core.load_encoding("r50k_base", str(_vocab.vocab_dir_for("r50k_base")))
    (offline / "r50k_base.tiktoken").write_bytes(b"aGVsbG8= 0\n")
    with pytest.raises(tokenlane.VocabularyError, match="SHA-256"):
        tokenlane._core.load_encoding("r50k_base", str(offline))
    # Without an offline dir: found in tiktoken's cache, copied into tokenlane's cache, no network.
    monkeypatch.delenv("TOKENLANE_VOCAB_DIR")
    monkeypatch.setenv("TOKENLANE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOKENLANE_OFFLINE", "1")
    tiktoken_cache = tmp_path / "tiktoken"
    tiktoken_cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    with pytest.raises(tokenlane.VocabularyError, match="TOKENLANE_OFFLINE"):
        _vocab.vocab_dir_for("r50k_base")
    key = hashlib.sha1((OFFICIAL + "r50k_base.tiktoken").encode()).hexdigest()
    shutil.copy(VOCAB_DIR / "r50k_base.tiktoken", tiktoken_cache / key)
    assert _vocab.vocab_dir_for("r50k_base") == tmp_path / "cache"
    assert (tmp_path / "cache" / "r50k_base.tiktoken").read_bytes() == (VOCAB_DIR / "r50k_base.tiktoken").read_bytes()


def test_cli_counts_files_and_stdin(tmp_path, capsys):
    from tokenlane.cli import main

    path = tmp_path / "a.txt"
    path.write_text("Hello, world!")
    assert main(["count", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["tokens"] == 4 and row["exact"] is True and row["encoding"] == "o200k_base"
    assert main(["count", str(path), "--model", "gemini-2.5-pro"]) == 0
    assert "APPROXIMATE" in capsys.readouterr().out
    assert main(["count", str(tmp_path / "missing.txt")]) == 2
    assert "error" in capsys.readouterr().err


def test_import_loads_only_the_tokenizer_and_the_rest_on_first_use():
    # A process that only counts tokens (`import tokenlane as tiktoken`) must not pay for the
    # middleware's stack; every public name still resolves, and `dir()` lists it.
    import subprocess
    import sys

    code = """
import sys, tokenlane
heavy = {"starlette", "fastapi", "httpx", "redis", "psycopg", "prometheus_client", "opentelemetry", "pandas"}
print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
print(sorted(m for m in sys.modules if m.startswith("tokenlane.")))
missing = [n for n in tokenlane.__all__ if n not in dir(tokenlane) or getattr(tokenlane, n) is None]
print(missing, tokenlane.evaluation.replay.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]", out[0]
    assert out[1] == "['tokenlane._core', 'tokenlane._vocab', 'tokenlane.chat', 'tokenlane.encoding']", out[1]
    assert out[2] == "[] replay"  # every public name resolves, and submodules as attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        tokenlane.no_such_name
    # What type checkers see (the TYPE_CHECKING imports) is what loads at run time (_LAZY).
    import ast
    import inspect

    guarded = next(node for node in ast.parse(inspect.getsource(tokenlane)).body
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING")
    seen = {alias.name: "." + imp.module for imp in guarded.body for alias in imp.names}
    assert seen == tokenlane._LAZY
