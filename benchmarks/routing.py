#!/usr/bin/env python3
"""Routing between a strong and a weak model on RouteLLM's GSM8K set: accuracy vs cost.

Data: ../shared/data/routing/routellm/gsm8k/gsm8k_responses.csv (lm-sys/RouteLLM, Apache-2.0): for
each of the 1,319 GSM8K test questions, whether gpt-4-1106-preview (strong) and
Mixtral-8x7B-Instruct (weak) answered correctly, with their responses. The 12 prompts RouteLLM lists
as contaminated are dropped, as RouteLLM does. The rest is split at random (seeded) into a train half
and a test half; routers are fitted on train only, and every figure below is on test.

Cost of a prompt on a model = tokenlane's price of (exact prompt tokens + the real response's
tokens) on that model (Pricing.default(): gpt-4-1106-preview, and Mixtral-8x7B on together_ai);
gpt-4 counts are exact (cl100k_base), Mixtral's are tokenlane's calibrated approximation.

Routers (each sends a prompt to the strong model when its score is above a threshold; sweeping the
threshold traces a curve from all-weak to all-strong):
  random        the straight line between always-weak and always-strong (expected value)
  input-tokens  a tokenlane rule on the exact prompt length (longer question -> strong)
  task+numbers  the number of quantities in the question (what classify_task looks at)
  difficulty    tokenlane.routing.DifficultyModel (hashed n-grams, logistic) fitted on train labels
                "the weak model was wrong"
  oracle        strong exactly when the weak model is wrong and the strong one right (upper bound)

RouteLLM's measures: PGR = (acc - acc_weak) / (acc_strong - acc_weak) at a share of strong calls;
APGR = mean PGR over strong-call shares 0..100 %; CPT(x) = the least share of strong calls that
reaches PGR x. Savings are vs always-strong at the same PGR.

    python benchmarks/routing.py [--data DIR] [--seed 0] [--out benchmarks/results/routing.json]
        [--plot docs/benchmarks/routing.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_CANDIDATES = [REPO.parent / "shared" / "data" / "routing" / "routellm" / "gsm8k",
                   REPO / ".." / "data" / "routing" / "routellm" / "gsm8k"]
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_PRICE, WEAK_PRICE = "gpt-4-1106-preview", "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1"


def load(data_dir: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    contaminated = set()
    cpath = data_dir / "contaminated_prompts.jsonl"
    if cpath.exists():
        for line in cpath.read_text(encoding="utf-8").splitlines():
            if line.strip():
                contaminated.add(json.loads(line)["eval_prompt"].strip())
    rows = []
    with open(data_dir / "gsm8k_responses.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["prompt"].strip() in contaminated:
                continue
            rows.append({"prompt": r["prompt"], "strong_ok": r[STRONG] == "True", "weak_ok": r[WEAK] == "True",
                         "strong_out": r[f"{STRONG}_response"], "weak_out": r[f"{WEAK}_response"]})
    return rows


def price(rows: list[dict]) -> None:
    import tokenlane

    pricing = tokenlane.Pricing.default()
    enc = tokenlane.encoding_for_model("gpt-4")
    for r in rows:
        msgs = [{"role": "user", "content": r["prompt"]}]
        r["input_tokens"] = tokenlane.count_chat_tokens(msgs, "gpt-4")
        weak_in = tokenlane.count_tokens_approx(r["prompt"], WEAK).tokens + 8
        r["strong_cost"] = pricing.cost(STRONG_PRICE, r["input_tokens"], enc.count(r["strong_out"], disallowed_special=())).usd
        r["weak_cost"] = pricing.cost(WEAK_PRICE, weak_in, tokenlane.count_tokens_approx(r["weak_out"], WEAK).tokens).usd


def curve(test: list[dict], scores: list[float]) -> list[tuple[float, float, float]]:
    """(strong share, accuracy, cost) for every threshold: the k highest scores go strong."""
    order = sorted(range(len(test)), key=lambda i: -scores[i])
    n = len(test)
    acc = sum(r["weak_ok"] for r in test)
    cost = sum(r["weak_cost"] for r in test)
    points = [(0.0, acc / n, cost)]
    for k, i in enumerate(order, 1):
        r = test[i]
        acc += r["strong_ok"] - r["weak_ok"]
        cost += r["strong_cost"] - r["weak_cost"]
        points.append((k / n, acc / n, cost))
    return points


def summarize(points: list[tuple[float, float, float]], acc_weak: float, acc_strong: float,
              cost_strong: float) -> dict:
    gap = acc_strong - acc_weak

    def pgr(a: float) -> float:
        return (a - acc_weak) / gap

    # APGR: PGR averaged over strong-call shares (the curve is a step per prompt).
    apgr = sum(pgr(a) for _, a, _ in points[1:]) / (len(points) - 1)
    out = {"apgr": round(apgr, 4)}
    for target in (0.5, 0.8):
        hit = next(((s, a, c) for s, a, c in points if pgr(a) >= target), None)
        key = f"cpt{int(target * 100)}"
        out[key] = None if hit is None else round(hit[0], 4)
        out[f"{key}_cost_saving"] = None if hit is None else round(1 - hit[2] / cost_strong, 4)
    best = max(points, key=lambda p: (p[1], -p[0]))
    out["best_accuracy"] = round(best[1], 4)
    out["best_accuracy_strong_share"] = round(best[0], 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing.json")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks" / "routing.png")
    args = ap.parse_args()
    data_dir = args.data or next((d for d in DATA_CANDIDATES if (d / "gsm8k_responses.csv").exists()), None)
    if data_dir is None:
        print("no RouteLLM GSM8K data (../shared/data/routing/routellm/gsm8k); pass --data", file=sys.stderr)
        return 2

    from tokenlane.routing import DifficultyModel, classify_task

    rows = load(data_dir)
    price(rows)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    train, test = rows[: len(rows) // 2], rows[len(rows) // 2:]

    model = DifficultyModel().fit([r["prompt"] for r in train], [not r["weak_ok"] for r in train], seed=args.seed + 1)
    n = len(test)
    acc_weak = sum(r["weak_ok"] for r in test) / n
    acc_strong = sum(r["strong_ok"] for r in test) / n
    cost_weak = sum(r["weak_cost"] for r in test)
    cost_strong = sum(r["strong_cost"] for r in test)
    numbers = re.compile(r"\d+(?:[.,]\d+)?")
    scorers = {
        "input-tokens": [float(r["input_tokens"]) for r in test],
        "task+numbers": [len(numbers.findall(r["prompt"])) + 1e-6 * r["input_tokens"] for r in test],
        "difficulty": [model.score(r["prompt"]) for r in test],
        "oracle": [float((not r["weak_ok"]) and r["strong_ok"]) for r in test],
    }
    curves = {name: curve(test, s) for name, s in scorers.items()}
    # Random routing: expected accuracy and cost are linear in the strong share.
    curves["random"] = [(k / n, acc_weak + (acc_strong - acc_weak) * k / n, cost_weak + (cost_strong - cost_weak) * k / n)
                        for k in range(n + 1)]
    results = {name: summarize(pts, acc_weak, acc_strong, cost_strong) for name, pts in curves.items()}
    task_share = sum(classify_task(r["prompt"]) == "math" for r in rows) / len(rows)

    print(f"RouteLLM GSM8K, {len(rows)} prompts ({len(train)} train / {n} test, seed {args.seed}); "
          f"strong {STRONG} acc {acc_strong:.3f} ${cost_strong:.2f}, weak {WEAK.split('/')[-1]} acc {acc_weak:.3f} "
          f"${cost_weak:.2f} on test (cost ratio {cost_strong / cost_weak:.0f}x)")
    print(f"classify_task says 'math' for {task_share:.1%} of the GSM8K questions\n")
    print("| router | APGR | CPT(50%) | saving at CPT(50%) | CPT(80%) | saving at CPT(80%) | best accuracy (at strong share) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("random", "input-tokens", "task+numbers", "difficulty", "oracle"):
        r = results[name]

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        print(f"| {name} | {r['apgr']:.3f} | {pct(r['cpt50'])} | {pct(r['cpt50_cost_saving'])} | {pct(r['cpt80'])} | "
              f"{pct(r['cpt80_cost_saving'])} | {r['best_accuracy']:.3f} ({r['best_accuracy_strong_share']:.0%}) |")
    print("| always-weak | 0 | - | - | - | - | %.3f (0%%) |" % acc_weak)
    print("| always-strong | 1 | - | - | - | - | %.3f (100%%) |" % acc_strong)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "data": str(data_dir), "prompts": len(rows), "train": len(train), "test": n, "seed": args.seed,
        "strong": {"model": STRONG, "priced_as": STRONG_PRICE, "accuracy": acc_strong, "cost_usd": cost_strong},
        "weak": {"model": WEAK, "priced_as": WEAK_PRICE, "accuracy": acc_weak, "cost_usd": cost_weak},
        "classify_task_math_share": task_share, "routers": results,
        "curves": {k: [[round(s, 4), round(a, 4), round(c, 6)] for s, a, c in v] for k, v in curves.items()},
    }, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, style in (("random", ":"), ("input-tokens", "-"), ("task+numbers", "-"), ("difficulty", "-"),
                            ("oracle", "--")):
            pts = curves[name]
            ax.plot([c for _, _, c in pts], [a for _, a, _ in pts], style, label=f"{name} (APGR {results[name]['apgr']:.2f})")
        ax.scatter([cost_weak, cost_strong], [acc_weak, acc_strong], color="black", zorder=3)
        ax.annotate("always weak", (cost_weak, acc_weak), textcoords="offset points", xytext=(5, -12))
        ax.annotate("always strong", (cost_strong, acc_strong), textcoords="offset points", xytext=(-80, 6))
        ax.set_xlabel(f"cost of the {n} test prompts (USD, tokenlane prices)")
        ax.set_ylabel("accuracy (GSM8K test half)")
        ax.set_title("Routing gpt-4-1106-preview vs Mixtral-8x7B (RouteLLM GSM8K)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
