"""Property-based tests of every reader of user files (rho.io.schema): whatever the input, a reader
returns a clean result or raises one UserError of one line, never any other exception.

Each reader runs 1,000 generated inputs in-process: JSON of any shape (Hypothesis's recursive
strategies), plus targeted hostile cases (huge integers, deep nesting, NaN and Infinity, lone
surrogates, wrong types, YAML alias bombs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rho.data.corpus import Source, read_documents
from rho.errors import UserError
from rho.evaluation.fewshot import build_prompt, read_task_file
from rho.evaluation.results import compare_runs, load_eval, render_markdown
from rho.experiment.settings import ExperimentConfig, load_yaml
from rho.io.files import read_json, read_jsonl
from rho.io.inspect_store import describe
from rho.io.store import LossStore, TokenStore
from rho.scoring.loss_writer import loss_store_meta, read_meta, write_loss_store

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SCRATCH = Path(tempfile.mkdtemp(prefix="rho-fuzz-"))

# --- Strategies -----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "no", "yes", "1e30", "nan", "\ud800", "-1", "rho.TokenStore"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HOSTILE_TEXT = [
    "[" * 5000 + "]" * 5000,
    '{"a": ' + "9" * 5000 + "}",
    '{"text": "a\\ud800b"}',
    '{"text": "x", "noise_spans": [[0, Infinity]]}',
    '{"text": "x", "noise_spans": [[NaN, 1]]}',
    '{"text": "x", "noise_spans": [[0, 1e999]]}',
    '{"text": "x", "noise_spans": "ab"}',
    '{"text": "x", "domain": ["a"]}',
    "NaN",
    "-Infinity",
    '{"a": 1e400}',
    '"\\udc00"',
]


def dumps(value) -> str:
    """JSON text of any generated value (Python writes NaN/Infinity; surrogates escaped)."""
    return json.dumps(value, allow_nan=True)


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8


def mutated(base: dict, draw_key, value, delete: bool) -> dict:
    meta = dict(base)
    if delete:
        meta.pop(draw_key, None)
    else:
        meta[draw_key] = value
    return meta


def check_clean_or_one_line(fn, *args):
    """Call a reader: its result, or None when it raised a one-line UserError; any other
    exception (a traceback for the user) fails the test."""
    try:
        return fn(*args)
    except UserError as err:
        assert "\n" not in str(err), str(err)
        return None


# --- Corpus lines ---------------------------------------------------------------------------------

record_values = st.fixed_dictionaries(
    {},
    optional={"text": json_values | st.text(), "domain": json_values, "noise_spans": json_values},
)
corpus_lines = st.lists(
    record_values.map(dumps) | json_values.map(dumps) | st.sampled_from(HOSTILE_TEXT) | st.text(),
    min_size=1,
    max_size=4,
)


@pytest.mark.slow
@FUZZ
@given(lines=corpus_lines)
def test_corpus_jsonl_lines(lines):
    path = SCRATCH / "corpus.jsonl"
    path.write_bytes(b"\n".join(as_bytes(line.replace("\n", " ")) for line in lines))
    docs = check_clean_or_one_line(lambda: list(read_documents(Source(path))))
    for doc in docs or []:
        doc.text.encode("utf-8")  # no lone surrogate reaches the tokenizer
        assert doc.domain is None or isinstance(doc.domain, str)
        assert all(isinstance(a, int) and isinstance(b, int) for a, b in doc.noise_spans)


@pytest.mark.slow
@FUZZ
@given(text=st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_corpus_txt_files(text):
    path = SCRATCH / "doc.txt"
    path.write_bytes(as_bytes(text))
    docs = check_clean_or_one_line(lambda: list(read_documents(Source(path))))
    for doc in docs or []:
        doc.text.encode("utf-8")


# --- Store metas ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_stores(token_store):
    """A copy of the session's TokenStore and a LossStore of it (losses made up: no model)."""
    root = SCRATCH / "stores"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(token_store.path, root / "tokens")
    tokens = TokenStore(root / "tokens")
    meta = loss_store_meta(tokens, 64, 4, model="m", model_hash="ab" * 32, score_dtype="float32")
    losses = np.random.default_rng(0).random(tokens.n_tokens).astype(np.float16)
    write_loss_store(root / "losses", tokens, losses, meta)
    return tokens, root / "losses"


def _meta_cases(base: dict):
    keys = st.sampled_from([*base, "extra"])
    return st.tuples(keys, json_values, st.booleans()).map(lambda t: mutated(base, *t))


@pytest.mark.slow
def test_token_store_meta(fuzz_stores):
    tokens, _ = fuzz_stores
    base = json.loads((tokens.path / "meta.json").read_text())

    @FUZZ
    @given(meta=_meta_cases(base) | json_values)
    def run(meta):
        (tokens.path / "meta.json").write_bytes(as_bytes(dumps(meta)))
        store = check_clean_or_one_line(TokenStore, tokens.path)
        if store is not None:
            check_clean_or_one_line(describe, tokens.path)

    try:
        run()
    finally:
        (tokens.path / "meta.json").write_text(json.dumps(base))


@pytest.mark.slow
def test_loss_store_meta(fuzz_stores):
    tokens, losses = fuzz_stores
    base = json.loads((losses / "meta.json").read_text())

    @FUZZ
    @given(meta=_meta_cases(base) | json_values)
    def run(meta):
        (losses / "meta.json").write_bytes(as_bytes(dumps(meta)))
        store = check_clean_or_one_line(LossStore, losses)
        if store is not None:
            assert isinstance(store.complete, bool) and store.seq_len >= 2
            check_clean_or_one_line(store.check_matches, tokens, store.seq_len)
            check_clean_or_one_line(describe, losses)
        check_clean_or_one_line(read_meta, losses)

    try:
        run()
    finally:
        (losses / "meta.json").write_text(json.dumps(base))


# --- eval.json (rho eval --compare) ------------------------------------------------------------

METRICS = {"tokens": 10, "bytes": 30, "loss": 2.5, "perplexity": 12.1, "bits_per_byte": 1.2}
EVAL = {
    "format": "rho.eval",
    "version": 1,
    "model": "m",
    "loss": {"held": {"tokens": "t", "seq_len": 8, "overall": METRICS, "domains": {"a": METRICS}}},
    "tasks": {"champ": {"shots": 4, "items": 10, "correct": 3, "accuracy": 0.3}},
    "lm_eval": {"metrics": {"gsm8k": {"acc,none": 0.1}}},
}


def _nested_mutation(value, path: list, new, depth: int = 0):
    """``value`` with the item at ``path`` (indices into its keys) replaced by ``new``."""
    if not path or not isinstance(value, dict) or not value:
        return new
    keys = sorted(value)
    key = keys[path[0] % len(keys)]
    return {**value, key: _nested_mutation(value[key], path[1:], new, depth + 1)}


eval_records = st.tuples(st.lists(st.integers(0, 9), max_size=5), json_values).map(
    lambda t: _nested_mutation(EVAL, t[0], t[1])
)


@pytest.mark.slow
@FUZZ
@given(record=eval_records | json_values)
def test_eval_json_compare(record):
    run = SCRATCH / "eval-run"
    run.mkdir(exist_ok=True)
    (run / "eval.json").write_bytes(as_bytes(dumps(record)))
    table = check_clean_or_one_line(compare_runs, [run, run / "eval.json"])
    assert table is None or table.startswith("| metric |")
    loaded = check_clean_or_one_line(load_eval, run)
    if loaded is not None:
        render_markdown(loaded)


# --- Task files -----------------------------------------------------------------------------------

task_lines = st.lists(
    st.fixed_dictionaries({}, optional={"question": json_values, "answer": json_values}).map(dumps)
    | json_values.map(dumps)
    | st.sampled_from(HOSTILE_TEXT)
    | st.text(max_size=30),
    min_size=1,
    max_size=4,
)


@pytest.mark.slow
@FUZZ
@given(lines=task_lines)
def test_task_files(lines):
    path = SCRATCH / "task.jsonl"
    path.write_bytes(b"\n".join(as_bytes(line.replace("\n", " ")) for line in lines))
    items = check_clean_or_one_line(read_task_file, path)
    if items is not None:
        prompt = build_prompt(items[:-1], items[-1]["question"])
        prompt.encode("utf-8")


# --- Experiment YAML ------------------------------------------------------------------------------

FIELDS = [f for f in ExperimentConfig.__dataclass_fields__]
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
HOSTILE_YAML = [
    ALIAS_BOMB,
    "seq_len: &s [*s]\n",
    "seq_len: " + "9" * 5000 + "\n",
    "seq_len: " + "[" * 2000 + "\n",
    "seeds: [a]\n",
    "seq_len: 32.5\n",
    "ratio: .nan\n",
    "learning_rate: .inf\n",
    "- a\n- b\n",
    "analyze: no\n",
    "tokenizer: null\n",
    "curated: x.jsonl\n",
]
yaml_docs = (
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=4).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)
    )
    | st.sampled_from(HOSTILE_YAML)
    | st.text(max_size=60)
)


@pytest.mark.slow
@FUZZ
@given(text=yaml_docs)
def test_experiment_yaml(text):
    path = SCRATCH / "config.yaml"
    path.write_bytes(as_bytes(text))
    values = check_clean_or_one_line(load_yaml, path)
    if values is not None:
        config = check_clean_or_one_line(lambda: ExperimentConfig(**values))
        if config is not None:
            json.dumps(config.as_dict(), sort_keys=True)  # what a stage key hashes


# --- Run files (files.read_json / read_jsonl: every run-file reader goes through them) --------


@pytest.mark.slow
@FUZZ
@given(text=json_values.map(dumps) | st.sampled_from(HOSTILE_TEXT) | st.text())
def test_run_files(text):
    path = SCRATCH / "rho_options.json"
    path.write_bytes(as_bytes(text))
    check_clean_or_one_line(read_json, path)
    assert isinstance(read_jsonl(path), list)


# --- Targeted cases: each failed before the schema layer ----------------------------------------


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(ALIAS_BOMB.replace("a:", "curated:", 1))
    assert len(config.read_bytes()) < 1000
    with pytest.raises(UserError, match="expands to more than"):
        load_yaml(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seq_len: 32.5\n", "seq_len is 32.5"),
        ("seeds: [a]\n", "seeds.0 is 'a'"),
        ("ratio: .nan\n", "ratio is nan"),
        ("analyze: 'no'\n", "analyze is 'no'"),
        ("seq_len: " + "9" * 5000 + "\n", "cannot be read"),
        ("seq_len: 100000000000000000000\n", "seq_len of 67 bits is out of range"),
        ("curated: x.jsonl\n", "curated is 'x.jsonl'"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_refused(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(UserError, match=message):
        load_yaml(config)


def test_yaml_numbers_written_as_text_still_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nratio: 1\nseeds: [0, 1]\n")
    assert load_yaml(config) == {"learning_rate": 1e-3, "ratio": 1.0, "seeds": [0, 1]}


@pytest.mark.parametrize("text", HOSTILE_TEXT[:3])
def test_hostile_json_files_are_one_line(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(UserError, match="unreadable or corrupted"):
        read_json(path)
    assert read_jsonl(path) == []


# --- Targeted cases of the options and files around the readers ---------------------------------


def rho_error(capsys, *args) -> str:
    from rho.cli import main

    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--gradient_accumulation_steps", "0"],
            "--gradient_accumulation_steps must be at least 1",
        ),
        (["--learning_rate", "nan"], "--learning_rate is nan"),
        (["--learning_rate", "inf"], "--learning_rate must be a finite number"),
        (["--seq_len", "100000000"], "seq_len 100,000,000 needs about"),
    ],
)
def test_training_numbers_that_cannot_train_are_one_line(
    tmp_path, capsys, token_store, flags, message
):
    out = tmp_path / "run"
    err = rho_error(capsys, "train", "--tokens", token_store.path, "--preset", "tiny",
                    "--selection", "none", "--output_dir", out, *flags)  # fmt: skip
    assert message in err


def test_score_device_and_output_are_checked_first(tmp_path, capsys, token_store, model_dir):
    base = ("score", "--model", model_dir, "--tokens", token_store.path, "--seq-len", 16)
    err = rho_error(capsys, *base, "--out", tmp_path / "L", "--device", "bogus")
    assert "--device 'bogus' is not a device" in err
    (tmp_path / "afile").write_text("x")
    err = rho_error(capsys, *base, "--out", tmp_path / "afile" / "S")
    assert "afile is a file, not a directory" in err


def test_a_window_that_cannot_fit_in_memory_is_refused_before_allocating(token_store):
    from rho.data.batches import WindowCollator, WindowDataset

    with pytest.raises(UserError, match="seq_len 100,000,000 needs about"):
        WindowDataset(token_store, 100_000_000)
    with pytest.raises(UserError, match="a batch of 16 x 10,000,000,000 tokens needs"):
        WindowCollator(10_000_000_000)([{"input_ids": np.zeros(3)}] * 16)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_safetensors_are_one_line(tmp_path, model_dir, damage):
    from rho.models import load_model

    copy = Path(shutil.copytree(model_dir, tmp_path / "m"))
    weights = copy / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.raises(UserError, match="cannot load model"):
        load_model(copy)
