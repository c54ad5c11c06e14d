"""Shared fixtures: one small corpus, TokenStore and tiny model, built once per test session."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rho.experiment.report import PAPER

WORDS = (
    "the a cat dog sat ran on under mat tree bird sang while far away and then it was "
    "quick brown fox jumps over lazy river stone light dark morning evening rain sun"
).split()


def make_docs(n_docs: int, seed: int = 0, min_words: int = 5, max_words: int = 80) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n_docs)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# One thread per process: tiny models gain nothing from more, and on a busy machine threads that
# wait for each other make runs many times slower.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_rho(
    *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m rho ARGS` in a real subprocess (this interpreter, so the venv's rho)."""
    return subprocess.run(
        [sys.executable, "-m", "rho", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**SUBPROCESS_ENV, **(env or {})},
    )


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_test_process():
    """The whole suite runs tiny models, which are fastest on one thread."""
    with torch_threads(1):
        yield


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A jsonl corpus of ~20k tokens with a noisy document now and then."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    records = []
    for i, text in enumerate(make_docs(400)):
        record = {"text": text}
        if i % 9 == 4:
            record["noise_spans"] = [[0, min(12, len(text))]]
        records.append(record)
    return write_jsonl(path, records)


@pytest.fixture(scope="session")
def token_store(tmp_path_factory, corpus):
    """Read-only for tests: copy it before changing anything."""
    from rho.tokenize import tokenize_corpus

    out = tmp_path_factory.mktemp("stores") / "tokens"
    return tokenize_corpus([str(corpus)], out, train_vocab=400, progress=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, token_store) -> Path:
    from rho.models import build_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_model("tiny", token_store.vocab_size, seed=1).save_pretrained(path)
    return path


# --- every figure of an experiment report is recorded in its results.json ----------------------

NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")


def numbers_in(value) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers_in(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers_in(v)]
    return []


def recorded(text: str, values: list[float]) -> bool:
    """Is the printed number ``text`` some recorded value at the precision it was printed?"""
    percent = text.endswith("%")
    body = text.rstrip("%").replace(",", "")
    mantissa, _, exponent = body.partition("e")
    x = float(body)
    decimals = len(mantissa.partition(".")[2])
    step = 10.0 ** (-decimals) * 10.0 ** int(exponent or 0)
    if not decimals and not exponent and mantissa.strip("+-") != "0":
        step *= 10 ** (len(mantissa) - len(mantissa.rstrip("0")))  # 120 may be 2 sig. figures
    scales = (100.0, 1.0) if percent else (1.0,)  # a percent is recorded as 0.342 or as 34.2
    tolerance = step / 2 + 1e-9 * abs(x)
    return any(abs(v * scale - x) <= tolerance for v in values for scale in scales)


def assert_traceable(report: str, results: dict) -> None:
    """Every number in report.md is a value in results.json, as printed (the paper's quoted
    figures and fixed phrases aside)."""
    for constant in (*PAPER.values(), "13-grams", "Figure 3", "Figures 6, 8", "Figure 13"):
        report = report.replace(constant, "")
    values = numbers_in(results)
    values += [abs(v) for v in values if v < 0]  # "0.0001 below the target" prints −0.0001
    missing = [m.group() for m in NUMBER.finditer(report) if not recorded(m.group(), values)]
    assert not missing, f"numbers in report.md not in results.json: {missing[:20]}"
