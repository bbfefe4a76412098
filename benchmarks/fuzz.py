#!/usr/bin/env python3
"""Long runs of the libFuzzer targets in tests/fuzz (the test command runs each for 10 s only).

Builds nothing: configure and build the targets first (clang, ASan + UBSan + coverage):

    CC=clang-14 CXX=clang++-14 cmake -S . -B build/fuzz -DTOKENLANE_FUZZ=ON -DTOKENLANE_INSTALL=OFF
    cmake --build build/fuzz
    python benchmarks/fuzz.py --seconds 600            # every target for 10 minutes, one after another
    python benchmarks/fuzz.py --seconds 60 --targets chat_fuzz,usage_fuzz

Each target starts from its seed corpus (tests/fuzz/corpus/<target>) plus what earlier runs found
(build/fuzz/long-corpus/<target>, never the repository). A crash stops that target and leaves its
input in build/fuzz/long-crashes/; make it a regression test and a seed. Prints a Markdown table
(runs, execs/s, coverage, corpus size, crashes) and writes JSON to benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["tokenizer_fuzz", "chat_fuzz", "pricing_fuzz", "usage_fuzz", "estimate_fuzz",
           "estimator_state_fuzz", "ledger_config_fuzz"]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "fuzz.json"


def run_target(build: Path, target: str, seconds: int) -> dict:
    binary = build / "tests" / "fuzz" / target
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: build with -DTOKENLANE_FUZZ=ON first (see --help)")
    work = build / "long-corpus" / target
    crashes = build / "long-crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), f"-max_total_time={seconds}", "-max_len=8192", "-timeout=30", "-rss_limit_mb=2048",
           "-print_final_stats=1", f"-artifact_prefix={crashes}/{target}-",
           str(work), str(REPO / "tests" / "fuzz" / "corpus" / target)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=os.environ)
    elapsed = time.monotonic() - started
    log = proc.stderr
    stat = lambda name: int(m.group(1)) if (m := re.search(rf"stat::{name}:\s+(\d+)", log)) else None  # noqa: E731
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", log)
    artifacts = re.findall(r"Test unit written to (\S+)", log)
    # crash-, leak-, timeout-, oom- are findings; slow-unit- only marks an input that took > 10 s.
    findings = [a for a in artifacts if "-slow-unit-" not in a]
    return {
        "target": target,
        "seconds": round(elapsed, 1),
        "runs": stat("number_of_executed_units"),
        "execs_per_s": stat("average_exec_per_sec"),
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus": int(cov[-1][2]) if cov else None,
        "crashes": len(findings),
        "slow_units": len(artifacts) - len(findings),
        "artifacts": artifacts,
        "exit_code": proc.returncode,
        "tail": log.strip().splitlines()[-40:] if proc.returncode else [],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=600, help="per target (default 600)")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--build", type=Path, default=REPO / "build" / "fuzz")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    os.environ.setdefault("TOKENLANE_VOCAB_DIR", str(REPO.parent / "shared" / "vocab"))
    rows = []
    print("| target | seconds | runs | execs/s | edges | corpus | crashes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target in args.targets.split(","):
        r = run_target(args.build, target, args.seconds)
        rows.append(r)
        print(f"| {r['target']} | {r['seconds']:.0f} | {r['runs']:,} | {r['execs_per_s']:,} | {r['coverage_edges']} "
              f"| {r['corpus']} | {r['crashes']} |", flush=True)
        for line in r["tail"]:
            print("    " + line)
    total_runs = sum(r["runs"] or 0 for r in rows)
    print(f"\n{len(rows)} targets, {sum(r['seconds'] for r in rows) / 60:.1f} min, {total_runs:,} runs, "
          f"{sum(r['crashes'] for r in rows)} crashes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                    "seconds_per_target": args.seconds, "targets": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
