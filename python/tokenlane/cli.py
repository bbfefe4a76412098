"""The ``tokenlane`` command line."""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"tokenlane: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
