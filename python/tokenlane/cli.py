"""The ``tokenlane`` command line."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import sys
import time

from . import _vocab
from .chat import count_tokens_approx
from .encoding import encoding_for_model, get_encoding, list_encoding_names


def _count(args: argparse.Namespace) -> int:
    texts = []
    for path in args.files or ["-"]:
        if path == "-":
            texts.append((path, sys.stdin.read()))
        else:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                texts.append((path, f.read()))
    rows = []
    for path, text in texts:
        started = time.perf_counter()
        if args.encoding:
            encoding = get_encoding(args.encoding)
        else:
            try:
                encoding = encoding_for_model(args.model)
            except KeyError:
                approx = count_tokens_approx(text, args.model)
                rows.append({"file": path, "model": args.model, "tokens": approx.tokens, "exact": False,
                             "family": approx.family, "typical_error": approx.typical_error})
                continue
        tokens = encoding.count(text, disallowed_special=())
        rows.append({"file": path, "encoding": encoding.name, "tokens": tokens, "exact": True,
                     "bytes": len(text.encode("utf-8", "surrogatepass")),
                     "ms": round((time.perf_counter() - started) * 1e3, 3)})
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0]))
        return 0
    for row in rows:
        if row["exact"]:
            print(f"{row['tokens']} tokens  {row['file']}  ({row['encoding']}, exact, "
                  f"{row['bytes']} bytes in {row['ms']} ms)")
        else:
            print(f"~{row['tokens']} tokens  {row['file']}  (APPROXIMATE for {row['model']}: "
                  f"{row['family']} family, typically off by {row['typical_error']:.0%})")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    for name in args.encodings or ["o200k_base", "cl100k_base"]:
        print(f"{name}: {_vocab.vocab_dir_for(name)}")
        get_encoding(name)
    return 0


def _progress_bar(done: int, total: int) -> None:
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width)
    end = "\n" if done >= total else ""
    print(f"\rsimulating [{bar:<{width}}] {done:,}/{total:,} arrivals", end=end, file=sys.stderr, flush=True)


def _simulate(args: argparse.Namespace) -> int:
    from .sim import simulate

    policies = args.policy.split(",")
    rows = []
    for policy in policies:
        result = simulate(
            args.trace, policy=policy, model=args.model, max_concurrency=args.max_concurrency,
            budget_usd=args.budget_usd, budget_window=args.budget_window, tpm=args.tpm, rpm=args.rpm,
            estimator=args.estimator, seed=args.seed, max_queue=args.max_queue, max_wait_s=args.max_wait_s,
            progress=None if args.quiet else _progress_bar,
        )
        rows.append((policy, result))
        if args.plot:
            path = args.plot if len(policies) == 1 else args.plot.replace(".png", f"-{policy}.png")
            result.plot(path)
        if args.requests_out:
            path = args.requests_out if len(policies) == 1 else args.requests_out.replace(".csv", f"-{policy}.csv")
            result.requests.to_csv(path, index=False)
    if args.json:
        print(json.dumps({policy: r.summary for policy, r in rows}, indent=2))
        return 0
    keys = ["p50_latency_s", "p95_latency_s", "p99_latency_s", "p50_queue_s", "throughput_rps", "spend_usd",
            "budget_overshoot_usd", "sla_attainment", "sla_attainment_interactive", "rejected", "deferred",
            "unfinished", "jain_fairness", "max_service_gap_tokens", "token_utilization_efficiency",
            "cost_per_sla_met_usd"]
    print("| metric | " + " | ".join(p for p, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        cells = []
        for _, r in rows:
            v = r.summary.get(key)
            cells.append("-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.4g}"))
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


def _prices(args: argparse.Namespace) -> int:
    from .pricing import Pricing

    new = Pricing.load(args.file)
    old = Pricing.load(args.against) if args.against else Pricing.default()
    new_models, old_models = set(new.models()), set(old.models())
    changed = []
    for model in sorted(new_models & old_models):
        a, b = old.entry(model), new.entry(model)
        diffs = [f"{part}.{k}: {a[part].get(k)} -> {b[part].get(k)}" for part in ("per_mtok", "batch_per_mtok")
                 for k in sorted(set(a[part]) | set(b[part])) if a[part].get(k) != b[part].get(k)]
        if a["long_context"] != b["long_context"]:
            diffs.append(f"long-context tiers: {len(a['long_context'])} -> {len(b['long_context'])}")
        if diffs:
            changed.append((model, diffs))
    print(f"{args.file}: {len(new_models)} models priced, {new.skipped_entries} entries skipped (no per-token price)")
    print(f"vs {args.against or 'the table in use'}: {len(new_models - old_models)} new, "
          f"{len(old_models - new_models)} missing, {len(changed)} with different prices")
    for model, diffs in changed[: args.show]:
        print(f"  {model}: " + "; ".join(diffs) + " (USD per million tokens)")
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _report(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .pgsql import is_postgres_url
    from .reports import COLUMNS, document, parse_period, report, summary

    db = args.db or load_settings(args.config).db
    path = db[len("sqlite:///"):] if db.startswith("sqlite:///") else db
    if not is_postgres_url(db) and not os.path.exists(path):
        raise ValueError(f"no ledger at {path} (pass --db or set TOKENLANE_DB)")
    now = time.time()
    since, until = parse_period(args.since, now), parse_period(args.until, now)
    if args.format == "json":
        print(json.dumps(document(path, args.by, since=since, until=until, tenant=args.tenant), indent=2))
        return 0
    rows = report(path, args.by, since=since, until=until, tenant=args.tenant)
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=[args.by] + [k for k, _ in COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    header = [args.by] + [title for _, title in COLUMNS]
    _print_table(header, [[_cell(r[args.by])] + [_cell(r[k]) for k, _ in COLUMNS] for r in rows])
    budgets = summary(path, since=since, until=until, tenant=args.tenant)["budgets"]
    if budgets:  # spend in each budget's current window, against its limits
        print("\nbudgets")
        _print_table(["principal", "window", "USD", "tokens"], [
            [b["principal"], b["window"], _budget_cell(b["spent_usd"], b["limit_usd"]),
             _budget_cell(b["spent_tokens"], b["limit_tokens"], tokens=True)] for b in budgets])
    return 0


def _budget_cell(spent: float | int, limit: float | int | None, *, tokens: bool = False) -> str:
    """"$0.041 of $1" or "3,000 of 10,000 tokens" (no limit: the spend alone)."""
    from .pricing import PICO_PER_USD, usd_text

    if tokens:
        return f"{spent:,}" + ("" if limit is None else f" of {limit:,}") + " tokens"
    money = lambda usd: "$" + usd_text(round(usd * PICO_PER_USD))  # noqa: E731
    return money(spent) + ("" if limit is None else f" of {money(limit)}")


def _print_table(header: list[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenlane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count", help="count the tokens of files or stdin")
    count.add_argument("files", nargs="*", help="files to count ('-' or none: stdin)")
    group = count.add_mutually_exclusive_group()
    group.add_argument("--model", default="gpt-4o", help="model name (default gpt-4o)")
    group.add_argument("--encoding", choices=list_encoding_names(), help="encoding name instead of a model")
    count.add_argument("--json", action="store_true", help="print JSON")
    count.set_defaults(run=_count)
    fetch = sub.add_parser("fetch", help="download, verify and cache rank files for offline use")
    fetch.add_argument("encodings", nargs="*")
    fetch.set_defaults(run=_fetch)
    sim = sub.add_parser("simulate", help="replay a request trace through the scheduler (needs numpy, pandas)")
    sim.add_argument("trace", help="CSV (Azure LLM trace, multi-tenant, generic) or JSONL trace")
    sim.add_argument("--policy", default="default",
                     help="policy, or several separated by commas (fifo,cost_priority,deadline,fair,default)")
    sim.add_argument("--model", default="gpt-4o-mini", help="model that prices the requests (default gpt-4o-mini)")
    sim.add_argument("--max-concurrency", type=int, default=16, help="provider slots (default 16)")
    sim.add_argument("--budget-usd", type=float, help="budget per tenant")
    sim.add_argument("--budget-window", default="total", choices=["hour", "day", "month", "total"])
    sim.add_argument("--tpm", type=float, help="tokens per minute limit")
    sim.add_argument("--rpm", type=float, help="requests per minute limit")
    sim.add_argument("--max-queue", type=int, help="queue length limit")
    sim.add_argument("--max-wait-s", type=float, help="maximum queue wait")
    sim.add_argument("--estimator", choices=["oracle", "noisy", "trace"], help="output-length estimates "
                     "(default: the trace's est_output_tokens column, else noisy)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--json", action="store_true", help="print the summaries as JSON")
    sim.add_argument("--plot", help="write a PNG of latency CDFs and queue length (needs matplotlib)")
    sim.add_argument("--requests-out", help="write the per-request table as CSV")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(run=_simulate)
    prices = sub.add_parser("prices", help="check a price file (LiteLLM's JSON or a tokenlane config) before using it")
    prices.add_argument("file")
    prices.add_argument("--against", help="compare with this file instead of the table in use")
    prices.add_argument("--show", type=int, default=20, help="list at most this many changed prices")
    prices.set_defaults(run=_prices)
    rep = sub.add_parser("report", help="spend and KPIs from the ledger, grouped by day, model, route, tenant, "
                         "user, status or tag:<key>")
    rep.add_argument("--db", help="ledger file (default: the db setting, TOKENLANE_DB or tokenlane.db)")
    rep.add_argument("--config", help="tokenlane TOML config naming the ledger")
    rep.add_argument("--by", default="day", help="grouping: day, model, route, tenant, user, status or tag:<key>")
    rep.add_argument("--since", default="30d", help="start: 7d, 12h, 30m ago or a UTC date/time (default 30d)")
    rep.add_argument("--until", help="end (exclusive), same forms as --since")
    rep.add_argument("--tenant", help="only this tenant's requests")
    rep.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rep.set_defaults(run=_report)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, KeyError, ModuleNotFoundError, sqlite3.Error) as exc:
        print(f"tokenlane: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
