"""`rho tokenize` throughput against the raw Rust tokenizer on the same texts, in one run.

rho's side is ``rho.data.tokenize.tokenize_corpus``, the library call `rho tokenize` makes: it reads
and parses the jsonl file, encodes, packs ids with EOS, writes the chunk parts and the
TokenStore (tokens, offsets, hash). The raw side is the tokenizer's Rust backend on the texts
already in memory, in batches of 256, with the ids read out (``[e.ids for e in
tokenizer.encode_batch(texts)]``): ``encode_batch`` (what the HF tokenizer's ``__call__``
runs) and ``encode_batch_fast`` (the same ids without character offsets). The kinds alternate
each repeat (the order reverses every other repeat), so machine noise hits them alike; each
ratio is the median of the per-repeat ratios of tokens per second. ``--workers 1,2`` also runs
the command itself, `python -m rho tokenize --workers N`, in a fresh process per run (start-up
and worker spawning included), interleaved with the rest.

The corpus is the shipped demo corpus (src/rho/corpora/demo) repeated ``--copies`` times as
plain ``{"text": ...}`` lines (``--noise`` keeps its domains and noise spans, so the offsets
path runs too); the tokenizer is a byte-level BPE rho trains on it (``--vocab``).

    python bench/bench_tokenize.py                    # 8 copies: ~12M tokens
    python bench/bench_tokenize.py --workers 1,2      # also the command: --workers 2 vs 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "src" / "rho" / "corpora" / "demo" / "corpus.jsonl.gz"


def write_corpus(path: Path, copies: int, noise: bool) -> list[str]:
    """The demo corpus ``copies`` times into ``path``; returns its texts (for the raw side)."""
    with gzip.open(DEMO, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not noise:
        records = [{"text": r["text"]} for r in records]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(lines)
    return [r["text"] for r in records] * copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="demo corpus copies (default 8)")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary (default 4096)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", action="store_true", help="keep domains and noise spans")
    parser.add_argument(
        "--workers", default="", help="also time the command with these --workers, e.g. 1,2"
    )
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    from rho.data.token_parts import backend_of
    from rho.data.tokenize import tokenize_corpus

    root = Path(tempfile.mkdtemp(prefix="rho-bench-tokenize-", dir=args.dir))
    try:
        corpus = root / "corpus.jsonl"
        texts = write_corpus(corpus, args.copies, args.noise)
        base = tokenize_corpus([str(DEMO)], root / "base", train_vocab=args.vocab, progress=False)
        backend = backend_of(base.tokenizer())
        encode_fast = getattr(backend, "encode_batch_fast", None)

        def raw(encode):
            def run() -> int:
                n = 0
                for first in range(0, len(texts), 256):
                    encodings = encode(texts[first : first + 256], add_special_tokens=False)
                    n += sum(len(ids) for ids in [e.ids for e in encodings])
                return n

            return run

        def rho() -> int:
            shutil.rmtree(root / "out", ignore_errors=True)
            store = tokenize_corpus(
                [str(corpus)], root / "out", tokenizer=str(base.tokenizer_dir), progress=False
            )
            return store.n_tokens - store.n_docs  # EOS tokens are rho's, not the text's

        def command(workers: int):
            def run() -> int:
                shutil.rmtree(root / "cmd", ignore_errors=True)
                cmd = [sys.executable, "-m", "rho", "tokenize", str(corpus), "--out"]
                cmd += [str(root / "cmd"), "--tokenizer", str(base.tokenizer_dir)]
                subprocess.run([*cmd, "--workers", str(workers)], check=True, capture_output=True)
                meta = json.loads((root / "cmd" / "meta.json").read_text())
                return meta["n_tokens"] - meta["n_docs"]

            return run

        kinds = {"raw encode_batch": raw(backend.encode_batch)}
        if encode_fast is not None:
            kinds["raw encode_batch_fast"] = raw(encode_fast)
        kinds["rho tokenize_corpus"] = rho
        workers = [int(w) for w in args.workers.split(",") if w]
        for w in workers:
            kinds[f"rho tokenize --workers {w}"] = command(w)
        for run in kinds.values():
            run()  # warm up: page cache, thread pools, imports
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for repeat in range(args.repeats):
            order = list(kinds) if repeat % 2 == 0 else list(reversed(kinds))
            for name in order:
                start = time.perf_counter()
                n = kinds[name]()
                rates[name].append(n / (time.perf_counter() - start))

        print(
            f"{len(texts):,} documents, {n:,} text tokens, {corpus.stat().st_size / 1e6:.0f} MB "
            f"jsonl{' with noise spans' if args.noise else ''}; BPE vocabulary {args.vocab}; "
            f"{len(os.sched_getaffinity(0))} cores; {args.repeats} repeats"
        )
        for name, values in rates.items():
            print(f"{name:<28} {statistics.median(values) / 1e6:6.2f}M tokens/s")

        def ratio(a: str, b: str) -> str:
            per = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
            return f"{statistics.median(per):.2f} (per repeat {min(per):.2f}..{max(per):.2f})"

        one = "rho tokenize_corpus"
        print(f"ratio {one} / raw encode_batch: {ratio(one, 'raw encode_batch')} (aim >= 0.8)")
        if encode_fast is not None:
            print(f"ratio {one} / raw encode_batch_fast: {ratio(one, 'raw encode_batch_fast')}")
        for w in workers[1:]:
            a, b = f"rho tokenize --workers {w}", f"rho tokenize --workers {workers[0]}"
            print(f"ratio {a} / {b}: {ratio(a, b)} (aim >= 1)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
