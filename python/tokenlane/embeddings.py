"""Sentence embeddings for the semantic cache: pluggable, offline by default.

The default, :class:`WordLlamaEmbedder`, is a static embedding model (token vectors averaged, 256
dimensions) whose weights and tokenizer ship inside the ``wordllama`` wheel: no network, about 2 s
to load once, well under a millisecond per short prompt. :class:`ProviderEmbedder` calls an
OpenAI-compatible ``/embeddings`` endpoint instead. Both return L2-normalised float32 rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""


def _normalised(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class WordLlamaEmbedder:
    """WordLlama ``l2_supercat`` at 256 dimensions, loaded from the files in its wheel.

    (``WordLlama.load()`` looks for the tokenizer in a folder the wheel does not use and then tries
    the network; reading both files directly keeps this offline.)
    """

    name = "wordllama-l2_supercat-256"

    def __init__(self) -> None:
        import wordllama  # the `cache` extra
        from safetensors import safe_open
        from tokenizers import Tokenizer
        from wordllama.inference import WordLlamaInference

        root = Path(wordllama.__file__).parent
        tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
        with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
            table = f.get_tensor("embedding.weight")
        self._model = WordLlamaInference(table, tokenizer, binary=False)
        self.dim = int(table.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return _normalised(self._model.embed(list(texts), norm=False))


class ProviderEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` (blocking; the cache calls it from a thread).
    The dimension is learnt from the first answer."""

    def __init__(self, base_url: str, model: str = "text-embedding-3-small", api_key: str | None = None, *,
                 timeout_s: float = 10.0) -> None:
        import httpx

        self.name = f"provider:{model}"
        self._model = model
        self._dim: int | None = None
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        response = self._client.post("/embeddings", json={"model": self._model, "input": list(texts)})
        response.raise_for_status()
        data: list[dict[str, Any]] = sorted(response.json()["data"], key=lambda d: d["index"])
        rows = _normalised(np.array([d["embedding"] for d in data], dtype=np.float32))
        self._dim = int(rows.shape[1])
        return rows

    def close(self) -> None:
        self._client.close()


@functools.lru_cache(maxsize=1)
def default_embedder() -> WordLlamaEmbedder:
    """The process-wide default embedder (loaded on first use)."""
    return WordLlamaEmbedder()


__all__ = ["Embedder", "ProviderEmbedder", "WordLlamaEmbedder", "default_embedder"]
