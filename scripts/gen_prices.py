#!/usr/bin/env python3
"""Generate python/tokenlane/data/prices.json, the price table ``Pricing.default()`` ships.

Two inputs, nothing typed in by hand here:

1. LiteLLM's price list as its PyPI package ships it (``litellm/model_prices_and_context_window_backup.json``
   inside the ``litellm`` wheel, version pinned below): the chat and embedding models of the
   providers in ``PROVIDERS``, keeping only the keys tokenlane reads.
2. ``python/tokenlane/data/prices_checked.json``: entries checked against the vendors' price pages
   (docs/pricing.md); they win where both name a model.

Every entry gets ``source`` (the vendor page LiteLLM cites, else the package it came from), ``as_of``
(the day the table was generated) and ``price_file`` (the file and version it came from).

Usage:
    python scripts/gen_prices.py                       # pip-downloads the pinned litellm wheel (no deps, not installed)
    python scripts/gen_prices.py --source FILE.json    # any copy of LiteLLM's list, e.g. a newer one
    python scripts/gen_prices.py --check               # the committed table is what the inputs give
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

LITELLM_VERSION = "1.110.2"
LITELLM_MEMBER = "litellm/model_prices_and_context_window_backup.json"
DATA = pathlib.Path(__file__).resolve().parent.parent / "python" / "tokenlane" / "data"
OUT = DATA / "prices.json"
CHECKED = DATA / "prices_checked.json"

# The major model vendors, and the hosts people use for open-weight models. Cloud resellers of the
# same models (azure, bedrock, vertex_ai) are left out: their keys would shadow the vendors' own.
VENDORS = (
    "openai", "anthropic", "gemini", "mistral", "codestral", "deepseek", "xai", "cohere", "cohere_chat",
    "ai21", "moonshot", "dashscope", "zai", "minimax", "perplexity", "voyage",
)
HOSTS = (
    "groq", "together_ai", "fireworks_ai", "fireworks_ai-embedding-models", "deepinfra", "cerebras",
    "sambanova", "nebius", "hyperbolic", "lambda_ai",
)
PROVIDERS = VENDORS + HOSTS
MODES = ("chat", "embedding")

# The LiteLLM keys tokenlane's loader uses (cpp/src/pricing/pricing.cpp): the five per-token prices,
# their `_batches` and `_above_<N>k_tokens` variants, the limits, provider and mode.
_PRICES = ("input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
           "cache_creation_input_token_cost", "output_cost_per_reasoning_token")
_KEEP = re.compile(r"^(?:%s)(?:_batches|_above_\d+k_tokens)?$" % "|".join(_PRICES))
_LIMITS = ("max_input_tokens", "max_output_tokens", "max_tokens")


def read_litellm(source: str | None) -> tuple[dict, str]:
    """LiteLLM's list and how to cite it."""
    if source:
        return json.loads(pathlib.Path(source).read_text(encoding="utf-8")), pathlib.Path(source).name
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, f"litellm=={LITELLM_VERSION}"], check=True)
        wheel = next(pathlib.Path(tmp).glob("litellm-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = json.loads(z.read(LITELLM_MEMBER))
    return data, f"litellm {LITELLM_VERSION} (PyPI) {LITELLM_MEMBER}"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def select(litellm: dict, cite: str, as_of: str, checked_keys: set[str] = frozenset()) -> dict[str, dict]:
    fallback_source = (f"https://pypi.org/project/litellm/{LITELLM_VERSION}/" if cite.startswith("litellm ")
                       else "https://github.com/BerriAI/litellm")
    out: dict[str, dict] = {}
    for key, entry in sorted(litellm.items()):
        if not isinstance(entry, dict) or key.startswith("_") or key == "sample_spec":
            continue
        if entry.get("litellm_provider") not in PROVIDERS or entry.get("mode") not in MODES:
            continue
        prices = {k: v for k, v in entry.items() if _KEEP.match(k) and _number(v)}
        if "input_cost_per_token" not in prices and "output_cost_per_token" not in prices:
            continue
        limits = {k: int(entry[k]) for k in _LIMITS if _number(entry.get(k))}
        source = entry.get("source")
        out[key] = {
            "litellm_provider": entry["litellm_provider"], "mode": entry["mode"], **prices, **limits,
            "source": source if isinstance(source, str) and source.startswith("https://") else fallback_source,
            "as_of": as_of, "price_file": cite,
        }
    # A host's copy of a vendor's model ("deepinfra/google/gemini-2.5-pro") would make the bare name
    # ("gemini-2.5-pro") ambiguous, and a request naming it unpriceable: the vendor's entry is kept.
    vendor_names = {k.rsplit("/", 1)[-1] for k, v in out.items() if v["litellm_provider"] in VENDORS}
    vendor_names |= {k.rsplit("/", 1)[-1] for k in checked_keys}
    return {k: v for k, v in out.items()
            if v["litellm_provider"] in VENDORS or k.rsplit("/", 1)[-1] not in vendor_names}


def render(litellm: dict, cite: str, as_of: str) -> str:
    checked = json.loads(CHECKED.read_text(encoding="utf-8"))
    table = select(litellm, cite, as_of, {k for k in checked if not k.startswith("_")})
    overridden = sorted(k for k in checked if not k.startswith("_") and k in table)
    for key, entry in checked.items():
        if not key.startswith("_"):
            table[key] = entry
    about = {
        "what": "tokenlane's default price table, in LiteLLM's model_prices_and_context_window.json schema. "
                "Generated by scripts/gen_prices.py: do not edit; edit prices_checked.json or regenerate.",
        "from": cite,
        "providers": list(PROVIDERS),
        "modes": list(MODES),
        "generated": as_of,
        "checked_entries": "prices_checked.json (vendor pages; wins over LiteLLM's list for "
                           f"{len(overridden)} of its {len(checked) - 1} models)",
        "models": len(table),
    }
    return json.dumps({"_about": about, **dict(sorted(table.items()))}, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a copy of LiteLLM's model_prices_and_context_window.json")
    parser.add_argument("--as-of", help="date the prices were read (default: today, UTC; --check: the table's)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--check", action="store_true", help="fail if --out differs from what the inputs give")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    as_of = args.as_of
    if not as_of:
        if args.check:
            as_of = json.loads(out.read_text(encoding="utf-8"))["_about"]["generated"]
        else:
            as_of = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    litellm, cite = read_litellm(args.source)
    text = render(litellm, cite, as_of)
    if args.check:
        if out.read_text(encoding="utf-8") != text:
            print(f"{out} is stale: run scripts/gen_prices.py", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {json.loads(text)['_about']['models']} models from {cite}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
