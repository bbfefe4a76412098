"""Encodings with tiktoken's API, backed by the C++ core."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Literal

from . import _core, _vocab

AllOr = Literal["all"] | Collection[str]


class Encoding:
    """A byte-level BPE encoding whose token ids are identical to tiktoken 0.14's.

    Thread-safe; the heavy methods release the GIL. ``count`` and ``count_batch`` give the same
    numbers as ``len(encode(...))`` without building lists.
    """

    def __init__(self, core: _core.Encoding) -> None:
        self._core = core
        self.special_tokens_set: frozenset[str] = frozenset(core.special_tokens)

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def max_token_value(self) -> int:
        return self._core.n_vocab - 1

    @property
    def eot_token(self) -> int:
        return self._core.special_tokens["<|endoftext|>"]

    def encode(
        self, text: str, *, allowed_special: AllOr = frozenset(), disallowed_special: AllOr = "all"
    ) -> list[int]:
        """Token ids of ``text``. Special-token strings raise ValueError unless allowed (as tiktoken)."""
        return self._core.encode(text, allowed_special, disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, treating special-token strings as plain text."""
        return self._core.encode_ordinary(text)

    def count(
        self, text: str, *, allowed_special: AllOr = frozenset(), disallowed_special: AllOr = "all"
    ) -> int:
        """``len(encode(text, ...))`` without building the list."""
        return self._core.count(text, allowed_special, disallowed_special)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 0,
        allowed_special: AllOr = frozenset(),
        disallowed_special: AllOr = "all",
    ) -> list[list[int]]:
        """``encode`` for each text, on ``num_threads`` threads (0: every core)."""
        return self._core.encode_batch(texts, allowed_special, disallowed_special, num_threads)

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 0) -> list[list[int]]:
        return self._core.encode_batch(texts, (), (), num_threads)

    def count_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 0,
        allowed_special: AllOr = frozenset(),
        disallowed_special: AllOr = "all",
    ) -> list[int]:
        """``count`` for each text, on ``num_threads`` threads (0: every core)."""
        return self._core.count_batch(texts, allowed_special, disallowed_special, num_threads)

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of the tokens, which need not be valid UTF-8."""
        return self._core.decode_bytes(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of the tokens; invalid UTF-8 is handled by ``errors`` (as ``bytes.decode``)."""
        return self._core.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self._core.token_bytes(token)

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of a text that is exactly one token; KeyError otherwise."""
        data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
        token = self._core.encode_single_token(data)
        if token < 0:
            raise KeyError(f"{text_or_bytes!r} is not a single token of {self.name}")
        return token


_lock = threading.Lock()
_loaded: dict[str, Encoding] = {}


def list_encoding_names() -> list[str]:
    return _core.encoding_names()


def get_encoding(encoding_name: str) -> Encoding:
    """The encoding named ``encoding_name`` (``o200k_base``, ``cl100k_base``, ...), loaded once.

    The rank file comes from ``TOKENLANE_VOCAB_DIR``, the cache, or the official URL; see
    :mod:`tokenlane._vocab`. A missing or corrupt file raises ``VocabularyError`` saying how to fix it.
    """
    with _lock:
        if encoding_name not in _loaded:
            _core.encoding_rank_file(encoding_name)  # UnknownNameError before any I/O
            directory = _vocab.vocab_dir_for(encoding_name)
            _loaded[encoding_name] = Encoding(_core.load_encoding(encoding_name, str(directory)))
        return _loaded[encoding_name]


def encoding_name_for_model(model_name: str) -> str:
    """tiktoken's encoding for an OpenAI model name; KeyError for other models."""
    return _core.encoding_name_for_model(model_name)


def encoding_for_model(model_name: str) -> Encoding:
    return get_encoding(encoding_name_for_model(model_name))
