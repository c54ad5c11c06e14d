"""Held-out decontamination (experiment/decontam.py): the 13-gram rule, its statistics, the
jsonl helpers, and hash stability across processes. Hand-made texts only; no torch."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import HANG_GUARD_S

from rho.errors import UserError
from rho.experiment import decontam
from rho.experiment.decontam import (
    NgramIndex,
    decontaminate,
    filter_jsonl,
    markdown,
    read_texts,
    word_ngrams,
)


def words(start: int, count: int, tag: str = "w") -> list[str]:
    """Distinct words, so that only the n-grams a test builds on purpose are shared."""
    return [f"{tag}{i}" for i in range(start, start + count)]


def text(ws: list[str]) -> str:
    return " ".join(ws)


def blake(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


# --- n-grams and hashes ----------------------------------------------------------------------


def test_word_ngrams_are_blake2b_of_lowercased_words():
    assert word_ngrams("The  CAT, sat!", n=3) == {blake("the cat sat")}
    assert word_ngrams("a b c d", n=3) == {blake("a b c"), blake("b c d")}
    assert all(0 <= h < 2**64 for h in word_ngrams(text(words(0, 40))))


def test_word_ngrams_short_texts_and_repeats():
    assert word_ngrams(text(words(0, 12))) == set()  # fewer than 13 words
    assert len(word_ngrams(text(words(0, 13)))) == 1
    assert word_ngrams("") == set()
    assert len(word_ngrams("a b c a b c", n=3)) == 3  # distinct: abc, bca, cab
    with pytest.raises(UserError):
        word_ngrams("a b c", n=0)


def test_hashes_are_stable_across_processes():
    sample = "Étude: the Quick brown fox — jumps over 13 lazy dogs, again and again and again!"
    here = sorted(word_ngrams(sample))
    assert here
    code = (
        "import json, sys; from rho.experiment.decontam import word_ngrams; "
        "print(json.dumps(sorted(word_ngrams(sys.argv[1]))))"
    )
    for seed in ("1", "271828"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, sample],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=HANG_GUARD_S,
        )
        assert json.loads(out.stdout) == here


# --- the index and the rule -------------------------------------------------------------------


def test_index_build_and_overlap(monkeypatch):
    corpus = [text(words(0, 30)), text(words(100, 30)), "too short", text(words(0, 30))]
    index = NgramIndex.build(iter(corpus))
    assert len(index) == 18 + 18 and index.n_texts == 4 and index.n == 13
    assert np.all(index.hashes[1:] > index.hashes[:-1])  # sorted and distinct
    assert index.overlap(text(words(10, 30))) == (8, 18)  # w10..w29 lie in the corpus
    assert index.overlap(text(words(500, 30))) == (0, 18)
    assert index.overlap("short") == (0, 0)
    assert NgramIndex.build([]).overlap(text(words(0, 30))) == (0, 18)
    monkeypatch.setattr(decontam, "_MERGE_EVERY", 5)  # merge in many small steps
    assert np.array_equal(NgramIndex.build(corpus).hashes, index.hashes)


def test_duplicate_near_duplicate_unrelated_and_short_documents():
    dup = text(words(0, 40, "d"))
    near = words(0, 60, "n")
    corpus = [
        text(words(0, 20, "x")) + " " + dup + " " + text(words(0, 20, "y")),  # dup inside a doc
        text(near),
    ]
    near[30] = "changed"  # one word changed: 13 of the 48 13-grams differ
    short = text(words(0, 12, "n"))  # a piece of the corpus, but too short to check
    heldout = [dup, text(near), text(words(0, 50, "u")), short]
    result = decontaminate(heldout, NgramIndex.build(corpus))
    assert result.keep == [False, False, True, True]
    assert result.shared == [28, 35, 0, 0] and result.total == [28, 48, 38, 0]
    assert result.dropped == [0, 1]
    assert result.before.documents_without_ngrams == 1
    assert result.after.documents == 2 and result.after.shared_ngrams == 0


def test_threshold_is_strictly_greater_than():
    train = text(words(0, 13))
    doc = text(words(0, 16))  # 4 13-grams, 1 shared: fraction 0.25
    index = NgramIndex.build([train])
    assert index.overlap(doc) == (1, 4)
    assert decontaminate([doc], index, 0.0).keep == [False]
    assert decontaminate([doc], index, 0.2).keep == [False]
    assert decontaminate([doc], index, 0.25).keep == [True]
    assert decontaminate([doc], index, 1.0).keep == [True]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError):
            decontaminate([doc], index, bad)


def test_statistics_before_and_after_by_hand():
    index = NgramIndex.build(["a b c d"], n=3)  # abc, bcd
    heldout = ["A b c x", "p q r s t", "a b", ""]  # abc shared + bcx; pqr qrs rst; none; none
    result = decontaminate(heldout, index)
    assert result.keep == [False, True, True, True]
    d = result.as_dict()
    assert d["before"] == {
        "documents": 4,
        "ngrams": 5,
        "shared_ngrams": 1,
        "shared_fraction": 0.2,
        "documents_with_overlap": 1,
        "documents_without_ngrams": 2,
    }
    assert d["after"] == {
        "documents": 3,
        "ngrams": 3,
        "shared_ngrams": 0,
        "shared_fraction": 0.0,
        "documents_with_overlap": 0,
        "documents_without_ngrams": 2,
    }
    assert d["documents_dropped"] == 1 and d["dropped"] == [0] and d["n"] == 3
    assert json.loads(json.dumps(d)) == d

    loose = decontaminate(heldout, index, 0.5)  # 1/2 is not > 0.5: kept, and still counted
    assert loose.keep == [True] * 4
    assert loose.after.shared_fraction == pytest.approx(0.2)

    table = markdown({"val": result, "test": loose})
    lines = table.strip().splitlines()
    assert len(lines) == 4 and "3-gram" in lines[0]
    assert lines[2].startswith("| val | 4 → 3 | 20.00% → 0.00% | 1 |")
    assert lines[3].startswith("| test | 4 → 4 | 20.00% → 20.00% | 0 |")


# --- files ------------------------------------------------------------------------------------


def test_filter_jsonl_keeps_exactly_the_chosen_lines(tmp_path):
    raw = [
        b'{"text": "first", "domain": "a"}\n',
        b'{ "text" : "\\u00e9t\\u00e9 caf\xc3\xa9",  "x": [1, 2] }\r\n',
        b'{"text": "   "}\n',  # a blank text is still a document (read_documents would skip it)
        b'{"text": "fourth"}\n',
        b'{"text": "last, no newline"}',
    ]
    body = raw[0] + b"\n" + raw[1] + raw[2] + b"  \n" + raw[3] + raw[4]  # with blank lines
    for name, data in (("h.jsonl", body), ("h.jsonl.gz", gzip.compress(body))):
        src = tmp_path / name
        src.write_bytes(data)
        texts = read_texts(src)
        assert texts == ["first", "été café", "   ", "fourth", "last, no newline"]
        keep = [True, True, False, False, True]
        dst = tmp_path / "out" / f"{name}.kept.jsonl"
        assert filter_jsonl(src, dst, keep) == 3
        assert dst.read_bytes() == raw[0] + raw[1] + raw[4]
        assert read_texts(dst) == ["first", "été café", "last, no newline"]
        with pytest.raises(UserError, match="5 documents"):
            filter_jsonl(src, dst, keep[:-1])
    with pytest.raises(UserError):
        filter_jsonl(tmp_path / "h.jsonl", tmp_path / "h.jsonl", [True] * 5)


def test_read_texts_formats_and_errors(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n\nstill one document")
    (tmp_path / "a.txt").write_text("first file")
    assert read_texts(tmp_path / "*.txt") == ["first file", "second file\n\nstill one document"]
    (tmp_path / "f.jsonl").write_text('{"body": "x"}\n')
    assert read_texts(tmp_path / "f.jsonl", text_field="body") == ["x"]
    with pytest.raises(UserError, match="no 'text' field"):
        read_texts(tmp_path / "f.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="invalid JSON"):
        read_texts(tmp_path / "bad.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported"):
        read_texts(tmp_path / "x.csv")
    with pytest.raises(UserError, match="does not exist"):
        read_texts(tmp_path / "missing.jsonl")
