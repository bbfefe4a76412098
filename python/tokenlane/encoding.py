"""Encodings with tiktoken's API, backed by the C++ core."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Literal

from . import _core, _vocab

AllOr = Literal["all"] | Collection[str]


# tiktoken 0.14's split patterns (``tiktoken_ext/openai_public.py``), each implemented by one of the
# core's hand-written pre-tokenizers. An Encoding built from another pattern is refused: tokenlane
# has no regex engine, and an approximate split would silently change the ids.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_PATTERNS = {"gpt2": _GPT2_PATTERN, "cl100k": _CL100K_PATTERN, "o200k": _O200K_PATTERN}
_PRETOKENIZERS = {pattern: kind for kind, pattern in _PATTERNS.items()}


def _char_starts(data: bytes) -> int:
    """How many UTF-8 characters start in ``data`` (bytes that are not continuation bytes)."""
    return sum(1 for b in data if not 0x80 <= b < 0xC0)


class Encoding:
    """A byte-level BPE encoding whose token ids are identical to tiktoken 0.14's.

    A drop-in for ``tiktoken.Encoding``: the same constructor (to extend an encoding with special
    tokens of your own), methods, attributes and pickling. Thread-safe; the heavy methods release
    the GIL. ``count`` and ``count_batch`` give ``len(encode(...))`` without building lists.
    """

    def __init__(
        self,
        name: str,
        *,
        pat_str: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        explicit_n_vocab: int | None = None,
    ) -> None:
        kind = _PRETOKENIZERS.get(pat_str)
        if kind is None:
            raise ValueError(
                "tokenlane implements the split patterns of tiktoken's gpt2/r50k/p50k, cl100k_base and "
                "o200k_base encodings only; pass one of them as pat_str (e.g. "
                "tokenlane.get_encoding('o200k_base')._pat_str)"
            )
        max_token = max(max(mergeable_ranks.values()), max(special_tokens.values(), default=0))
        if explicit_n_vocab:
            if len(mergeable_ranks) + len(special_tokens) != explicit_n_vocab or max_token != explicit_n_vocab - 1:
                raise ValueError(
                    f"explicit_n_vocab={explicit_n_vocab} does not match {len(mergeable_ranks)} mergeable "
                    f"and {len(special_tokens)} special tokens with largest id {max_token}"
                )
        core = _core.encoding_from_tokens(name, kind, mergeable_ranks, special_tokens, max_token + 1)
        self._setup(core, builtin=False)
        self._mergeable_ranks_cache = mergeable_ranks

    @classmethod
    def _from_core(cls, core: _core.Encoding) -> Encoding:
        self = cls.__new__(cls)
        self._setup(core, builtin=True)
        return self

    def _setup(self, core: _core.Encoding, *, builtin: bool) -> None:
        self._core = core
        self._builtin = builtin
        self._mergeable_ranks_cache: dict[bytes, int] | None = None
        self.name: str = core.name
        self._pat_str: str = _PATTERNS[core.pretokenizer]
        self._special_tokens: dict[str, int] = dict(core.special_tokens)
        self.special_tokens_set: frozenset[str] = frozenset(self._special_tokens)
        self._special_token_values = frozenset(self._special_tokens.values())
        self.max_token_value: int = core.n_vocab - 1

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    def __reduce__(self):
        if self._builtin:
            return get_encoding, (self.name,)
        return _rebuild, (self.name, self._pat_str, self._mergeable_ranks, self._special_tokens)

    @property
    def _mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank for every ordinary token (tiktoken's attribute; built on first use)."""
        if self._mergeable_ranks_cache is None:
            self._mergeable_ranks_cache = self._core.ordinary_tokens()
        return self._mergeable_ranks_cache

    @property
    def n_vocab(self) -> int:
        return self.max_token_value + 1

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    def is_special_token(self, token: int) -> bool:
        return token in self._special_token_values

    def encode(
        self, text: str, *, allowed_special: AllOr = frozenset(), disallowed_special: AllOr = "all"
    ) -> list[int]:
        """Token ids of ``text``. Special-token strings raise ValueError unless allowed (as tiktoken)."""
        return self._core.encode(text, allowed_special, disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, treating special-token strings as plain text."""
        return self._core.encode_ordinary(text)

    def encode_to_numpy(
        self, text: str, *, allowed_special: AllOr = frozenset(), disallowed_special: AllOr = "all"
    ):
        """``encode`` as a NumPy uint32 array (NumPy must be installed)."""
        import numpy as np

        return np.array(self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special),
                        dtype=np.uint32)

    def count(
        self, text: str, *, allowed_special: AllOr = frozenset(), disallowed_special: AllOr = "all"
    ) -> int:
        """``len(encode(text, ...))`` without building the list."""
        return self._core.count(text, allowed_special, disallowed_special)

    def encode_batch(
        self,
        text: Sequence[str],
        *,
        num_threads: int = 0,
        allowed_special: AllOr = frozenset(),
        disallowed_special: AllOr = "all",
    ) -> list[list[int]]:
        """``encode`` for each text, on ``num_threads`` threads (0: every core)."""
        return self._core.encode_batch(text, allowed_special, disallowed_special, num_threads)

    def encode_ordinary_batch(self, text: Sequence[str], *, num_threads: int = 0) -> list[list[int]]:
        return self._core.encode_batch(text, (), (), num_threads)

    def count_batch(
        self,
        text: Sequence[str],
        *,
        num_threads: int = 0,
        allowed_special: AllOr = frozenset(),
        disallowed_special: AllOr = "all",
    ) -> list[int]:
        """``count`` for each text, on ``num_threads`` threads (0: every core)."""
        return self._core.count_batch(text, allowed_special, disallowed_special, num_threads)

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of a text that is exactly one token; KeyError otherwise."""
        data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
        token = self._core.encode_single_token(data)
        if token < 0:
            raise KeyError(f"{text_or_bytes!r} is not a single token of {self.name}")
        return token

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """The bytes of the tokens, which need not be valid UTF-8."""
        return self._core.decode_bytes(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """The text of the tokens; invalid UTF-8 is handled by ``errors`` (as ``bytes.decode``)."""
        return self._core.decode_bytes(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token; KeyError if the id is not in the vocabulary."""
        return self._core.token_bytes(token)

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        """The bytes of each token."""
        return self._core.tokens_bytes(tokens)

    def decode_with_offsets(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        """The text, and for each token the index of the character where it starts.

        A token that begins inside a multi-byte character (with a UTF-8 continuation byte) belongs
        to that character. The tokens must decode to valid UTF-8.
        """
        offsets = []
        chars = 0
        pieces = self._core.tokens_bytes(tokens)
        for piece in pieces:
            starts_inside = bool(piece) and 0x80 <= piece[0] < 0xC0
            offsets.append(max(0, chars - starts_inside))
            chars += _char_starts(piece)
        return b"".join(pieces).decode("utf-8", errors="strict"), offsets

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace",
                     num_threads: int = 0) -> list[str]:
        """``decode`` for each token list (``num_threads`` is accepted for tiktoken compatibility)."""
        return [self._core.decode_bytes(tokens).decode("utf-8", errors=errors) for tokens in batch]

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *, num_threads: int = 0) -> list[bytes]:
        return [self._core.decode_bytes(tokens) for tokens in batch]

    def token_byte_values(self) -> list[bytes]:
        """The bytes of every ordinary token, sorted."""
        return sorted(self._mergeable_ranks)


def _rebuild(name: str, pat_str: str, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int]) -> Encoding:
    return Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)


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
            _loaded[encoding_name] = Encoding._from_core(_core.load_encoding(encoding_name, str(directory)))
        return _loaded[encoding_name]


def encoding_name_for_model(model_name: str) -> str:
    """tiktoken's encoding for an OpenAI model name; KeyError for other models."""
    return _core.encoding_name_for_model(model_name)


def encoding_for_model(model_name: str) -> Encoding:
    return get_encoding(encoding_name_for_model(model_name))
