"""Shared fixtures: one small corpus, TokenStore and tiny model, built once per test session."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

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
