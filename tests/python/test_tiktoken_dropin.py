"""tokenlane as a drop-in for tiktoken: the behaviours tiktoken's users and tests rely on, and
tiktoken 0.14.0's own public test suite run against tokenlane through a `tiktoken` module alias."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tarfile
import textwrap

import pytest

import tokenlane

TIKTOKEN_VERSION = "0.14.0"
BUILTIN = ["gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base", "o200k_harmony"]


@pytest.fixture(scope="module")
def cl100k():
    return tokenlane.get_encoding("cl100k_base")


def test_every_tiktoken_encoding_name_loads_with_tiktokens_pattern_and_specials(tiktoken_module):
    assert sorted(tokenlane.list_encoding_names()) == sorted(BUILTIN)
    for name in ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"):
        ours, ref = tokenlane.get_encoding(name), tiktoken_module.get_encoding(name) if name != "gpt2" else None
        assert ours.name == name
        if ref is not None:
            assert ours._pat_str == ref._pat_str
            assert ours._special_tokens == ref._special_tokens
            assert (ours.n_vocab, ours.max_token_value, ours.eot_token) == (ref.n_vocab, ref.max_token_value, ref.eot_token)
    gpt2 = tokenlane.get_encoding("gpt2")
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("hello <|endoftext|>", allowed_special="all") == [31373, 220, 50256]
    assert gpt2.n_vocab == 50257


def test_model_names_resolve_to_tiktokens_encoding_names():
    assert tokenlane.encoding_for_model("gpt2").name == "gpt2"
    assert tokenlane.encoding_name_for_model("gpt-2") == "gpt2"
    assert tokenlane.encoding_for_model("text-davinci-edit-001").name == "p50k_edit"
    assert tokenlane.encoding_for_model("gpt-oss-120b").name == "o200k_harmony"


def test_decoding_helpers(cl100k):
    batch = [cl100k.encode("hello world"), cl100k.encode("naïve café"), []]
    assert cl100k.decode_batch(batch) == ["hello world", "naïve café", ""]
    assert cl100k.decode_bytes_batch(batch) == [b"hello world", "naïve café".encode(), b""]
    assert cl100k.decode_tokens_bytes(cl100k.encode("hello world")) == [b"hello", b" world"]
    assert cl100k.decode_single_token_bytes(15339) == b"hello"
    for unknown in (100256, 100261, 10**6):
        with pytest.raises(KeyError):
            cl100k.decode_single_token_bytes(unknown)
    assert cl100k.is_special_token(100257) and not cl100k.is_special_token(15339)


def test_decode_with_offsets_gives_the_character_where_each_token_starts(cl100k):
    text = "hello world<|endoftext|> green cow"
    assert cl100k.decode_with_offsets(cl100k.encode(text, allowed_special="all")) == (text, [0, 5, 11, 24, 30])
    # "渴" is split over two tokens: the second starts with a continuation byte and belongs to it
    text = "我非常渴望"
    decoded, offsets = cl100k.decode_with_offsets(cl100k.encode(text))
    tokens_bytes = cl100k.decode_tokens_bytes(cl100k.encode(text))
    assert decoded == text and len(offsets) == len(tokens_bytes)
    assert any(0x80 <= b[0] < 0xC0 for b in tokens_bytes)
    for i, offset in enumerate(offsets):  # characters completed before the token starts
        assert offset == len(b"".join(tokens_bytes[:i]).decode("utf-8", errors="ignore"))
    with pytest.raises(UnicodeDecodeError):
        cl100k.decode_with_offsets(cl100k.encode(text)[:-1] + [cl100k.encode("渴")[0]])


def test_public_constructor_extends_an_encoding_with_special_tokens(cl100k, tiktoken_module):
    ranks = cl100k._mergeable_ranks
    assert len(ranks) == 100256 and ranks[b"hello"] == 15339
    specials = {**cl100k._special_tokens, "<|im_start|>": 100264, "<|im_end|>": 100265}
    ours = tokenlane.Encoding("cl100k_im", pat_str=cl100k._pat_str, mergeable_ranks=ranks, special_tokens=specials)
    ref_base = tiktoken_module.get_encoding("cl100k_base")
    ref = tiktoken_module.Encoding("cl100k_im", pat_str=ref_base._pat_str, mergeable_ranks=ref_base._mergeable_ranks,
                                   special_tokens=specials)
    text = "<|im_start|>user\nhello<|im_end|> and <|endoftext|>"
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special="all")[0] == 100264
    assert ours.n_vocab == ref.n_vocab == 100277 and ours.name == "cl100k_im"
    with pytest.raises(ValueError):
        ours.encode(text)  # new specials are disallowed by default, as in tiktoken
    with pytest.raises(ValueError, match="split patterns"):
        tokenlane.Encoding("x", pat_str=r"\w+|\s+", mergeable_ranks=ranks, special_tokens={})
    with pytest.raises(ValueError, match="explicit_n_vocab"):
        tokenlane.Encoding("x", pat_str=cl100k._pat_str, mergeable_ranks=ranks, special_tokens={},
                           explicit_n_vocab=5)


def test_encodings_pickle(cl100k):
    assert pickle.loads(pickle.dumps(cl100k)) is cl100k  # built-ins pickle by name
    custom = tokenlane.Encoding("custom", pat_str=cl100k._pat_str, mergeable_ranks=cl100k._mergeable_ranks,
                                special_tokens={"<|pickle|>": 100_000})
    copy = pickle.loads(pickle.dumps(custom))
    assert copy.name == "custom" and copy.encode("<|pickle|> hi", allowed_special="all") == [100_000, 15960]


# A conftest that makes `import tiktoken` return tokenlane inside the copied suite.
ALIAS_CONFTEST = textwrap.dedent(
    """
    import os
    import sys
    import tokenlane
    sys.modules["tiktoken"] = tokenlane

    # tiktoken's CI runs this suite against tiktoken installed in site-packages. tokenlane is an
    # editable install here, which recent Hypothesis versions take for the user's own code and mines for
    # string literals to feed st.text(): test_hyp_roundtrip then draws '<|endoftext|>' from
    # tokenlane's source, which tiktoken rejects as well (a disallowed special token). Treat
    # tokenlane as installed, as tiktoken is there.
    from hypothesis.internal.conjecture import providers
    _is_local = getattr(providers, "is_local_module_file", None)
    if _is_local is not None:
        _package = os.path.dirname(tokenlane.__file__) + os.sep
        providers.is_local_module_file = lambda path: not path.startswith(_package) and _is_local(path)
    """
)
# tiktoken's private bytes-level entry point (the issue exempts it): these tests call enc._encode_bytes.
EXEMPT = ["tests/test_encoding.py::test_encode_bytes", "tests/test_encoding.py::test_hyp_encode_bytes"]


def test_tiktokens_own_test_suite_passes_against_tokenlane(tmp_path):
    """tiktoken's `tests/` folder comes from its sdist on PyPI at test time (never stored here)."""
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", f"tiktoken=={TIKTOKEN_VERSION}", "--no-binary", ":all:",
         "--no-deps", "--disable-pip-version-check", "-q", "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert download.returncode == 0, f"could not fetch tiktoken's sdist from the package index:\n{download.stderr}"
    (sdist,) = tmp_path.glob("tiktoken-*.tar.gz")
    root = tmp_path / "suite"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
        tar.extractall(root, members=members, filter="data")
    (suite,) = root.glob("tiktoken-*")
    (suite / "conftest.py").write_text(ALIAS_CONFTEST)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests"]
        + [f"--deselect={t}" for t in EXEMPT],
        cwd=suite, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-2000:]
    print(run.stdout.splitlines()[-1])
