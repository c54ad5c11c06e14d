"""Assembling the splits and writing them: :func:`build`, and the command line (:func:`main`).

Owns: the target sizes, the seeded math shuffle into disjoint curated / heldout / corpus
slices, filling the corpus with math, general and noise documents (noise injected into some),
the byte-for-byte deterministic output (sorted walks, string-seeded ``random.Random``, gzip
without timestamp), the summary written to SOURCES.json with each file's sha256, copying
LICENSES.md next to data built elsewhere, and the command line ``python tools/build_demo``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from .gather import _versions, gather_sources
from .noise import NoiseMaker, inject
from .sources import Doc

BUILDER = "python tools/build_demo"
"""How to run this tool from the repository root (recorded as "builder" in SOURCES.json)."""

DESCRIPTION = (
    "Build the shipped demo corpus from docstrings of installed libraries, plus generated noise."
)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "src" / "rho" / "corpora" / "demo"
"""The shipped demo folder of the runtime package rho.corpora (found by path, not imported)."""

# Target sizes in characters at --scale 1.0.
CURATED_CHARS = 1_000_000
HELDOUT_CHARS = 250_000
CORPUS_MATH_CHARS = 1_600_000
CORPUS_GENERAL_CHARS = 1_200_000
CORPUS_NOISE_CHARS = 1_000_000

INJECT_PROB = 0.3
"""Probability that a math or general corpus document gets noise injected into it."""
SECOND_INJECT_PROB = 0.2
"""Probability that an injected document gets a second noise span."""


@dataclass
class SplitStats:
    docs: int = 0
    chars: int = 0
    noise_chars: int = 0
    noise_spans: int = 0
    domains: dict = field(default_factory=dict)

    def add(self, rec: dict) -> None:
        n = len(rec["text"])
        noise = sum(e - s for s, e in rec["noise_spans"])
        self.docs += 1
        self.chars += n
        self.noise_chars += noise
        self.noise_spans += len(rec["noise_spans"])
        d = self.domains.setdefault(
            rec["domain"], {"docs": 0, "chars": 0, "noise_chars": 0, "docs_with_noise": 0}
        )
        d["docs"] += 1
        d["chars"] += n
        d["noise_chars"] += noise
        d["docs_with_noise"] += bool(rec["noise_spans"])


def _take(docs: list[Doc], start: int, target: int) -> tuple[list[Doc], int]:
    """Docs from ``start`` on until their characters reach ``target``; returns them and the end."""
    out: list[Doc] = []
    total = 0
    i = start
    while i < len(docs) and total < target:
        out.append(docs[i])
        total += len(docs[i].text)
        i += 1
    return out, i


def _encode(records: list[dict]) -> bytes:
    lines = [
        json.dumps(
            {"text": r["text"], "domain": r["domain"], "noise_spans": r["noise_spans"]},
            ensure_ascii=False,
        )
        for r in records
    ]
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    return raw


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(
    out_dir: str | os.PathLike = DEFAULT_OUT,
    seed: int = 0,
    scale: float = 1.0,
    max_modules: int | None = None,
) -> dict:
    """Build curated, heldout and corpus ``.jsonl.gz`` plus ``SOURCES.json`` into ``out_dir``.

    ``scale`` multiplies every target size and ``max_modules`` caps the modules walked per
    package (both for quick test builds). Returns the summary written to SOURCES.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = gather_sources(seed, max_modules)

    # Math: one seeded document-level shuffle, then disjoint curated / heldout / corpus slices.
    math_docs = list(src["math"])
    random.Random(f"{seed}:math").shuffle(math_docs)
    targets = [CURATED_CHARS * scale, HELDOUT_CHARS * scale, CORPUS_MATH_CHARS * scale]
    available = sum(len(d.text) for d in math_docs)
    shrink = min(1.0, available / sum(targets))  # small builds: keep the proportions
    targets = [t * shrink for t in targets]
    curated, i = _take(math_docs, 0, targets[0])
    heldout, i = _take(math_docs, i, targets[1])
    corpus_math_pool = math_docs[i:]

    general_pool = list(src["stdlib"])
    random.Random(f"{seed}:stdlib-docs").shuffle(general_pool)
    numpy_pool = list(src["numpy"])
    random.Random(f"{seed}:numpy-docs").shuffle(numpy_pool)
    general_pool += numpy_pool  # NumPy tops up the standard library

    rng = random.Random(f"{seed}:corpus")
    noise = NoiseMaker(rng, src["code_sources"], src["noise_text"])
    kind_chars: dict[str, int] = {k: 0 for k in NoiseMaker.KINDS}
    corpus: list[dict] = []

    def fill(pool: list[Doc], domain: str, target: float) -> None:
        total = 0
        for doc in pool:
            if total >= target:
                break
            blocks = []
            if rng.random() < INJECT_PROB:
                for _ in range(2 if rng.random() < SECOND_INJECT_PROB else 1):
                    kind, text, where = noise.inline()
                    kind_chars[kind] += len(text)
                    blocks.append((text, where))
            text, spans = inject(doc.text, blocks, rng)
            corpus.append({"text": text, "domain": domain, "noise_spans": spans})
            total += len(text)

    fill(corpus_math_pool, "math", targets[2])
    fill(general_pool, "general", CORPUS_GENERAL_CHARS * scale * shrink)
    noise_target = CORPUS_NOISE_CHARS * scale * shrink
    total = 0
    while total < noise_target:
        size = int(math.exp(rng.uniform(5.7, 8.3)))  # ~300 to ~4000 characters
        text, per_kind = noise.document(size)
        for k, v in per_kind.items():
            kind_chars[k] += v
        corpus.append({"text": text, "domain": "noise", "noise_spans": [[0, len(text)]]})
        total += len(text)
    rng.shuffle(corpus)

    splits = {
        "curated": [{"text": d.text, "domain": "math", "noise_spans": []} for d in curated],
        "heldout": [{"text": d.text, "domain": "math", "noise_spans": []} for d in heldout],
        "corpus": corpus,
    }
    summary: dict = {
        "builder": BUILDER,
        "seed": seed,
        "scale": scale,
        "max_modules": max_modules,
        "versions": _versions(),
        "sources": src["counts"],
        "splits": {},
        "noise_chars_by_kind": kind_chars,
    }
    for name, records in splits.items():
        stats = SplitStats()
        for rec in records:
            stats.add(rec)
        raw = _encode(records)
        packed = gzip.compress(raw, compresslevel=9, mtime=0)
        _write_atomic(out / f"{name}.jsonl.gz", packed)
        summary["splits"][name] = {
            "file": f"{name}.jsonl.gz",
            "docs": stats.docs,
            "chars": stats.chars,
            "raw_bytes": len(raw),
            "compressed_bytes": len(packed),
            "sha256": hashlib.sha256(packed).hexdigest(),
            "noise_chars": stats.noise_chars,
            "noise_spans": stats.noise_spans,
            "domains": stats.domains,
        }
    text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
    _write_atomic(out / "SOURCES.json", text.encode("utf-8"))
    licences = DEFAULT_OUT / "LICENSES.md"
    if licences.is_file() and out.resolve() != DEFAULT_OUT:  # the licences travel with the data
        _write_atomic(out / "LICENSES.md", licences.read_bytes())
    return summary


def format_summary(summary: dict) -> str:
    """A short human-readable table of a build summary."""
    lines = [f"{'split':<8} {'domain':<8} {'docs':>6} {'chars':>10} {'noise%':>7}"]
    for name, s in summary["splits"].items():
        for dom, d in s["domains"].items():
            pct = 100 * d["noise_chars"] / max(d["chars"], 1)
            lines.append(f"{name:<8} {dom:<8} {d['docs']:>6} {d['chars']:>10} {pct:>6.1f}%")
        lines.append(
            f"{name:<8} {'(all)':<8} {s['docs']:>6} {s['chars']:>10} "
            f"{100 * s['noise_chars'] / max(s['chars'], 1):>6.1f}%   raw {s['raw_bytes']:,} B, "
            f"gz {s['compressed_bytes']:,} B"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BUILDER, description=DESCRIPTION)
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="output folder (default: the shipped demo folder)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every target size (default 1.0)"
    )
    parser.add_argument(
        "--max-modules",
        type=int,
        default=None,
        help="cap modules walked per package (quick builds)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    t0 = time.perf_counter()
    summary = build(args.out, seed=args.seed, scale=args.scale, max_modules=args.max_modules)
    if not args.quiet:
        print(format_summary(summary))
        print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
