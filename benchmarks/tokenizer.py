#!/usr/bin/env python3
"""Tokenizer throughput: tokenlane vs. tiktoken and tiktoken-compatible peers.

Encodes and counts the same real-world texts, in one process, with

* tokenlane (this repository; skipped with a note if it is not importable),
* tiktoken, the reference, and
* every installed peer that claims tiktoken-identical ids: riptoken,
  toktok-rs, rs-bpe, bpe-openai, tokendagger, fastokens, kitoken.

Before a library is timed, its output on every document is compared with
tiktoken's. A library that disagrees is still timed, but flagged
"not exact (N mismatching docs)".

Run it with::

    python benchmarks/tokenizer.py            # full run: ~2 MB per category, best of 3
    python benchmarks/tokenizer.py --quick    # smoke run: small corpus, 1 repetition
    python benchmarks/tokenizer.py --libs tokenlane,tiktoken --out tok.json
    python benchmarks/tokenizer.py --categories english,patho   # prose and the pathological inputs

Corpus: real text read at run time from this machine; nothing is downloaded
and no third-party text is stored in the repository.

  english       /usr/share/common-licenses/*, pydoc_data.topics (the Python
                language reference), /usr/share/doc/**/{README*,*.md,*.txt}[.gz]
  code          the CPython standard library, <stdlib>/*.py
  german, russian, chinese, japanese
                translated messages (msgstr) of the gettext catalogs
                /usr/share/locale/<lang>/LC_MESSAGES/*.mo; chinese and japanese
                add CPython's <stdlib>/test/cjkencodings/*-utf8.txt
  pathological  1 MiB each of "x", of spaces, of random digits, and of random
                bytes decoded as Latin-1 (seeded, generated in memory)

Documents larger than 64 KiB are split at line boundaries; a category that
has too little text repeats its documents to reach the target size.

Measured for cl100k_base and o200k_base, in MB/s of UTF-8 input (MB = 10**6 B):

  encode        one thread, ``encode(doc)`` for every document
  count         one thread, the library's native count (tiktoken: ``len(encode(doc))``)
  encode_batch  all cores, one call over the whole document list
  count_batch   all cores (tiktoken: ``len`` of each ``encode_batch`` result)

Every figure is the best of --reps repetitions; libraries are interleaved
within each repetition so that a noisy machine hurts all of them alike.
--clock cpu times the single-thread modes by this process's CPU time instead
of the wall clock: on a machine shared with other jobs it is much steadier
(a library's own extra threads are then charged to it, and "†" cannot show).
"†" marks a single-thread figure whose CPU time exceeded its wall time by
more than 25% (the library used extra threads on its own).

Pathological inputs are timed on growing prefixes (16 KiB, 64 KiB, 256 KiB,
1 MiB). A library stops growing when its next step, extrapolated as
quadratic, would exceed the per-call budget (--budget); the table says which
size was used. The report also gives each library's per-byte time on each
pathological input relative to English prose (tokenlane's goal: <= 3x).

Rank files: tiktoken and tokenlane read <vocab-dir>/<name>.tiktoken
(--vocab-dir, default $TOKENLANE_VOCAB_DIR or ../shared/vocab beside the repo); tiktoken is
pointed at them through a temporary TIKTOKEN_CACHE_DIR, so nothing is fetched.

Results are printed as Markdown and written as JSON to
benchmarks/results/tokenizer.json (or --out).
"""

from __future__ import annotations

import argparse
import array
import atexit
import gc
import gettext
import glob
import gzip
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "tokenizer.json"
DEFAULT_VOCAB_DIR = os.environ.get("TOKENLANE_VOCAB_DIR", str(REPO.parent / "shared" / "vocab"))

ENCODINGS = ("cl100k_base", "o200k_base")
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
SPECIAL_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>",
                  "<|fim_suffix|>", "<|endofprompt|>")

MB = 1e6
KiB = 1024
MiB = 1024 * KiB
MAX_DOC_BYTES = 64 * KiB
PATHOLOGICAL_STEPS = (16 * KiB, 64 * KiB, 256 * KiB, MiB)

SINGLE_MODES = ("encode", "count")
BATCH_MODES = ("encode_batch", "count_batch")
MODES = SINGLE_MODES + BATCH_MODES


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------

@dataclass
class Category:
    name: str
    docs: list[str]
    sources: list[str]
    pathological: bool = False

    @property
    def nbytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.docs)


def _read_text(path: Path) -> Optional[str]:
    """A file's text (gunzipped if needed), or None if it is not UTF-8."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def _split_doc(text: str, max_bytes: int = MAX_DOC_BYTES) -> list[str]:
    """Split text at line boundaries into pieces of at most ~max_bytes."""
    if len(text.encode("utf-8")) <= max_bytes:
        return [text]
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if current and size + n > max_bytes:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        pieces.append("".join(current))
    return pieces


def _take(docs: list[str], target_bytes: int, seed: int, first: list[str] = ()) -> list[str]:
    """Documents totalling ~target_bytes: all of `first` in order, then `docs`
    shuffled; cycles through them again if there is too little text."""
    def usable(texts):
        return [d for doc in texts for d in _split_doc(doc)
                if d.strip() and not any(s in d for s in SPECIAL_TOKENS)]
    rest = usable(docs)
    random.Random(seed).shuffle(rest)
    pool = usable(first) + rest
    out, total = [], 0
    while pool and total < target_bytes:
        doc = pool[len(out) % len(pool)]
        out.append(doc)
        total += len(doc.encode("utf-8"))
    return out


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _files(pattern: str) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]


def _english(target: int) -> Category:
    sources, priority, rest = [], [], []
    licenses = _files("/usr/share/common-licenses/*")
    priority += [t for t in map(_read_text, licenses) if t]
    if licenses:
        sources.append(f"/usr/share/common-licenses/* ({len(licenses)} files)")
    try:
        from pydoc_data.topics import topics
        priority += list(topics.values())
        sources.append(f"pydoc_data.topics ({len(topics)} topics of the Python reference)")
    except ImportError:
        pass
    doc_files = [p for p in _files("/usr/share/doc/**/*")
                 if p.name.startswith("README") or p.name.endswith((".md", ".txt", ".md.gz", ".txt.gz"))]
    rest += [t for t in map(_read_text, doc_files) if t]
    if doc_files:
        sources.append(f"/usr/share/doc/**/{{README*,*.md,*.txt}}[.gz] ({len(doc_files)} files)")
    return Category("english", _take(rest, target, 1, first=priority), sources)


def _code(target: int) -> Category:
    files = _files(str(_stdlib() / "*.py"))
    docs = [t for t in map(_read_text, files) if t]
    return Category("code", _take(docs, target, 2), [f"{_stdlib()}/*.py ({len(files)} files)"])


def _mo_messages(path: Path) -> Optional[str]:
    """All translated messages of a gettext catalog, one per line."""
    try:
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr
    except Exception:  # malformed or non-UTF-8 catalogs are simply skipped
        return None
    return "\n".join(msg for key, msg in catalog.items() if key and msg)


def _language(name: str, lang: str, cjk: tuple[str, ...], target: int, seed: int) -> Category:
    mo_files = _files(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")
    docs = [t for t in map(_mo_messages, mo_files) if t]
    sources = [f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo ({len(docs)} catalogs)"]
    cjk_dir = _stdlib() / "test" / "cjkencodings"
    cjk_files = [cjk_dir / f"{c}-utf8.txt" for c in cjk if (cjk_dir / f"{c}-utf8.txt").is_file()]
    if cjk_files:
        docs += [t for t in map(_read_text, cjk_files) if t]
        sources.append(f"{cjk_dir}/{{{','.join(cjk)}}}-utf8.txt")
    return Category(name, _take(docs, target, seed), sources)


def _pathological(size: int) -> list[Category]:
    rng = random.Random(1234)
    texts = {
        "x": "x" * size,
        "spaces": " " * size,
        "digits": "".join(rng.choices("0123456789", k=size)),
        "latin1-random": rng.randbytes(size).decode("latin-1"),
    }
    return [Category(f"patho:{k}", [v], [f"generated, {size // KiB} KiB characters"], pathological=True)
            for k, v in texts.items()]


def build_corpus(text_bytes: int, patho_chars: int) -> list[Category]:
    categories = [
        _english(text_bytes),
        _code(text_bytes),
        _language("german", "de", (), text_bytes, 3),
        _language("russian", "ru", (), text_bytes, 4),
        _language("chinese", "zh_CN", ("gb2312", "gbk", "gb18030", "hz", "big5", "big5hkscs"), text_bytes, 5),
        _language("japanese", "ja", ("euc_jp", "shift_jis", "iso2022_jp", "euc_jisx0213", "shift_jisx0213"),
                  text_bytes, 6),
    ]
    for cat in categories:
        if not cat.docs:
            print(f"note: no text found for category {cat.name!r}; skipped", file=sys.stderr)
    return [c for c in categories if c.docs] + _pathological(patho_chars)


def dump_corpus(corpus: list[Category], directory: Path) -> None:
    """One file per category, its documents in UTF-8 separated by NUL bytes (the input of the C++
    core's microbenchmark, benchmarks/tokenizer_core_bench.cpp)."""
    directory.mkdir(parents=True, exist_ok=True)
    for cat in corpus:
        path = directory / (cat.name.replace(":", "-") + ".txt")
        path.write_bytes(b"\0".join(d.encode("utf-8", "surrogatepass") for d in cat.docs))
        print(f"wrote {path}", file=sys.stderr)


# --------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------

@dataclass
class Lib:
    """One tokenizer, bound to one encoding, behind a uniform interface."""
    name: str
    encode: Callable[[str], list[int]]
    count: Optional[Callable[[str], int]] = None
    encode_batch: Optional[Callable[[list[str]], list[list[int]]]] = None
    count_batch: Optional[Callable[[list[str]], list[int]]] = None
    encoding_name: str = ""

    def mode(self, mode: str) -> Optional[Callable]:
        return getattr(self, mode)


@dataclass
class Context:
    threads: int
    vocab_dir: Path
    _specs: dict[str, dict] = field(default_factory=dict)

    def spec(self, encoding: str) -> dict[str, Any]:
        """tiktoken's definition of an encoding: pat_str, mergeable_ranks, special_tokens."""
        if encoding not in self._specs:
            from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS
            self._specs = {encoding: ENCODING_CONSTRUCTORS[encoding]()}  # keep one at a time
        return self._specs[encoding]

    def rank_file(self, encoding: str) -> str:
        return str(self.vocab_dir / f"{encoding}.tiktoken")


def _load_tokenlane(enc: str, ctx: Context) -> Lib:
    try:
        import tokenlane
    except ImportError:
        sys.path.insert(0, str(REPO / "python"))  # an in-tree build
        import tokenlane
    e = tokenlane.get_encoding(enc)
    n = ctx.threads
    return Lib("tokenlane", e.encode, encoding_name=enc,
               count=getattr(e, "count", None),
               encode_batch=lambda docs: e.encode_batch(docs, num_threads=n),
               count_batch=(lambda docs: e.count_batch(docs, num_threads=n))
               if hasattr(e, "count_batch") else None)


def _load_tiktoken(enc: str, ctx: Context) -> Lib:
    import tiktoken
    e = tiktoken.get_encoding(enc)
    n = ctx.threads
    return Lib("tiktoken", e.encode,
               count=lambda text: len(e.encode(text)),
               encode_batch=lambda docs: e.encode_batch(docs, num_threads=n),
               count_batch=lambda docs: [len(ids) for ids in e.encode_batch(docs, num_threads=n)])


def _load_riptoken(enc: str, ctx: Context) -> Lib:
    import riptoken
    e = riptoken.get_encoding(enc)
    return Lib("riptoken", e.encode, encode_batch=e.encode_batch)


def _load_toktok(enc: str, ctx: Context) -> Lib:
    import toktok
    t = toktok._encoding(enc)  # the full tokenizer behind toktok.batch_count (docs/PYTHON.md)
    n = ctx.threads

    def encode_batch(docs: list[str]) -> list[list[int]]:
        # Returns one flat uint32 buffer plus int64 offsets; split into lists
        # so the output matches everyone else's.
        ids, offsets = t.encode_batch(docs, n)
        ids, offsets = memoryview(ids).cast("I"), memoryview(offsets).cast("q")
        return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(docs))]

    return Lib("toktok-rs", t.encode, count=t.count, encode_batch=encode_batch,
               count_batch=lambda docs: t.count_batch(docs, n))


def _load_rs_bpe(enc: str, ctx: Context) -> Lib:
    from rs_bpe.bpe import openai
    t = getattr(openai, enc)()
    options = openai.ParallelOptions(min_batch_size=1, chunk_size=1, max_threads=ctx.threads)
    return Lib("rs-bpe", t.encode, count=t.count,
               encode_batch=lambda docs: t.encode_batch_parallel(docs, options)[0])


def _load_bpe_openai(enc: str, ctx: Context) -> Lib:
    import bpe_openai
    from bpe_openai import _bindings
    # The Rust tokenizer behind bpe_openai.Encoding: the wrapper adds Python
    # bookkeeping and refuses inputs of >= 1M characters.
    core = _bindings.tokenizer_for_encoding(enc)
    wrapper = bpe_openai.get_encoding(enc)
    n = ctx.threads
    return Lib("bpe-openai", core.encode, count=core.count,
               encode_batch=lambda docs: wrapper.encode_ordinary_batch(docs, num_threads=n))


def _load_tokendagger(enc: str, ctx: Context) -> Lib:
    import tokendagger
    spec = ctx.spec(enc)
    e = tokendagger.Encoding(enc, pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                             special_tokens=spec["special_tokens"])
    n = ctx.threads
    return Lib("tokendagger", e.encode, encode_batch=lambda docs: e.encode_batch(docs, num_threads=n))


def _load_fastokens(enc: str, ctx: Context) -> Lib:
    import fastokens
    spec = ctx.spec(enc)
    t = fastokens.Tokenizer.from_tiktoken(ctx.rank_file(enc), pattern=spec["pat_str"],
                                          special_tokens=spec["special_tokens"])
    return Lib("fastokens", lambda text: t.encode_ordinary(text).ids,
               encode_batch=lambda docs: [e.ids for e in t.encode_batch(docs)])


def _load_kitoken(enc: str, ctx: Context) -> Lib:
    import kitoken
    t = kitoken.Kitoken.from_tiktoken_file(ctx.rank_file(enc))
    return Lib("kitoken", t.encode, encode_batch=t.encode_all)


@dataclass
class LibSpec:
    name: str           # also the PyPI distribution name
    module: str
    load: Callable[[str, Context], Lib]
    api: str            # how it is driven here


LIBRARIES = [
    LibSpec("tokenlane", "tokenlane", _load_tokenlane,
            "get_encoding(); encode, count, encode_batch/count_batch(num_threads=N)"),
    LibSpec("tiktoken", "tiktoken", _load_tiktoken,
            "get_encoding(); encode, encode_batch(num_threads=N); count = len(encode)"),
    LibSpec("riptoken", "riptoken", _load_riptoken,
            "get_encoding() (wraps tiktoken's vocab); encode; encode_batch on rayon's global pool "
            "(RAYON_NUM_THREADS, default all cores); no count"),
    LibSpec("toktok-rs", "toktok", _load_toktok,
            "toktok._encoding(name), vocab embedded; encode, count, count_batch(threads=N); "
            "encode_batch(threads=N) returns flat uint32 buffer + offsets (timed incl. split into lists)"),
    LibSpec("rs-bpe", "rs_bpe", _load_rs_bpe,
            "rs_bpe.bpe.openai.cl100k_base()/o200k_base(), vocab embedded; encode, count; "
            "encode_batch_parallel(docs, ParallelOptions(max_threads=N))"),
    LibSpec("bpe-openai", "bpe_openai", _load_bpe_openai,
            "bpe_openai._bindings.tokenizer_for_encoding(name) for encode/count (vocab embedded); "
            "get_encoding(name).encode_ordinary_batch(num_threads=N) (Python thread pool)"),
    LibSpec("tokendagger", "tokendagger", _load_tokendagger,
            "tokendagger.Encoding(name, pat_str, mergeable_ranks, special_tokens) from tiktoken_ext; "
            "encode; encode_batch(num_threads=N) (Python thread pool); no count"),
    LibSpec("fastokens", "fastokens", _load_fastokens,
            "Tokenizer.from_tiktoken(path, pattern, special_tokens); encode_ordinary(text).ids; "
            "encode_batch (library-managed threads); no count"),
    LibSpec("kitoken", "kitoken", _load_kitoken,
            "Kitoken.from_tiktoken_file(path) (split pattern inferred); encode; encode_all "
            "(library-managed threads); no count"),
]


def _version(spec: LibSpec) -> str:
    try:
        return metadata.version(spec.name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(spec.module)
        return getattr(module, "__version__", "?")


def point_tiktoken_at(vocab_dir: Path) -> None:
    """Make tiktoken load rank files from vocab_dir instead of the network."""
    cache = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    for enc in ENCODINGS:
        src = vocab_dir / f"{enc}.tiktoken"
        if src.is_file():
            key = hashlib.sha1(TIKTOKEN_URL.format(enc).encode()).hexdigest()
            shutil.copyfile(src, cache / key)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

# Which clock times the single-thread modes: "wall" (default) or "cpu" (this process's CPU time,
# which a machine shared with other jobs disturbs far less; batch modes always use the wall clock).
CLOCK = "wall"


@dataclass
class Timing:
    wall: float = math.inf   # the time the figure is computed from (CPU time under --clock cpu)
    cpu: float = 0.0

    def update(self, wall: float, cpu: float, mode: str = "encode") -> None:
        if CLOCK == "cpu" and mode in SINGLE_MODES:
            wall = cpu
        if wall < self.wall:
            self.wall, self.cpu = wall, cpu


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call, with the GC paused."""
    gc.collect()
    gc.disable()
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        gc.enable()
    return t1 - t0, c1 - c0, out


def _job(lib: Lib, mode: str, docs: list[str]) -> Optional[Callable[[], list]]:
    fn = lib.mode(mode)
    if fn is None:
        return None
    if mode in SINGLE_MODES:
        return lambda: [fn(d) for d in docs]
    return lambda: fn(docs)


def _mismatches(mode: str, out: list, ref: list[array.array]) -> int:
    if len(out) != len(ref):
        return len(ref)
    if mode.startswith("count"):
        return sum(int(c) != len(r) for c, r in zip(out, ref))
    return sum(array.array("I", ids) != r for ids, r in zip(out, ref))


@dataclass
class Cell:
    """Best timing of one (encoding, category, library, mode)."""
    timing: Timing = field(default_factory=Timing)
    mismatching_docs: int = 0
    size_chars: Optional[int] = None   # pathological: prefix length actually used
    capped: bool = False
    error: Optional[str] = None


def bench_text(libs: list[Lib], cat: Category, reps: int, refs: list[array.array]) -> dict:
    cells: dict[tuple[str, str], Cell] = {}
    # Warm-up and exactness check (untimed).
    for lib in libs:
        for mode in MODES:
            job = _job(lib, mode, cat.docs)
            if job is None:
                continue
            cell = cells[lib.name, mode] = Cell()
            try:
                cell.mismatching_docs = _mismatches(mode, list(job()), refs)
            except Exception as exc:  # a library failing is a result, not a crash
                cell.error = f"{type(exc).__name__}: {exc}"[:200]
    for rep in range(reps):
        shift = rep % len(libs)
        for lib in libs[shift:] + libs[:shift]:
            for mode in MODES:
                cell = cells.get((lib.name, mode))
                if cell is None or cell.error:
                    continue
                try:
                    wall, cpu, _ = timed(_job(lib, mode, cat.docs))
                    cell.timing.update(wall, cpu, mode)
                except Exception as exc:
                    cell.error = f"{type(exc).__name__}: {exc}"[:200]
    return cells


# Inputs that abort the whole process in a peer (a Rust panic cannot be caught): not run, reported.
KNOWN_CRASHES = {
    ("kitoken", "patho:spaces"): "aborts the process (Rust panic: regex stack overflow) on 1 MB of spaces",
}


def bench_pathological(libs: list[Lib], cat: Category, reps: int, steps: list[int],
                       budget: float) -> dict:
    """Time encode/count on growing prefixes until a step would blow the budget."""
    text = cat.docs[0]
    reference: dict[int, array.array] = {}  # tiktoken's ids per prefix length
    cells: dict[tuple[str, str], Cell] = {}
    for lib in libs:  # tiktoken comes before every peer
        for mode in SINGLE_MODES:
            fn = lib.mode(mode)
            if fn is None:
                continue
            cell = cells[lib.name, mode] = Cell()
            if (lib.name, cat.name) in KNOWN_CRASHES:
                cell.error = KNOWN_CRASHES[lib.name, cat.name]
                continue
            try:
                fn(text[:KiB])  # warm-up: some libraries build lazy state on first use
                for size in steps:
                    if cell.size_chars and cell.timing.wall * (size / cell.size_chars) ** 2 > budget:
                        cell.capped = True
                        break
                    piece = text[:size]
                    wall, cpu, out = timed(lambda: fn(piece))
                    cell.size_chars, cell.timing = size, Timing()
                    cell.timing.update(wall, cpu, mode)
                    if lib.name == "tiktoken" and mode == "encode":
                        reference[size] = array.array("I", out)
                    elif size in reference:
                        cell.mismatching_docs = _mismatches(mode, [out], [reference[size]])
            except Exception as exc:
                cell.error = f"{type(exc).__name__}: {exc}"[:200]
    for rep in range(1, reps):
        shift = rep % len(libs)
        for lib in libs[shift:] + libs[:shift]:
            for mode in SINGLE_MODES:
                cell = cells.get((lib.name, mode))
                if cell is None or cell.error or cell.timing.wall > budget / 2:
                    continue
                piece = text[:cell.size_chars]
                fn = lib.mode(mode)
                try:
                    wall, cpu, _ = timed(lambda: fn(piece))
                    cell.timing.update(wall, cpu, mode)
                except Exception as exc:
                    cell.error = f"{type(exc).__name__}: {exc}"[:200]
    return cells


def bench_scaling(lib: Lib, docs: list[str], threads: int, reps: int) -> list[dict]:
    """tokenlane's batch modes on 1..threads threads (wall clock, best of reps): how they scale."""
    import tokenlane
    enc = tokenlane.get_encoding(lib.encoding_name)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    rows = []
    for mode in BATCH_MODES:
        fn = getattr(enc, mode)
        for n in sorted({1, threads}):
            fn(docs, num_threads=n)  # warm-up: every thread's piece cache
            best = math.inf
            for _ in range(reps):
                wall, _, _ = timed(lambda: fn(docs, num_threads=n))
                best = min(best, wall)
            rows.append({"mode": mode, "threads": n, "mb_per_s": nbytes / MB / best})
    return rows


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def load_libs(encoding: str, specs: list[LibSpec], ctx: Context, status: dict) -> list[Lib]:
    libs = []
    for spec in specs:
        try:
            libs.append(spec.load(encoding, ctx))
            status[spec.name].setdefault("status", "ok")
            status[spec.name]["version"] = _version(spec)
        except ImportError as exc:
            status[spec.name]["status"] = f"not importable ({exc})"
        except Exception as exc:
            status[spec.name]["status"] = f"failed to load {encoding}: {type(exc).__name__}: {exc}"[:300]
    return libs


def run(args: argparse.Namespace) -> dict:
    vocab_dir = Path(args.vocab_dir)
    os.environ.setdefault("TOKENLANE_VOCAB_DIR", str(vocab_dir))
    point_tiktoken_at(vocab_dir)
    ctx = Context(threads=args.threads, vocab_dir=vocab_dir)

    wanted = set(args.libs.split(",")) if args.libs else None
    specs = [s for s in LIBRARIES if wanted is None or s.name in wanted or s.name == "tiktoken"]
    status = {s.name: {"api": s.api} for s in specs}

    text_bytes = int(args.mb * MB)
    patho_chars = args.patho_kib * KiB
    steps = sorted({s for s in PATHOLOGICAL_STEPS if s < patho_chars} | {patho_chars})
    print(f"building corpus (~{args.mb:g} MB per text category, {args.patho_kib} KiB pathological) ...",
          file=sys.stderr)
    corpus = build_corpus(text_bytes, patho_chars)
    if args.categories:
        wanted_cats = set(args.categories.split(","))
        corpus = [c for c in corpus if c.name in wanted_cats or c.name.removeprefix("patho:") in wanted_cats
                  or (c.pathological and "patho" in wanted_cats)]
    if args.dump_corpus:
        dump_corpus(corpus, args.dump_corpus)

    rows: list[dict] = []
    scaling: list[dict] = []
    load_before = os.getloadavg()
    for encoding in args.encodings.split(","):
        libs = load_libs(encoding, specs, ctx, status)
        names = [lib.name for lib in libs]
        if "tiktoken" not in names:
            sys.exit("tiktoken (the reference) could not be loaded: " + status["tiktoken"]["status"])
        reference_lib = libs[names.index("tiktoken")]
        for cat in corpus:
            print(f"[{encoding}] {cat.name}: {len(cat.docs)} docs, {cat.nbytes / MB:.2f} MB",
                  file=sys.stderr)
            if cat.pathological:
                # tiktoken first: its ids are the reference for every prefix.
                ordered = [reference_lib] + [lib for lib in libs if lib is not reference_lib]
                cells = bench_pathological(ordered, cat, args.reps, steps, args.budget)
            else:
                refs = [array.array("I", reference_lib.encode(d)) for d in cat.docs]
                cells = bench_text(libs, cat, args.reps, refs)
            for (lib_name, mode), cell in cells.items():
                docs = cat.docs if not cat.pathological else [cat.docs[0][:cell.size_chars or 0]]
                nbytes = sum(len(d.encode("utf-8")) for d in docs)
                ok = cell.error is None and cell.timing.wall < math.inf
                rows.append({
                    "encoding": encoding, "category": cat.name, "library": lib_name, "mode": mode,
                    "mb_per_s": nbytes / MB / cell.timing.wall if ok and cell.timing.wall > 0 else None,
                    "seconds": cell.timing.wall if ok else None,
                    "cpu_per_wall": cell.timing.cpu / cell.timing.wall if ok and cell.timing.wall > 0 else None,
                    "bytes": nbytes, "docs": len(docs),
                    "threads": args.threads if mode in BATCH_MODES else 1,
                    "size_chars": cell.size_chars, "capped": cell.capped,
                    "mismatching_docs": cell.mismatching_docs, "error": cell.error,
                })
        text_docs = [d for cat in corpus if not cat.pathological for d in cat.docs]
        if "tokenlane" in names and text_docs:
            tl = libs[names.index("tokenlane")]
            for row in bench_scaling(tl, text_docs, args.threads, args.reps):
                scaling.append({"encoding": encoding, **row})
        del libs, reference_lib

    return {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": args.threads, "reps": args.reps,
            "quick": args.quick, "budget_s": args.budget, "mb_unit_bytes": int(MB), "clock": CLOCK,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        },
        "scaling": scaling,
        "libraries": status,
        "corpus": {c.name: {"docs": len(c.docs), "bytes": c.nbytes, "sources": c.sources} for c in corpus},
        "results": rows,
    }


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["encoding"], r["category"], r["library"], r["mode"]): r for r in rows}


def _exactness(rows: list[dict], encoding: str, lib: str) -> str:
    bad = {m: sum(r["mismatching_docs"] for r in rows
                  if (r["encoding"], r["library"], r["mode"]) == (encoding, lib, m)) for m in MODES}
    if bad["encode"]:
        return f"not exact ({bad['encode']} mismatching docs)"
    others = [f"{m} not exact ({n} mismatching docs)" for m, n in bad.items() if n]
    return "; ".join(["encode exact"] + others) if others else "exact"


def _size(chars: Optional[int]) -> str:
    if not chars:
        return "-"
    return f"{chars // MiB} MiB" if chars % MiB == 0 else f"{chars // KiB} KiB"


def _cell(r: Optional[dict], base: Optional[dict], single: bool) -> str:
    if r is None:
        return "n/a"
    if r["error"]:
        return "error"
    text = f"{r['mb_per_s']:.1f}"
    if base and base is not r and base["mb_per_s"]:
        text += f" ({r['mb_per_s'] / base['mb_per_s']:.2f}×)"
    if r["mismatching_docs"]:
        text += " ⚠"
    if single and r["cpu_per_wall"] and r["cpu_per_wall"] > 1.25:
        text += " †"
    return text


def report(results: dict) -> str:
    rows, meta, libs = results["results"], results["meta"], results["libraries"]
    idx = _index(rows)
    encodings = list(dict.fromkeys(r["encoding"] for r in rows))
    categories = list(results["corpus"])
    text_cats = [c for c in categories if not c.startswith("patho:")]
    patho_cats = [c for c in categories if c.startswith("patho:")]
    names = [n for n in libs if libs[n].get("status") == "ok"]
    n = meta["threads"]
    out = [f"# Tokenizer throughput (MB/s, 1 MB = 10^6 bytes of UTF-8; best of {meta['reps']})", "",
           f"Python {meta['python']}, {meta['platform']}, {meta['cpu_count']} CPUs, batch threads = {n}"
           + (", QUICK run" if meta["quick"] else "")
           + (", single-thread modes timed by CPU time (--clock cpu)" if meta.get("clock") == "cpu" else "")
           + (", load average (1/5/15 min) %s before, %s after" % (
               "/".join(f"{x:.1f}" for x in meta["loadavg_before"]),
               "/".join(f"{x:.1f}" for x in meta["loadavg_after"])) if "loadavg_before" in meta else ""), "",
           "## Libraries", "", "| library | version | status | " + " | ".join(encodings) + " | API used |",
           "|---|---|---|" + "---|" * len(encodings) + "---|"]
    for name, info in libs.items():
        exact = [(_exactness(rows, e, name) if info.get("status") == "ok" else "-") for e in encodings]
        out.append(f"| {name} | {info.get('version', '-')} | {info.get('status', '-')} | "
                   + " | ".join(exact) + f" | {info['api']} |")
    out += ["", "## Corpus", "", "| category | docs | MB | sources |", "|---|---|---|---|"]
    for c, info in results["corpus"].items():
        out.append(f"| {c} | {info['docs']} | {info['bytes'] / MB:.2f} | {'; '.join(info['sources'])} |")

    legend = ("(×) = ratio to tiktoken; ⚠ = output differs from tiktoken; "
              "† = used >1.25 CPU-seconds per second in a single-thread mode; n/a = no such API")
    for enc in encodings:
        out += ["", f"## {enc}: text", "", legend, "",
                f"| category | library | encode | count | encode_batch ({n} thr) | count_batch ({n} thr) |",
                "|---|---|---|---|---|---|"]
        for c in text_cats:
            for name in names:
                if not any((enc, c, name, m) in idx for m in MODES):
                    continue
                cells = [_cell(idx.get((enc, c, name, m)), idx.get((enc, c, "tiktoken", m)),
                               m in SINGLE_MODES) for m in MODES]
                out.append(f"| {c} | {name} | " + " | ".join(cells) + " |")
        out += ["", f"Geometric mean of the ratio to tiktoken over the text categories ({enc}):", "",
                "| library | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
        for name in names:
            gms = []
            for m in MODES:
                ratios = [idx[enc, c, name, m]["mb_per_s"] / idx[enc, c, "tiktoken", m]["mb_per_s"]
                          for c in text_cats
                          if idx.get((enc, c, name, m), {}).get("mb_per_s")
                          and idx.get((enc, c, "tiktoken", m), {}).get("mb_per_s")]
                gms.append(f"{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}×" if ratios else "n/a")
            out.append(f"| {name} | " + " | ".join(gms) + " |")

    out += ["", "## Pathological inputs", "",
            "Single-thread. 'vs english' = per-byte time on this input ÷ per-byte time on english prose "
            "(same library, encoding and mode). Sizes below the target were capped by the "
            f"quadratic-time guard (per-call budget {meta['budget_s']:g} s).", "",
            "| encoding | input | library | encode size | encode MB/s | vs english | count MB/s | vs english |",
            "|---|---|---|---|---|---|---|---|"]
    goals = []
    for enc in encodings:
        for c in patho_cats:
            for name in names:
                cols = []
                for m in SINGLE_MODES:
                    r, base = idx.get((enc, c, name, m)), idx.get((enc, c, "tiktoken", m))
                    eng = idx.get((enc, "english", name, m))
                    enc_size = idx.get((enc, c, name, "encode"), {}).get("size_chars")
                    note = f" (at {_size(r['size_chars'])})" if r and r["size_chars"] != enc_size else ""
                    cols.append(_cell(r, base, True) + note)
                    if r and r["mb_per_s"] and eng and eng["mb_per_s"]:
                        slow = eng["mb_per_s"] / r["mb_per_s"]
                        cols.append(f"{slow:.2f}×")
                        if name == "tokenlane":
                            goals.append(f"- tokenlane {enc} {m} on {c[6:]} ({_size(r['size_chars'])}): "
                                         f"{slow:.2f}× english per-byte time — "
                                         + ("OK" if slow <= 3 else "**over the 3× goal**"))
                    else:
                        cols.append("-")
                r = idx.get((enc, c, name, "encode"))
                if r is None:
                    continue
                size = _size(r["size_chars"]) + (" (capped)" if r["capped"] else "")
                out.append(f"| {enc} | {c[6:]} | {name} | {size} | " + " | ".join(cols) + " |")
    if results.get("scaling"):
        out += ["", "## tokenlane batch scaling", "",
                "All text categories in one batch call, wall clock (so other load on the machine counts), "
                "GIL released; speed-up = MB/s on N threads ÷ MB/s on 1.", "",
                "| encoding | mode | threads | MB/s | speed-up |", "|---|---|---|---|---|"]
        one = {(r["encoding"], r["mode"]): r["mb_per_s"] for r in results["scaling"] if r["threads"] == 1}
        for r in results["scaling"]:
            base = one.get((r["encoding"], r["mode"]))
            out.append(f"| {r['encoding']} | {r['mode']} | {r['threads']} | {r['mb_per_s']:.1f} | "
                       + (f"{r['mb_per_s'] / base:.2f}×" if base else "-") + " |")
    if goals:
        out += ["", "tokenlane goal (pathological per-byte time ≤ 3× english prose):", ""] + goals
    elif "tokenlane" in libs:
        out += ["", f"tokenlane: {libs['tokenlane'].get('status')}"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small corpus, 1 repetition (smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--reps", type=int, help="repetitions, best is kept (default 3; 1 with --quick)")
    p.add_argument("--mb", type=float, help="MB of text per category (default 2; 0.2 with --quick)")
    p.add_argument("--patho-kib", type=int, help="pathological input size in KiB (default 1024; 128 with --quick)")
    p.add_argument("--budget", type=float, help="max seconds per pathological call (default 10; 2 with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for batch modes")
    p.add_argument("--encodings", default=",".join(ENCODINGS))
    p.add_argument("--libs", help="comma-separated subset of libraries (tiktoken is always included)")
    p.add_argument("--categories", help="comma-separated subset of categories (english, code, german, russian, "
                                        "chinese, japanese, x, spaces, digits, latin1-random, also as patho:x "
                                        "...; 'patho' = all four pathological inputs); default all")
    p.add_argument("--dump-corpus", type=Path, metavar="DIR",
                   help="also write each category's documents to DIR/<category>.txt, NUL-separated "
                        "(input of benchmarks/tokenizer_core_bench.cpp)")
    p.add_argument("--vocab-dir", default=DEFAULT_VOCAB_DIR, help="directory with <encoding>.tiktoken")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="clock for the single-thread modes: cpu = process CPU time, steadier on a shared "
                        "machine (a library that uses extra threads there is charged for them)")
    args = p.parse_args()
    global CLOCK
    CLOCK = args.clock
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.mb = args.mb or (0.2 if quick else 2.0)
    args.patho_kib = args.patho_kib or (128 if quick else 1024)
    args.budget = args.budget or (2.0 if quick else 10.0)

    results = run(args)
    text = report(results)
    print(text)
    results["markdown"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
