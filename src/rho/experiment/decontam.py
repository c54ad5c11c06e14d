"""Held-out decontamination: find and drop the held-out documents that share long word n-grams
with the training side (the curated data and the corpus), before anything is trained.

This module owns the rule and its statistics; the experiment commands call it and put
``markdown`` / ``DecontamResult.as_dict`` into their reports.

The rule (word 13-grams, as in GPT-3's contamination study and the practice the Rho-1 paper
follows): a text's words are its lowercased ``\\w+`` tokens; its n-grams are the distinct runs
of ``n`` consecutive words, each hashed to a stable 64-bit integer (blake2b, 8-byte digest, of
the words joined by one space, read little-endian), so the same text gives the same hashes in
every process and on every machine. A held-out document is *contaminated* when the fraction of
its distinct n-grams that also occur in the training side is greater than
``max_shared_fraction`` (0.0: any shared n-gram); contaminated documents are dropped. A
document with fewer than ``n`` words has no n-gram, cannot be checked, and is kept (and
counted). Everything here is pure and CPU-only (numpy, no torch).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rho.data.corpus import expand_inputs, parse_record
from rho.errors import UserError
from rho.io.files import one_line, write_atomic

DEFAULT_N = 13

_WORD = re.compile(r"\w+")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
_TEXT_SUFFIXES = (".txt", ".md")
# The index merges its pending hashes into the sorted array once this many have accumulated,
# so building it never holds much more than the distinct n-grams.
_MERGE_EVERY = 1 << 23


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"the n-gram length must be a positive integer, not {n!r}")


def ngram_hashes(text: str, n: int = DEFAULT_N) -> np.ndarray:
    """The hashes of the distinct word n-grams of ``text``: a sorted uint64 array (empty when
    the text has fewer than ``n`` words). The same values as ``word_ngrams``."""
    _check_n(n)
    words = _words(text)
    m = len(words) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    digests = b"".join(
        hashlib.blake2b(" ".join(words[i : i + n]).encode("utf-8"), digest_size=8).digest()
        for i in range(m)
    )
    return np.unique(np.frombuffer(digests, dtype="<u8").astype(np.uint64))


def word_ngrams(text: str, n: int = DEFAULT_N) -> set[int]:
    """The hashes (stable 64-bit ints) of the word n-grams of ``text``; empty below ``n`` words."""
    return set(ngram_hashes(text, n).tolist())


@dataclass
class NgramIndex:
    """The distinct n-gram hashes of the training texts, as a sorted uint64 array."""

    hashes: np.ndarray
    """Sorted, distinct uint64 n-gram hashes."""
    n: int = DEFAULT_N
    """Words per n-gram."""
    n_texts: int = 0
    """How many texts the index was built from."""

    @classmethod
    def build(cls, texts: Iterable[str], n: int = DEFAULT_N) -> NgramIndex:
        _check_n(n)
        merged = np.empty(0, dtype=np.uint64)
        pending: list[np.ndarray] = []
        n_pending = n_texts = 0
        for text in texts:
            n_texts += 1
            arr = ngram_hashes(text, n)
            if arr.size:
                pending.append(arr)
                n_pending += arr.size
            if n_pending >= _MERGE_EVERY:
                merged = np.unique(np.concatenate([merged, *pending]))
                pending, n_pending = [], 0
        if pending:
            merged = np.unique(np.concatenate([merged, *pending]))
        return cls(merged, n, n_texts)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def shared(self, hashes: np.ndarray) -> int:
        """How many of the given distinct hashes are in the index."""
        if hashes.size == 0 or self.hashes.size == 0:
            return 0
        pos = np.searchsorted(self.hashes, hashes)
        pos[pos == self.hashes.size] = 0
        return int(np.count_nonzero(self.hashes[pos] == hashes))

    def overlap(self, text: str) -> tuple[int, int]:
        """(distinct n-grams of ``text`` found in the index, distinct n-grams of ``text``)."""
        hashes = ngram_hashes(text, self.n)
        return self.shared(hashes), int(hashes.size)


@dataclass
class OverlapStats:
    """Overlap of a set of held-out documents with the training side."""

    documents: int
    """Documents in the set."""
    ngrams: int
    """Sum over documents of their distinct n-grams."""
    shared_ngrams: int
    """Sum over documents of their distinct n-grams that occur in the training side."""
    shared_fraction: float
    """shared_ngrams / ngrams (0.0 when there is no n-gram)."""
    documents_with_overlap: int
    """Documents that share at least one n-gram."""
    documents_without_ngrams: int
    """Documents too short (fewer than n words) to have an n-gram; they are always kept."""

    @classmethod
    def of(cls, shared: np.ndarray, total: np.ndarray) -> OverlapStats:
        n_grams, n_shared = int(total.sum()), int(shared.sum())
        return cls(
            documents=int(total.size),
            ngrams=n_grams,
            shared_ngrams=n_shared,
            shared_fraction=n_shared / n_grams if n_grams else 0.0,
            documents_with_overlap=int(np.count_nonzero(shared)),
            documents_without_ngrams=int(np.count_nonzero(total == 0)),
        )


@dataclass
class DecontamResult:
    """Which held-out documents are kept, and the overlap before and after dropping the rest."""

    keep: list[bool]
    """One per held-out document, in order: True when it is kept."""
    before: OverlapStats
    after: OverlapStats
    n: int = DEFAULT_N
    """Words per n-gram."""
    max_shared_fraction: float = 0.0
    """A document is dropped when its shared fraction of n-grams is greater than this."""
    shared: list[int] = field(default_factory=list)
    """Per document: its distinct n-grams found in the training side."""
    total: list[int] = field(default_factory=list)
    """Per document: its distinct n-grams."""

    @property
    def dropped(self) -> list[int]:
        """Indices of the dropped documents."""
        return [i for i, k in enumerate(self.keep) if not k]

    def as_dict(self) -> dict:
        """JSON-ready summary (the per-document lists are left out; ``dropped`` lists indices)."""
        return {
            "n": self.n,
            "max_shared_fraction": self.max_shared_fraction,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "documents_dropped": self.before.documents - self.after.documents,
            "dropped": self.dropped,
        }


def decontaminate(
    heldout: list[str], index: NgramIndex, max_shared_fraction: float = 0.0
) -> DecontamResult:
    """Drop the held-out texts whose shared fraction of n-grams exceeds ``max_shared_fraction``.

    The n-gram length is the index's. Texts with no n-gram (too short) are kept."""
    threshold = float(max_shared_fraction)
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"max_shared_fraction must be in [0, 1], not {max_shared_fraction!r}")
    shared = np.zeros(len(heldout), dtype=np.int64)
    total = np.zeros(len(heldout), dtype=np.int64)
    for i, text in enumerate(heldout):
        shared[i], total[i] = index.overlap(text)
    # shared > threshold * total  <=>  shared / total > threshold, with total = 0 kept
    keep = ~((total > 0) & (shared > threshold * total))
    return DecontamResult(
        keep=keep.tolist(),
        before=OverlapStats.of(shared, total),
        after=OverlapStats.of(shared[keep], total[keep]),
        n=index.n,
        max_shared_fraction=threshold,
        shared=shared.tolist(),
        total=total.tolist(),
    )


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(results: dict[str, DecontamResult]) -> str:
    """A Markdown table, one row per held-out set: documents and shared n-gram fraction before
    → after, and how many documents were dropped."""
    ns = sorted({r.n for r in results.values()})
    gram = f"{ns[0]}-gram" if len(ns) == 1 else "n-gram"
    lines = [
        f"| held-out set | docs before → after | shared {gram} fraction before → after "
        "| docs dropped | threshold |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        b, a = r.before, r.after
        lines.append(
            f"| {name} | {b.documents} → {a.documents} "
            f"| {_percent(b.shared_fraction)} → {_percent(a.shared_fraction)} "
            f"| {b.documents - a.documents} | > {r.max_shared_fraction:g} |"
        )
    return "\n".join(lines) + "\n"


# --- Files ------------------------------------------------------------------------------------


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith(_JSONL_SUFFIXES)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes with the newline) of each non-blank line: one per document."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    yield number, raw
    except (OSError, EOFError, zlib.error) as err:  # also a corrupted or truncated .gz
        raise UserError(f"{path}: cannot read ({one_line(err)})") from None


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """The documents of a ``.jsonl`` / ``.jsonl.gz`` file (one per non-blank line, in order,
    blank texts included, so the list lines up with ``filter_jsonl``), or of ``.txt`` files
    (one document per file; a glob gives them in sorted order)."""
    texts: list[str] = []
    for source in expand_inputs([str(path)]):
        p = source.path
        if _is_jsonl(p):
            texts.extend(parse_record(raw, p, i, text_field)[1] for i, raw in _jsonl_lines(p))
        elif p.name.endswith(_TEXT_SUFFIXES):
            try:
                raw = p.read_bytes()
            except OSError as err:
                raise UserError(f"{p}: cannot read ({one_line(err)})") from None
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise UserError(f"{p}: text is not valid UTF-8 (byte {err.start})") from None
        else:
            raise UserError(f"{p}: unsupported held-out file (use .jsonl, .jsonl.gz or .txt)")
    return texts


def filter_jsonl(src: str | Path, dst: str | Path, keep: list[bool]) -> int:
    """Write the kept documents of the jsonl(.gz) file ``src`` into the plain jsonl file ``dst``
    (atomically): ``keep`` has one entry per non-blank line of ``src`` (blank lines are not
    documents and are not copied); kept lines are copied byte for byte, in order. Returns how
    many lines were written."""
    src, dst = Path(src), Path(dst)
    if not _is_jsonl(src):
        raise UserError(f"{src}: not a jsonl file")
    if src.resolve() == dst.resolve():
        raise UserError(f"{dst}: would overwrite its own input")
    lines = [raw for _, raw in _jsonl_lines(src)]
    if len(lines) != len(keep):
        raise UserError(f"{src}: has {len(lines)} documents but {len(keep)} keep flags were given")
    kept = [raw for raw, k in zip(lines, keep, strict=True) if k]

    def write(f) -> None:
        for raw in kept:
            f.write(raw)

    write_atomic(dst, write)
    return len(kept)
