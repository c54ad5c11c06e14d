"""The shipped demo corpus and its builder (rho.corpora)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import rho
from rho.corpora import DEMO_DIR, DOMAINS, SPLITS, demo_path, iter_demo
from rho.corpora import build_demo as bd

SRC_ROOT = Path(rho.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo() -> dict[str, list[dict]]:
    return {split: list(iter_demo(split)) for split in SPLITS}


@pytest.fixture(scope="module")
def sources() -> dict:
    return json.loads((DEMO_DIR / "SOURCES.json").read_text(encoding="utf-8"))


def _without_noise(rec: dict) -> str:
    """The document's text with its noise spans cut out, whitespace collapsed."""
    text, parts, last = rec["text"], [], 0
    for start, end in rec["noise_spans"]:
        parts.append(text[last:start])
        last = end
    parts.append(text[last:])
    return " ".join("".join(parts).split())


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
    corpus_math = {_without_noise(r) for r in demo["corpus"] if r["domain"] == "math"}
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
        d: sum(len(_without_noise(r)) for r in corpus if r["domain"] == d)
        for d in ("math", "general")
    }
    total = chars["corpus"]
    assert 0.33 <= clean["math"] / total <= 0.47
    assert 0.23 <= clean["general"] / total <= 0.37
    assert 0.23 <= noise / total <= 0.37


# -- the builder's parts -------------------------------------------------------------------------


def test_inject_spans_point_at_the_blocks():
    rng = random.Random(0)
    text = "First paragraph.\n\nSecond one.\n\nThird."
    blocks = [("HEAD", "head"), ("MIDDLE", "any"), ("TAIL", "tail")]
    out, spans = bd.inject(text, blocks, rng)
    assert [out[s:e] for s, e in spans] == ["HEAD", "MIDDLE", "TAIL"]
    assert spans == sorted(spans)
    assert _without_noise({"text": out, "noise_spans": spans}) == " ".join(text.split())
    assert out.startswith("HEAD\n\n") and out.endswith("\n\nTAIL")
    # one paragraph: a middle block still lands at an end, never inside the text
    out, spans = bd.inject("only one paragraph", [("X", "any")], rng)
    assert out in ("X\n\nonly one paragraph", "only one paragraph\n\nX")


def test_noise_maker_every_kind():
    rng = random.Random(1)
    maker = bd.NoiseMaker(rng, ["def f(x):\n    return x\n" * 100], ["Some real text. " * 50])
    for kind in bd.NoiseMaker.KINDS:
        for _ in range(20):
            text, where = maker.make(kind, 300)
            assert text.strip() and where in ("head", "tail", "any")
            assert not bd._CONTROL.search(text)
    doc, per_kind = maker.document(2000)
    assert len(doc) >= 300 and set(per_kind) <= set(bd.NoiseMaker.KINDS)


def test_clean_text():
    raw = "Summary line.\n\n\n\n    Indented   \n      more\r\n"
    assert bd.clean_text(raw) == "Summary line.\n\nIndented\n  more"


# -- determinism -----------------------------------------------------------------------------


def _small_build_cmd(out: Path, seed: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rho.corpora.build_demo",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--scale",
        "0.01",
        "--max-modules",
        "12",
        "--quiet",
    ]


def _env(hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_ROOT), env.get("PYTHONPATH")]))
    return env


def test_builder_is_deterministic(tmp_path):
    # Two processes with different hash seeds (set/dict order must not leak), plus one more
    # seed that must give a different corpus.
    runs = {
        "a": (_small_build_cmd(tmp_path / "a"), "1"),
        "b": (_small_build_cmd(tmp_path / "b"), "2"),
        "c": (_small_build_cmd(tmp_path / "c", seed=1), "1"),
    }
    procs = {
        k: subprocess.Popen(cmd, env=_env(h), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for k, (cmd, h) in runs.items()
    }
    for k, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, (k, err.decode()[-2000:])
    for name in [f"{s}.jsonl.gz" for s in SPLITS] + ["SOURCES.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a_corpus = (tmp_path / "a" / "corpus.jsonl.gz").read_bytes()
    assert a_corpus != (tmp_path / "c" / "corpus.jsonl.gz").read_bytes()
    summary = json.loads((tmp_path / "a" / "SOURCES.json").read_text(encoding="utf-8"))
    assert summary["splits"]["corpus"]["docs"] > 0
    assert (tmp_path / "a" / "LICENSES.md").is_file()


@pytest.mark.slow
def test_full_rebuild_reproduces_shipped_files(tmp_path, sources):
    versions = bd._versions()
    if versions != sources["versions"]:
        pytest.skip(f"shipped corpus built with {sources['versions']}, here {versions}")
    summary = bd.build(tmp_path, seed=sources["seed"])
    for split in SPLITS:
        assert summary["splits"][split]["sha256"] == sources["splits"][split]["sha256"]
