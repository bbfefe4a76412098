#!/usr/bin/env python3
"""Output-token estimators on real prompt/response data: rank quality, error, coverage, cost.

Every estimator is run on the same records with K-fold cross-validation held out BY PROMPT AND BY
MODEL: fold k tests the prompts of the k-th prompt fold answered by the models of the k-th model
fold, and trains only on the other prompts answered by the other models (records that mix a test
prompt with a training model, or the reverse, are used by neither side). For each fold:

  cold    the estimator as trained on the other folds estimates every test record, learning nothing;
  online  a copy replays the test records in a seeded random order, estimating each before it
          observes it (what a running service sees: the same prompt may already have been answered
          by other models, earlier).

Estimators (trained = fitted on the training folds; history = fed the training folds' records):

  heuristic            the baseline: task prior x input length (no task labels here: "chat")
  learned:priors       LearnedEstimator as shipped (hand-set cue priors, no training)
  learned:trained      LearnedEstimator fitted on the training folds (tokenlane.estimators.train)
  history              HistoryEstimator fed the training folds
  blend:default        Estimator.default() as shipped (priors, empty history)
  blend:trained        Estimator.default(learned=trained, history=training folds)

Metrics: Kendall tau and Spearman of p50 vs actual within each model, averaged over models (rank
quality where it matters: ordering requests to the same model); MAE (tokens), median relative
error and p90 coverage (share of actual <= p90) over all test records; us/estimate is the core's
time per estimate as measured in this run (the per-record mean), and the 1k-token line times one
estimate of a 1,000-token prompt (o200k_base) built from the data's prompts (or, when they hold
too little text, from /usr/share/common-licenses/GPL-3), median of many.

Data (first found): --data PATH (files or directories, repeatable), $TOKENLANE_DATA_DIR,
../shared/data/responses, ../data/responses (relative to the repository). Formats: whatever
tokenlane.evaluate reads, including AlpacaEval's results/<model>/model_outputs.json
(instruction, output, generator). Output tokens are counted with the exact o200k_base tokenizer
unless the records carry output_tokens. Nothing is downloaded; no data is stored in the repo.

    python benchmarks/estimators.py                        # 5 folds
    python benchmarks/estimators.py --data /path/to/results --folds 3 --out /tmp/est.json

Censoring: the shipped default replays each fold's test records online with a seeded share capped at
max_tokens (--cap-share, --cap): a cut answer is observed as a lower bound ("length"), or, for
comparison, as if it were complete; both are scored on the uncapped records.

Prints a Markdown table and writes JSON to benchmarks/results/estimators.json (or --out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "estimators.json"
SHARED_VOCAB = REPO.parent / "shared" / "vocab"
if SHARED_VOCAB.is_dir():  # the verified rank files, offline (as benchmarks/tokenizer.py does)
    os.environ.setdefault("TOKENLANE_VOCAB_DIR", str(SHARED_VOCAB))
# AlpacaEval's answers of 25 models to the same 805 prompts (CC BY-NC 4.0: evaluation only).
CANDIDATES = [REPO.parent / "shared" / "data" / "responses" / "alpaca_eval", REPO.parent / "data" / "responses"]


def find_data(paths: list[str]) -> list[Path]:
    if paths:
        return [Path(p) for p in paths]
    env = os.environ.get("TOKENLANE_DATA_DIR")
    if env:
        return [Path(env)]
    for c in CANDIDATES:
        if c.is_dir() and any(p.suffix in (".json", ".jsonl") for p in c.rglob("*")):
            return [c]
    sys.exit(
        "no prompt/response data found: pass --data PATH or set TOKENLANE_DATA_DIR "
        f"(looked in {', '.join(str(c) for c in CANDIDATES)})"
    )


def subset(records, idx):
    from tokenlane.evaluation import Records

    def pick(col):
        return None if col is None else [col[i] for i in idx]

    return Records(
        prompts=pick(records.prompts), models=pick(records.models), output_tokens=pick(records.output_tokens),
        routes=pick(records.routes), tenants=pick(records.tenants), tasks=pick(records.tasks),
        max_tokens=pick(records.max_tokens), input_tokens=pick(records.input_tokens),
        prompt_keys=pick(records.prompt_keys), truncated=pick(records.truncated),
    )


def fold_of(prompt: str, folds: int, seed: int) -> int:
    h = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(h[:8], "little") % folds


def model_folds(models: list[str], folds: int, seed: int) -> dict[str, int]:
    """Models dealt round-robin to folds in a seeded order, so every fold holds out as many models."""
    order = sorted(models)
    random.Random(seed).shuffle(order)
    return {m: i % folds for i, m in enumerate(order)}


def metrics(frames) -> dict:
    import pandas as pd

    from tokenlane.evaluation import summarize

    df = pd.concat(frames, ignore_index=True)
    per_model = summarize(df).drop(index="(all)")
    overall = summarize(df).loc["(all)"]
    return {
        "n": int(len(df)),
        "tau": float(per_model["kendall_tau"].mean()),
        "spearman": float(per_model["spearman"].mean()),
        "mae": float(overall["mae"]),
        "median_rel_error": float(overall["median_rel_error"]),
        "p90_coverage": float(overall["p90_coverage"]),
        "us_per_estimate": float(df["us"].mean()),
        "sources": {k: int(v) for k, v in df["source"].value_counts().items()},
        "per_model_tau": {k: float(v) for k, v in per_model["kendall_tau"].items()},
    }


def thousand_token_prompt(records) -> str:
    from tokenlane import get_encoding

    enc = get_encoding("o200k_base")
    ids: list[int] = []
    for p in dict.fromkeys(records.prompts):
        ids.extend(enc.encode_ordinary(p + "\n\n"))
        if len(ids) >= 1000:
            break
    if len(ids) < 1000:  # too little prompt text in the data: real English prose from this machine
        gpl = Path("/usr/share/common-licenses/GPL-3")
        text = gpl.read_text(encoding="utf-8") if gpl.is_file() else "The quick brown fox jumps. " * 400
        ids = enc.encode_ordinary(text)
    return enc.decode(ids[:1000])


def time_long_prompt(est, prompt: str, reps: int) -> float:
    """Median core microseconds of one estimate (batches of 100, GIL released, in C++)."""
    samples = []
    prompts, models = [prompt] * 100, ["gpt-4o"] * 100
    for _ in range(reps):
        _, _, _, ns = est._core.estimate_batch(prompts, models, None, None, [1000] * 100, None, None, None)
        samples.append(statistics.median(ns) / 1000.0)
    return statistics.median(samples)


def time_token_count(prompt: str, reps: int) -> float:
    """Median microseconds of counting the same prompt exactly (o200k_base), for scale."""
    from tokenlane import get_encoding

    enc = get_encoding("o200k_base")
    samples = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        for _ in range(20):
            enc.count(prompt)
        samples.append((time.perf_counter_ns() - t) / 20 / 1000.0)
    return statistics.median(samples)


def censor(records, idx, cap: int, share: float, seed: int, aware: bool):
    """The records at idx with a seeded `share` of them capped at max_tokens=cap: their output is
    min(actual, cap) and, when cut, finish_reason "length" (passed on only when `aware`)."""
    from tokenlane.evaluation import Records

    rng = random.Random(seed)
    capped = [rng.random() < share for _ in idx]
    outs = [min(records.output_tokens[i], cap) if c else records.output_tokens[i] for i, c in zip(idx, capped)]
    cut = [c and records.output_tokens[i] >= cap for i, c in zip(idx, capped)]
    sub = subset(records, idx)
    return Records(
        prompts=sub.prompts, models=sub.models, output_tokens=outs, input_tokens=sub.input_tokens,
        max_tokens=[cap if c else None for c in capped], prompt_keys=sub.prompt_keys,
        truncated=cut if aware else None,
    ), capped


def run(args) -> dict:
    import tokenlane
    from tokenlane.estimators import Estimator, HeuristicEstimator, HistoryEstimator, LearnedEstimator
    from tokenlane.evaluation import load_records, replay

    paths = find_data(args.data)
    t0 = time.perf_counter()
    records = load_records([str(p) for p in paths])
    load_s = time.perf_counter() - t0
    prompts = sorted(set(p if p else f"#record{i}" for i, p in enumerate(records.prompt_keys)))
    models = sorted(set(records.models))
    print(f"data: {len(records)} records, {len(prompts)} prompts, {len(models)} models from "
          f"{', '.join(map(str, paths))} (loaded and counted in {load_s:.1f} s)", file=sys.stderr)

    # Records without prompt text (traces that carry only token counts) are each their own prompt.
    keys = [p if p else f"#record{i}" for i, p in enumerate(records.prompt_keys)]
    fold_ids = [fold_of(p, args.folds, args.seed) for p in keys]
    # Held out by prompt AND by model: fold k tests the k-th prompt fold on the k-th model fold and
    # trains on the other prompts answered by the other models (with a single model, by prompt only).
    mfold = model_folds(models, args.folds, args.seed) if len(models) >= args.folds else None
    names = ["heuristic", "learned:priors", "learned:trained", "history", "blend:default", "blend:trained"]
    frames = {(n, mode): [] for n in names for mode in ("cold", "online")}
    censoring = {mode: [] for mode in ("aware", "naive")}
    for k in range(args.folds):
        def held_out(i: int) -> bool:
            return mfold is None or mfold[records.models[i]] == k
        train_idx = [i for i, f in enumerate(fold_ids) if f != k and (mfold is None or not held_out(i))]
        test_idx = [i for i, f in enumerate(fold_ids) if f == k and held_out(i)]
        rng = random.Random(args.seed * 1000 + k)
        online_order = test_idx[:]
        rng.shuffle(online_order)
        train_set, test_set, test_online = (subset(records, idx) for idx in (train_idx, test_idx, online_order))

        t = time.perf_counter()
        trained = LearnedEstimator(pricing=None).fit(train_set, epochs=args.epochs, seed=args.seed)
        train_s = time.perf_counter() - t
        history = HistoryEstimator(pricing=None)
        history._core.replay_batch(
            train_set.prompts, train_set.models, train_set.output_tokens, None, None, None, None, None, None
        )
        estimators = {
            "heuristic": HeuristicEstimator(pricing=None),
            "learned:priors": LearnedEstimator(pricing=None),
            "learned:trained": trained,
            "history": history,
            "blend:default": Estimator.default(pricing=None),
            "blend:trained": Estimator.default(learned=trained, history=history, pricing=None),
        }
        for name, est in estimators.items():
            frames[(name, "cold")].append(replay(est, test_set, online=False))
            frames[(name, "online")].append(replay(est, test_online, online=True))
        # Censoring: the shipped default online, a share of requests capped by max_tokens; scored on
        # the uncapped ones (whose truth is known), with the cut lengths passed as lower bounds
        # ("aware") or as if they were complete answers ("naive").
        for mode in ("aware", "naive"):
            stream, capped = censor(records, online_order, args.cap, args.cap_share, args.seed + k, mode == "aware")
            df = replay(Estimator.default(pricing=None), stream, online=True)
            df["actual"] = [records.output_tokens[i] for i in online_order]
            censoring[mode].append(df[[not c for c in capped]])
        print(f"fold {k + 1}/{args.folds}: {len(train_idx)} train / {len(test_idx)} test records, "
              f"learned fit {train_s:.1f} s", file=sys.stderr)

    long_prompt = thousand_token_prompt(records)
    trained_all = LearnedEstimator(pricing=None).fit(records, epochs=1, seed=args.seed)
    timing_estimators = {
        "heuristic": HeuristicEstimator(pricing=None),
        "learned:priors": LearnedEstimator(pricing=None),
        "learned:trained": trained_all,
        "history": HistoryEstimator(pricing=None),
        "blend:default": Estimator.default(pricing=None),
        "blend:trained": Estimator.default(learned=trained_all, pricing=None),
    }
    count_us = time_token_count(long_prompt, args.reps)
    results = []
    for name in names:
        row = {"estimator": name}
        for mode in ("cold", "online"):
            row[mode] = metrics(frames[(name, mode)])
        row["us_1k_token_prompt"] = time_long_prompt(timing_estimators[name], long_prompt, args.reps)
        results.append(row)
    censored = {mode: metrics(censoring[mode]) for mode in ("aware", "naive")}
    return {
        "censoring": {"cap": args.cap, "share": args.cap_share, **censored},
        "meta": {
            "tokenlane": tokenlane.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "folds": args.folds,
            "epochs": args.epochs,
            "seed": args.seed,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "load_average": os.getloadavg(),
            "us_exact_count_1k_token_prompt": count_us,
        },
        "data": {
            "paths": [str(p) for p in paths],
            "records": len(records),
            "prompts": len(prompts),
            "models": models,
            "output_tokens": "o200k_base count of the response text (unless the records carry output_tokens)",
            "median_output_tokens": statistics.median(records.output_tokens),
        },
        "results": results,
    }


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(res: dict) -> str:
    d = res["data"]
    lines = [
        f"Data: {d['records']} responses to {d['prompts']} prompts from {len(d['models'])} models "
        f"({', '.join(d['paths'])}); {res['meta']['folds']}-fold CV held out by prompt and by model (fold k "
        f"tests the k-th prompt fold on the k-th model fold, trains on the other prompts of the other models); "
        f"median output {d['median_output_tokens']} tokens.",
        "",
        "| estimator | tau cold | tau online | spearman cold / online | MAE cold / online | "
        "median rel err cold / online | p90 coverage cold / online | µs/estimate | µs (1k-token prompt) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        c, o = r["cold"], r["online"]
        lines.append(
            f"| {r['estimator']} | {fmt(c['tau'])} | {fmt(o['tau'])} | {fmt(c['spearman'])} / {fmt(o['spearman'])} | "
            f"{fmt(c['mae'], 0)} / {fmt(o['mae'], 0)} | {fmt(c['median_rel_error'])} / {fmt(o['median_rel_error'])} | "
            f"{fmt(c['p90_coverage'])} / {fmt(o['p90_coverage'])} | {fmt(c['us_per_estimate'], 1)} | "
            f"{fmt(r['us_1k_token_prompt'], 1)} |"
        )
    lines.append("")
    lines.append("tau, spearman: per-model rank correlation of p50 with the actual length, averaged over models.")
    c = res.get("censoring")
    if c:
        lines += [
            "",
            f"Censoring: blend:default online, {c['share']:.0%} of the requests capped at max_tokens={c['cap']} "
            "(cut answers end with finish_reason \"length\"), scored on the uncapped ones:",
            "",
            "| cut answers observed as | n | tau | MAE | median rel err | p90 coverage |",
            "|---|---|---|---|---|---|",
        ]
        for mode, label in (("aware", "lower bounds (shipped)"), ("naive", "complete answers")):
            m = c[mode]
            lines.append(f"| {label} | {m['n']} | {fmt(m['tau'])} | {fmt(m['mae'], 0)} | "
                         f"{fmt(m['median_rel_error'])} | {fmt(m['p90_coverage'])} |")
    m = res["meta"]
    lines.append(
        f"Scale: counting the same 1k-token prompt exactly (o200k_base, tokenlane) took "
        f"{m['us_exact_count_1k_token_prompt']:.1f} µs in this run; load average "
        f"{', '.join(f'{x:.1f}' for x in m['load_average'])} on {m['cpu_count']} cores."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", default=[], help="data file or directory (repeatable)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50, help="repetitions of the 1k-token timing")
    ap.add_argument("--cap", type=int, default=256, help="max_tokens of the capped requests (censoring)")
    ap.add_argument("--cap-share", type=float, default=0.3, help="share of requests capped (censoring)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.folds < 2:
        sys.exit("--folds must be at least 2")
    res = run(args)
    text = report(res)
    print(text)
    res["markdown"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
