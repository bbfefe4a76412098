"""Finds, downloads and caches the BPE rank files; the C++ core verifies each by SHA-256.

Where a rank file is looked for, in order:

1. ``$TOKENLANE_VOCAB_DIR`` (an offline directory of verified files; nothing else is tried when set),
2. tokenlane's cache, ``$TOKENLANE_CACHE_DIR`` or ``~/.cache/tokenlane``,
3. tiktoken's cache (``$TIKTOKEN_CACHE_DIR`` or ``$DATA_GYM_CACHE_DIR``), copied into ours,
4. the official URL tiktoken downloads from, unless ``TOKENLANE_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from . import _core

OFFICIAL_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/"


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    return _env_dir("TOKENLANE_CACHE_DIR") or Path.home() / ".cache" / "tokenlane"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _from_tiktoken_cache(rank_file: str, expected: str) -> bytes | None:
    url = OFFICIAL_BASE_URL + rank_file
    key = hashlib.sha1(url.encode()).hexdigest()  # tiktoken names cache entries this way
    for env in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        directory = _env_dir(env)
        if directory and (directory / key).is_file():
            data = (directory / key).read_bytes()
            if hashlib.sha256(data).hexdigest() == expected:
                return data
    return None


def _download(rank_file: str) -> bytes:
    import urllib.request  # (here: it costs `import tokenlane` ~20 ms, and most processes never download)

    url = OFFICIAL_BASE_URL + rank_file
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as exc:
        raise _core.VocabularyError(
            f"could not download {rank_file} from {url} ({exc}). Offline? Put a verified copy in a "
            f"directory and set TOKENLANE_VOCAB_DIR to it, or copy it into {cache_dir()}."
        ) from exc


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def vocab_dir_for(encoding_name: str) -> Path:
    """A directory holding a verified rank file for ``encoding_name``, fetching it if needed."""
    rank_file = _core.encoding_rank_file(encoding_name)
    offline_dir = _env_dir("TOKENLANE_VOCAB_DIR")
    if offline_dir is not None:
        return offline_dir  # the core reports a missing or corrupt file with instructions

    expected = _core.encoding_sha256(encoding_name)
    cached = cache_dir() / rank_file
    if cached.is_file() and _sha256(cached) == expected:
        return cached.parent

    data = _from_tiktoken_cache(rank_file, expected)
    if data is None:
        if os.environ.get("TOKENLANE_OFFLINE", "") not in ("", "0"):
            raise _core.VocabularyError(
                f"{rank_file} is not cached and TOKENLANE_OFFLINE is set: set TOKENLANE_VOCAB_DIR "
                f"to a directory with a verified copy, or copy it into {cache_dir()}."
            )
        data = _download(rank_file)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise _core.VocabularyError(
                f"downloaded {rank_file} has SHA-256 {actual}, expected {expected}; not cached. "
                "Retry, or set TOKENLANE_VOCAB_DIR to a directory with a verified copy."
            )
    _write_atomically(cached, data)
    return cached.parent
