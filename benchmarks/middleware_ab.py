#!/usr/bin/env python3
"""Middleware overhead of two builds, side by side: this tree and a baseline tree (say, main checked
out beside it), each with its own .venv and built module.

  rounds      benchmarks/middleware.py --skip-loopback from each tree in turn, alternating which
              goes first, so both see the same machine load; per round, the ratio of the added p50
  callgrind   instructions per request of the whole process with the middleware (the app, the
              middleware, tokenlane's threads): two runs of N0 and N0 + N requests under
              valgrind's callgrind, the difference divided by N (start-up and warm-up cancel out)

Run:  python benchmarks/middleware_ab.py --base ../wt-base [--rounds 5] [--requests 3000] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def python_of(tree: Path) -> str:
    exe = tree / ".venv" / "bin" / "python"
    if not exe.exists():
        sys.exit(f"{exe} is missing: make {tree}'s venv (python -m venv .venv; pip install -e '.[dev]')")
    return str(exe)


def one_round(tree: Path, requests: int, out: Path) -> dict:
    subprocess.run([python_of(tree), str(tree / "benchmarks" / "middleware.py"), "--requests", str(requests),
                    "--skip-loopback", "--out", str(out)], check=True, stdout=subprocess.DEVNULL, cwd=tree)
    run = json.loads(out.read_text())
    ip = run["in_process"]
    return {"without_p50": ip["without"]["p50_us"], "with_p50": ip["with"]["p50_us"], "added_p50": ip["added"]["p50_us"],
            "with_p99": ip["with"]["p99_us"], "cpu_with_p50": ip["cpu"]["with"]["p50_us"],
            "load": run["load_average"][0]}


def drive(tree: Path, requests: int) -> None:
    """The callgrind run's body: `requests` requests through the middleware, in-process, sequential,
    the event loop turning between them (as in middleware.py)."""
    sys.path.insert(0, str(tree / "benchmarks"))
    import middleware as mw  # the measured tree's benchmark, so both builds run the same loop

    body = mw.body_for(mw.make_prompt())
    with tempfile.TemporaryDirectory() as tmp:
        app = mw.build_app(True, os.path.join(tmp, "cg.db"))

        async def run() -> None:
            for _ in range(requests):
                assert await mw.call_asgi(app, body) == 200
                await asyncio.sleep(0)

        asyncio.run(run())


def instructions(tree: Path, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python_of(tree), __file__,
                        "--drive", str(requests), "--tree", str(tree)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
        text = Path(out).read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    assert m, "no totals in callgrind's output"
    return int(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the baseline tree (with its own .venv)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000, help="requests per variant per round")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per request")
    parser.add_argument("--callgrind-only", action="store_true")
    parser.add_argument("--warmup", type=int, default=100, help="callgrind: requests both runs share")
    parser.add_argument("--measured", type=int, default=500, help="callgrind: the requests counted")
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "middleware_ab.json")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        drive(args.tree, args.drive)
        return 0
    if args.base is None:
        parser.error("--base is required")
    trees = {"base": args.base.resolve(), "this": HERE}
    result: dict = {"trees": {k: str(v) for k, v in trees.items()}, "rounds": []}
    if not args.callgrind_only:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                order = ["base", "this"] if r % 2 == 0 else ["this", "base"]
                got = {name: one_round(trees[name], args.requests, Path(tmp) / f"{name}.json") for name in order}
                got["ratio"] = got["this"]["added_p50"] / got["base"]["added_p50"]
                result["rounds"].append(got)
                print(f"round {r + 1}: added p50 base {got['base']['added_p50']:.0f} µs, this "
                      f"{got['this']['added_p50']:.0f} µs ({got['ratio']:.2f}x); load average "
                      f"{got['base']['load']:.1f} / {got['this']['load']:.1f}", flush=True)
        rounds = result["rounds"]
        print("\n| build | without p50 | with p50 | added p50 | with p99 | own CPU p50 |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in ("base", "this"):
            med = {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
            print(f"| {name} | {med['without_p50']:.0f} µs | {med['with_p50']:.0f} µs | **{med['added_p50']:.0f} µs** | "
                  f"{med['with_p99'] / 1000:.1f} ms | {med['cpu_with_p50']:.0f} µs |")
        ratios = [r["ratio"] for r in rounds]
        loads = [r[n]["load"] for r in rounds for n in ("base", "this")]
        print(f"\nper-round ratio of added p50: {', '.join(f'{x:.2f}' for x in ratios)} (median "
              f"{statistics.median(ratios):.2f}); load average {min(loads):.1f}-{max(loads):.1f}")
    if args.callgrind or args.callgrind_only:
        result["instructions_per_request"] = {}
        for name, tree in trees.items():
            total = instructions(tree, args.warmup + args.measured) - instructions(tree, args.warmup)
            result["instructions_per_request"][name] = total / args.measured
            print(f"callgrind, {name}: {total / args.measured / 1e6:.3f} M instructions per request", flush=True)
        ipr = result["instructions_per_request"]
        print(f"change: {100 * (ipr['this'] / ipr['base'] - 1):+.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
