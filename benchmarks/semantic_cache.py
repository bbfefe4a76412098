"""How often does the semantic cache serve a wrong answer? Replays labelled paraphrase pairs.

Data: ../shared/data/paraphrase (QQP: Quora question pairs, BiMPM dev/test split; MRPC: news
sentences), never shipped. Two protocols, as the data's README describes:

- **pairs**: an empty cache holds one question, the other is looked up. A hit on a pair labelled
  "not paraphrase" is a false hit (a wrong answer served); recall is the hit rate on paraphrases.
  Cosine similarity is symmetric, so both directions give the same result.
- **preloaded**: every first question of the file is cached (one scope, as for one principal's
  single-turn prompts), then every second question is looked up through the product's cache
  (``tokenlane.stages.cache.ResponseCache`` on a SQLite store, usearch index). A hit is right when it
  returns the pair's own question and the pair is a paraphrase, or another entry whose question is
  labelled a paraphrase of the query somewhere in the file. A hit on a byte-identical question is an
  exact repeat (the exact cache's answer, right by definition): counted apart, not as a false hit.
  Every other hit is false; the rate is over all lookups.

The threshold is chosen on the dev files (QQP dev, MRPC train): the lowest whose false-hit rate is
<= 1 % in both protocols on QQP dev, then reported on the test files. Prints tables, writes JSON.

    python benchmarks/semantic_cache.py [--data ../shared/data/paraphrase] [--out semantic_cache.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenlane.embeddings import WordLlamaEmbedder
from tokenlane.formats import OPENAI_CHAT, LLMRequest
from tokenlane.stages.cache import CachedResponse, ResponseCache
from tokenlane.state.cache import SQLiteCacheStore

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
GOAL_FALSE_HIT = 0.01


def detokenize(text: str) -> str:
    """QQP is PTB-tokenised (``What 's the time ?``); undo the common splits, same on both sides."""
    text = text.replace("``", '"').replace("''", '"')
    text = re.sub(r" (['’](s|re|ve|ll|d|m|t)|n't)\b", r"\1", text)
    text = re.sub(r" ([?.!,;:%)\]])", r"\1", text)
    text = re.sub(r"([(\[$]) ", r"\1", text)
    return text.strip()


def load_qqp(path: Path) -> list[tuple[int, str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, a, b, _ = line.split("\t")
        pairs.append((int(label), detokenize(a), detokenize(b)))
    return pairs


def load_mrpc(path: Path) -> list[tuple[int, str, str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    return [(int(f[0]), f[3], f[4]) for f in (line.split("\t") for line in lines)]


def embed_all(embedder: WordLlamaEmbedder, texts: list[str]) -> tuple[dict[str, np.ndarray], float]:
    unique = sorted(set(texts))
    started = time.perf_counter()
    rows = embedder.embed(unique)
    elapsed = time.perf_counter() - started
    return dict(zip(unique, rows)), elapsed / len(unique)


def pairs_protocol(pairs: list[tuple[int, str, str]], vec: dict[str, np.ndarray]) -> dict[float, dict[str, float]]:
    labels = np.array([p[0] for p in pairs])
    sims = np.array([float(vec[a] @ vec[b]) for _, a, b in pairs])
    out = {}
    for t in THRESHOLDS:
        hit = sims >= t
        out[t] = {"false_hit": float(hit[labels == 0].mean()), "recall": float(hit[labels == 1].mean())}
    return out


def preloaded_protocol(pairs: list[tuple[int, str, str]], embedder: WordLlamaEmbedder,
                       db: str) -> tuple[dict[float, dict[str, float]], dict[str, float]]:
    """Through the product: entries stored by ResponseCache.save, looked up via its scope index."""
    cache = ResponseCache(SQLiteCacheStore(db, max_entries=10**6), mode="semantic", ttl_s=10**9,
                          embedder=lambda: embedder)

    def plan_for(text: str) -> Any:
        request = LLMRequest(OPENAI_CHAT, "gpt-4o-mini", messages=[{"role": "user", "content": text}])
        body = {"model": "gpt-4o-mini", "temperature": 0, "messages": request.messages}
        return cache.plan(request, body, "bench", "/v1/chat/completions", {})

    async def run() -> tuple[list[tuple[str | None, float]], list[float], list[float]]:
        stored: dict[str, str] = {}  # entry key -> stored text
        for _, a, _ in pairs:
            plan = plan_for(a)
            if plan.key in stored:
                continue
            plan = await cache.lookup(plan)
            await cache.save(plan, CachedResponse(json.dumps({"q": a}).encode(), "gpt-4o-mini", 1, 0.0))
            stored[plan.key] = a
        embed_ms, lookup_ms, found = [], [], []
        for _, _, b in pairs:
            plan = plan_for(b)
            t0 = time.perf_counter()
            vector = embedder.embed([b])[0]
            t1 = time.perf_counter()
            near = cache._index(plan.scope).nearest(vector)
            t2 = time.perf_counter()
            embed_ms.append((t1 - t0) * 1000)
            lookup_ms.append((t2 - t1) * 1000)
            found.append((stored.get(near[0]) if near else None, near[1] if near else -1.0))
        return found, embed_ms, lookup_ms

    found, embed_ms, lookup_ms = asyncio.run(run())
    paraphrase = {frozenset((a, b)) for label, a, b in pairs if label == 1}
    out = {}
    positives = sum(1 for p in pairs if p[0] == 1)
    for t in THRESHOLDS:
        false_hits = right = repeats = own_right = 0
        for (label, a, b), (text, sim) in zip(pairs, found):
            if sim < t or text is None:
                continue
            if text == b:
                repeats += 1
            elif frozenset((text, b)) in paraphrase:
                right += 1
                own_right += text == a
            else:
                false_hits += 1
        out[t] = {"false_hit": false_hits / len(pairs), "recall": own_right / max(1, positives),
                  "right_hits": right / len(pairs), "exact_repeats": repeats / len(pairs)}
    latency = {"embed_ms_p50": statistics.median(embed_ms), "embed_ms_p99": float(np.percentile(embed_ms, 99)),
               "lookup_ms_p50": statistics.median(lookup_ms), "lookup_ms_p99": float(np.percentile(lookup_ms, 99)),
               "entries": len({p[1] for p in pairs})}
    cache.close()
    return out, latency


def choose(dev: dict[str, dict[float, dict[str, float]]]) -> float:
    for t in THRESHOLDS:
        if all(dev[p][t]["false_hit"] <= GOAL_FALSE_HIT for p in dev):
            return t
    return THRESHOLDS[-1]


def table(title: str, rows: dict[str, dict[float, dict[str, float]]], chosen: float) -> str:
    lines = [title, "", "| threshold | " + " | ".join(f"{p} false-hit | {p} recall" for p in rows) + " |",
             "|---:|" + "---:|---:|" * len(rows)]
    for t in THRESHOLDS:
        cells = " | ".join(f"{rows[p][t]['false_hit'] * 100:.2f} % | {rows[p][t]['recall'] * 100:.1f} %" for p in rows)
        mark = " **(default)**" if t == chosen else ""
        lines.append(f"| {t:.2f}{mark} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/paraphrase"))
    ap.add_argument("--out", default="semantic_cache.json")
    ap.add_argument("--db", default=":memory:")
    args = ap.parse_args()
    data = Path(args.data)
    sets = {
        "qqp-dev": load_qqp(data / "qqp/dev.tsv"), "qqp-test": load_qqp(data / "qqp/test.tsv"),
        "mrpc-train": load_mrpc(data / "mrpc/msr_paraphrase_train.txt"),
        "mrpc-test": load_mrpc(data / "mrpc/msr_paraphrase_test.txt"),
    }
    t0 = time.perf_counter()
    embedder = WordLlamaEmbedder()
    load_s = time.perf_counter() - t0
    results: dict[str, Any] = {"embedder": embedder.name, "load_s": load_s, "sets": {}}
    for name, pairs in sets.items():
        vec, per_text = embed_all(embedder, [t for p in pairs for t in p[1:]])
        pair_rows = pairs_protocol(pairs, vec)
        pre_rows, latency = preloaded_protocol(pairs, embedder, args.db)
        results["sets"][name] = {"pairs": len(pairs), "negatives": sum(p[0] == 0 for p in pairs),
                                 "batch_embed_ms_per_text": per_text * 1000, "pairs_protocol": pair_rows,
                                 "preloaded_protocol": pre_rows, "latency": latency}
        print(f"{name}: {len(pairs)} pairs embedded, {per_text * 1e3:.3f} ms/text batched", file=sys.stderr)
    s = results["sets"]
    chosen = choose({"pairs": s["qqp-dev"]["pairs_protocol"], "preloaded": s["qqp-dev"]["preloaded_protocol"]})
    results["chosen_threshold"] = chosen
    print(f"embedder {embedder.name}, loaded in {load_s:.2f} s; default threshold chosen on QQP dev: {chosen:.2f}\n")
    for protocol in ("pairs_protocol", "preloaded_protocol"):
        print(table(f"### {protocol.replace('_', ' ')}", {n: s[n][protocol] for n in s}, chosen))
        print()
    print("| set | entries | embed p50 / p99 (ms) | lookup p50 / p99 (ms) |\n|---|---:|---:|---:|")
    for name in s:
        lat = s[name]["latency"]
        print(f"| {name} | {lat['entries']} | {lat['embed_ms_p50']:.3f} / {lat['embed_ms_p99']:.3f} | "
              f"{lat['lookup_ms_p50']:.3f} / {lat['lookup_ms_p99']:.3f} |")
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
