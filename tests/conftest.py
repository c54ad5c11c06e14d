"""Shared fixtures: one small corpus, TokenStore and tiny model, built once per test session;
the trainer's stores; the eval tests' store and checkpoint; the demo corpus's sources. Their
helpers are in helpers.py.

Tests marked ``slow`` (real subprocesses: torchrun, the demo, kill -9) are skipped unless
pytest runs with ``--slow``, as CI does (the README's test command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    make_checkpoint,
    make_docs,
    make_eval_store,
    make_stores,
    markov_docs,
    torch_threads,
    write_jsonl,
    write_texts,
)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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
    from rho.data.tokenize import tokenize_corpus

    out = tmp_path_factory.mktemp("stores") / "tokens"
    return tokenize_corpus([str(corpus)], out, train_vocab=400, progress=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, token_store) -> Path:
    from rho.models import build_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_model("tiny", token_store.vocab_size, seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The trainer's: a TokenStore, a LossStore (fp32 scoring) from a separately initialised
    reference model saved with the training tokenizer, and a second corpus with its own
    tokenizer."""
    from rho.data.tokenize import tokenize_corpus

    root = tmp_path_factory.mktemp("trainer")
    s = make_stores(root, n_docs=150, corpus_seed=0, ref_seed=123)
    other = write_texts(root / "other.jsonl", markov_docs(40, seed=7))
    s.other_tokens = root / "other_tokens"
    s.other_store = tokenize_corpus([str(other)], s.other_tokens, train_vocab=300, progress=False)
    return s


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory):
    """The eval tests': an ASCII corpus in two domains (make_eval_store)."""
    return make_eval_store(tmp_path_factory.mktemp("eval-corpus"))


@pytest.fixture(scope="module")
def eval_checkpoint(tmp_path_factory, eval_store) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("eval-ckpt") / "run", eval_store)


@pytest.fixture(scope="module")
def eval_model(eval_checkpoint):
    from rho.models import load_model

    return load_model(eval_checkpoint).eval()


@pytest.fixture(scope="module")
def sources() -> dict:
    """The demo corpus's SOURCES.json."""
    from rho.corpora import DEMO_DIR

    return json.loads((DEMO_DIR / "SOURCES.json").read_text(encoding="utf-8"))
