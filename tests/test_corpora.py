"""The shipped demo corpus (rho.corpora); its builder is tested in test_build_demo.py."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from helpers import without_noise

from rho.corpora import DEMO_DIR, SPLITS, demo_path

DOMAINS = ("math", "general", "noise")  # the document domains of the demo corpus


def iter_demo(split: str):
    """The documents of one demo split as dicts (``text``, ``domain``, ``noise_spans``)."""
    with gzip.open(demo_path(split), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@pytest.fixture(scope="module")
def demo() -> dict[str, list[dict]]:
    return {split: list(iter_demo(split)) for split in SPLITS}


# -- the shipped files ---------------------------------------------------------------------------


def test_demo_path_and_files_exist():
    for split in SPLITS:
        path = demo_path(split)
        assert path == DEMO_DIR / f"{split}.jsonl.gz"
        assert path.is_file()
    assert (DEMO_DIR / "SOURCES.json").is_file()
    assert (DEMO_DIR / "LICENSES.md").is_file()
    total = sum(demo_path(s).stat().st_size for s in SPLITS)
    assert total <= 3_000_000


def test_demo_path_rejects_unknown_split():
    with pytest.raises(ValueError, match="unknown demo split"):
        demo_path("train")


def test_files_match_sources_json(sources):
    for split in SPLITS:
        data = demo_path(split).read_bytes()
        entry = sources["splits"][split]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["compressed_bytes"]
    assert set(sources["versions"]) >= {"python", "sympy", "mpmath", "numpy"}


def test_licences_name_every_source():
    text = (DEMO_DIR / "LICENSES.md").read_text(encoding="utf-8")
    for needle in (
        "SymPy Development Team",
        "Fredrik Johansson and mpmath contributors",
        "NumPy Developers",
        "Python Software Foundation",
        "BSD-3-Clause",
        "PSF License Agreement",
    ):
        assert needle in text


def test_records_are_well_formed(demo):
    for split, records in demo.items():
        assert records, split
        for rec in records:
            assert set(rec) == {"text", "domain", "noise_spans"}
            assert isinstance(rec["text"], str) and rec["text"]
            assert rec["domain"] in DOMAINS
            last = 0
            for span in rec["noise_spans"]:
                start, end = span
                assert isinstance(start, int) and isinstance(end, int)
                assert last <= start < end <= len(rec["text"]), (split, span)
                last = end


def test_domains_per_split(demo):
    for split in ("curated", "heldout"):
        for rec in demo[split]:
            assert rec["domain"] == "math"
            assert rec["noise_spans"] == []
    assert {r["domain"] for r in demo["corpus"]} == {"math", "general", "noise"}


def test_noise_whole_docs_and_in_doc_spans(demo):
    corpus = demo["corpus"]
    noise_docs = [r for r in corpus if r["domain"] == "noise"]
    assert noise_docs
    for rec in noise_docs:
        assert rec["noise_spans"] == [[0, len(rec["text"])]]
    for domain in ("math", "general"):
        docs = [r for r in corpus if r["domain"] == domain]
        with_noise = [r for r in docs if r["noise_spans"]]
        assert 0.1 < len(with_noise) / len(docs) < 0.6, domain
        assert any(r["noise_spans"][0][0] > 0 for r in with_noise)  # inside, not only a header
        for rec in with_noise:  # an injected span is never the whole document
            assert sum(e - s for s, e in rec["noise_spans"]) < len(rec["text"])


def test_splits_are_disjoint(demo):
    curated = {" ".join(r["text"].split()) for r in demo["curated"]}
    heldout = {" ".join(r["text"].split()) for r in demo["heldout"]}
    corpus_math = {without_noise(r) for r in demo["corpus"] if r["domain"] == "math"}
    assert len(curated) == len(demo["curated"])  # no duplicates inside a split either
    assert not curated & heldout
    assert not curated & corpus_math
    assert not heldout & corpus_math


def test_sizes_and_mix(demo):
    chars = {s: sum(len(r["text"]) for r in recs) for s, recs in demo.items()}
    assert 0.9e6 <= chars["curated"] <= 1.1e6
    assert 0.2e6 <= chars["heldout"] <= 0.3e6
    assert 3.5e6 <= chars["corpus"] <= 4.5e6
    corpus = demo["corpus"]
    noise = sum(e - s for r in corpus for s, e in r["noise_spans"])
    clean = {
        d: sum(len(without_noise(r)) for r in corpus if r["domain"] == d)
        for d in ("math", "general")
    }
    total = chars["corpus"]
    assert 0.33 <= clean["math"] / total <= 0.47
    assert 0.23 <= clean["general"] / total <= 0.37
    assert 0.23 <= noise / total <= 0.37
