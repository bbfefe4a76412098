"""Test setup: verified rank files from ../shared/vocab for tokenlane and for tiktoken (the reference)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_VOCAB = REPO.parent / "shared" / "vocab"
OFFICIAL = "https://openaipublic.blob.core.windows.net/encodings/"

os.environ.setdefault("TOKENLANE_VOCAB_DIR", str(SHARED_VOCAB))
VOCAB_DIR = Path(os.environ["TOKENLANE_VOCAB_DIR"])


@pytest.fixture(scope="session")
def tiktoken_module(tmp_path_factory: pytest.TempPathFactory):
    """tiktoken reading the same verified files, offline (its cache is keyed by sha1 of the URL)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ("cl100k_base", "o200k_base", "p50k_base", "r50k_base"):
        key = hashlib.sha1((OFFICIAL + name + ".tiktoken").encode()).hexdigest()
        shutil.copy(VOCAB_DIR / f"{name}.tiktoken", cache / key)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    import tiktoken

    return tiktoken
