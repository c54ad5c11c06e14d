"""rho.evaluate: held-out loss and bits per byte per domain, few-shot tasks, lm-eval, compare."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rho import evaluate as ev
from rho.errors import UserError
from rho.models import build_model
from rho.store import TokenStore, write_token_store
from rho.tokenize import tokenize_corpus

WORDS = "the cat sat on a mat while rain fell far away and then one dog ran".split()


def _docs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 30))) for _ in range(n)]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TokenStore:
    """An ASCII corpus in two domains (ASCII: decoding one id alone gives its exact bytes)."""
    root = tmp_path_factory.mktemp("eval-corpus")
    records = [
        {"text": text, "domain": "prose" if i % 3 else "math"}
        for i, text in enumerate(_docs(60, seed=0))
    ]
    records += [{"text": f"{i} plus {i} is {2 * i}.", "domain": "math"} for i in range(20)]
    corpus = _write_jsonl(root / "corpus.jsonl", records)
    return tokenize_corpus([str(corpus)], root / "tokens", train_vocab=320, progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, store) -> Path:
    """A tiny model saved with the store's tokenizer, like a `rho train` output directory."""
    path = tmp_path_factory.mktemp("eval-ckpt") / "run"
    build_model("tiny", store.vocab_size, seed=3).save_pretrained(path)
    store.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    from rho.models import load_model

    return load_model(checkpoint).eval()


# --- Numeric answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("so x = -7", "-7"),
        ("5-3 = 2", "2"),
        ("5-3", "3"),  # a minus attached to an operand is subtraction, not a sign
        ("v = (-3)", "-3"),
        ("It costs $3.50, or 0.25 each", "0.25"),
        ("about .5", "0.5"),
        ("a total of 1,234 apples", "1234"),
        ("Answer: 1,000,000.5", "1000000.5"),
        ("first 7 then 12,3456", "3456"),  # not a thousands group
        ("1,2 and 3", "3"),
        ("it is 3/4", "3/4"),
        ("it is 3 / 4 of it", "3/4"),
        ("-2/3", "-2/3"),
        (r"$\frac{3}{4}$", "3/4"),
        (r"so -\dfrac{1}{2} here", "-1/2"),
        (r"\frac{-1}{-2}", "1/2"),
        (r"\tfrac{1,000}{3}", "1000/3"),
        ("20 apples, then 50%", "50"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert ev.extract_answer(text) == expected


def test_numbers_compare_numerically():
    assert ev.answers_match("0.75", "3/4")
    assert ev.answers_match("1/3", "0.333333")  # within 1e-6
    assert not ev.answers_match("0.3333", "1/3")
    assert ev.answers_match("1000000", "1000000.0000001")
    assert not ev.answers_match("-3", "3")
    assert not ev.answers_match(None, "3")
    assert not ev.answers_match("1/0", "1")
    assert ev.number_value("-1/2") == -0.5
    assert ev.gold_answer("Janet has 3 eggs, then 6.\n#### 1,072") == "1072"
    assert ev.gold_answer("3/2") == "3/2"


def test_parse_number_needs_the_whole_string():
    assert ev.parse_number("3/2") == 1.5
    assert ev.parse_number(" $1,234. ") == 1234.0
    assert ev.parse_number(r"-\frac{1}{4}") == -0.25
    assert ev.parse_number("-5") == -5.0
    for text in ("100 (i.e., all values)", "sqrt(2)", "C(10, 5), or 252", "No", "n!", "2^(n-1)"):
        assert ev.parse_number(text) is None, text


# --- Bytes per token ------------------------------------------------------------------------------


def test_byte_lengths_sum_to_utf8_bytes(tmp_path):
    """Byte-level BPE pieces map back to exact bytes, even halves of multi-byte characters."""
    texts = ["café au lait — naïve", "日本語のテキスト and ascii", "emoji 🙂 mixed 1,234 ünïcödé"]
    corpus = _write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts * 5])
    store = tokenize_corpus([str(corpus)], tmp_path / "tokens", train_vocab=300, progress=False)
    tok = store.tokenizer()
    table = ev.byte_lengths(tok, store.vocab_size)
    assert table.shape == (store.vocab_size,) and table[store.eos_id] == 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert table[ids].sum() == len(text.encode("utf-8"))
    stream = np.asarray(store.tokens, dtype=np.int64)
    assert table[stream].sum() == sum(len(t.encode()) for t in texts * 5)
    # A store without domains reports overall figures only; every byte but window starts counts.
    model = build_model("tiny", store.vocab_size)
    result = ev.evaluate_store(model, store, seq_len=16, progress=False)
    assert result["domains"] == {}
    assert result["overall"]["bytes"] == table[stream].sum() - table[stream[::16]].sum()


# --- Held-out loss per domain ---------------------------------------------------------------------


def _direct(model, store: TokenStore, seq_len: int) -> dict[int, list[float]]:
    """Per domain: [nats, tokens, bytes], from a plain forward + F.cross_entropy per window."""
    tok = store.tokenizer()
    special = set(tok.all_special_ids)
    ids = np.asarray(store.tokens, dtype=np.int64)
    domains = store.token_domains()
    domains = np.zeros(len(ids), dtype=np.int64) if domains is None else domains
    sums: dict[int, list[float]] = {}
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            window = torch.from_numpy(ids[start : start + seq_len])
            if len(window) < 2:
                continue
            logits = model(input_ids=window[None]).logits[0].double()
            losses = F.cross_entropy(logits[:-1], window[1:], reduction="none")
            for offset, loss in enumerate(losses.tolist(), start=start + 1):
                t = int(ids[offset])
                n_bytes = 0 if t in special else len(tok.decode([t]).encode("utf-8"))
                entry = sums.setdefault(int(domains[offset]), [0.0, 0, 0])
                entry[0] += loss
                entry[1] += 1
                entry[2] += n_bytes
    return sums


def test_per_domain_loss_on_hand_made_store(tmp_path, store, model):
    """Hand-made documents in three domains, a document crossing window boundaries and a short
    last window: per-domain mean loss equals a direct computation."""
    rng = np.random.default_rng(7)
    eos = store.eos_id
    lengths = [5, 23, 9, 14, 3, 17]
    docs = [np.append(rng.integers(1, store.vocab_size, size=n - 1), eos) for n in lengths]
    tokens = np.concatenate(docs)
    hand = write_token_store(
        tmp_path / "hand",
        tokens,
        np.concatenate([[0], np.cumsum(lengths)]),
        store.tokenizer_dir,
        vocab_size=store.vocab_size,
        eos_id=eos,
        doc_domains=np.array([0, 1, 2, 1, 0, 2]),
        domain_names=["a", "b", "c"],
    )
    seq_len = 16  # 71 tokens: four full windows and a short last one
    result = ev.evaluate_store(model, hand, seq_len=seq_len, batch_size=3, progress=False)
    direct = _direct(model, hand, seq_len)
    n_scored = len(tokens) - math.ceil(len(tokens) / seq_len)
    assert result["overall"]["tokens"] == n_scored
    for index, name in enumerate(["a", "b", "c"]):
        nats, count, _ = direct[index]
        got = result["domains"][name]
        assert got["tokens"] == count
        assert got["loss"] == pytest.approx(nats / count, rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    total = sum(v[0] for v in direct.values())
    assert result["overall"]["loss"] == pytest.approx(total / n_scored, rel=1e-5)


def test_bits_per_byte_equals_direct_computation(store, model):
    seq_len = 48
    result = ev.evaluate_store(model, store, seq_len=seq_len, batch_size=4, progress=False)
    direct = _direct(model, store, seq_len)
    nats = sum(v[0] for v in direct.values())
    n_bytes = sum(v[2] for v in direct.values())
    assert result["overall"]["bytes"] == n_bytes
    assert result["overall"]["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, 1e-5)
    names = store.domain_names
    assert set(result["domains"]) == set(names)
    for index, name in enumerate(names):
        nats_d, count, bytes_d = direct[index]
        assert result["domains"][name]["bytes"] == bytes_d
        assert result["domains"][name]["bits_per_byte"] == pytest.approx(
            nats_d / math.log(2) / bytes_d, rel=1e-5
        )
    # Batching does not change the answer.
    again = ev.evaluate_store(model, store, seq_len=seq_len, batch_size=1, progress=False)
    assert again["overall"]["loss"] == pytest.approx(result["overall"]["loss"], rel=1e-5)


def test_eval_cli_writes_json_and_markdown(tmp_path, store, checkpoint, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--tokens", str(store.path), "--seq-len", "32"]
    assert ev.cli([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| domain | tokens | bytes | loss | perplexity | bits/byte |" in printed
    assert "| overall |" in printed and "| math |" in printed and "| prose |" in printed
    record = json.loads((out / "eval.json").read_text())
    result = record["loss"]["tokens"]
    assert result["seq_len"] == 32 and result["model"] == str(checkpoint)
    assert set(result["domains"]) == {"math", "prose"}
    assert result["overall"]["perplexity"] == pytest.approx(math.exp(result["overall"]["loss"]))
    assert "## Held-out loss: tokens" in (out / "eval.md").read_text()


def test_eval_cli_refuses_a_checkpoint_with_another_tokenizer(tmp_path, store):
    corpus = _write_jsonl(tmp_path / "other.jsonl", [{"text": t} for t in _docs(30, seed=9)])
    other = tokenize_corpus([str(corpus)], tmp_path / "other", train_vocab=300, progress=False)
    ckpt = tmp_path / "ckpt"
    build_model("tiny", store.vocab_size).save_pretrained(ckpt)
    other.tokenizer().save_pretrained(ckpt)
    with pytest.raises(UserError, match="another tokenizer"):
        ev.cli(["--model", str(ckpt), "--tokens", str(store.path), "--quiet"])


# --- Few-shot generative tasks --------------------------------------------------------------------


def _task(tmp_path: Path, n: int = 7) -> Path:
    records = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)]
    records[3]["answer"] = "She has 3 and 3 more.\n#### 6"  # GSM8K-style gold answer
    return _write_jsonl(tmp_path / "add.jsonl", records)


def test_generative_task_run(tmp_path, checkpoint, capsys):
    task = _task(tmp_path)
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--task", str(task), "--shots", "2", "--out", str(out)]
    assert ev.cli([*argv, "--max-new-tokens", "6", "--batch-size", "3", "--quiet"]) == 0
    assert "| add | 2 | 5 |" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "task_outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 5  # 7 items, the first 2 used as shots
    for row in rows:
        assert {"prompt", "output", "extracted", "correct"} <= set(row) and row["task"] == "add"
        assert row["prompt"].startswith("Question: What is 0 plus 0?\nAnswer: 0\n\n")
        assert row["prompt"].endswith(f"Question: {row['question']}\nAnswer:")
        assert "\n\n" not in row["output"] and "Question:" not in row["output"]
        assert row["correct"] == ev.answers_match(ev.extract_answer(row["output"]), row["gold"])
    assert rows[1]["gold"] == "6"
    summary = json.loads((out / "eval.json").read_text())["tasks"]["add"]
    assert summary["items"] == 5 and summary["shots"] == 2
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 5

    # A shots file: every task item is evaluated; --limit caps them; other tasks' rows are kept.
    shots = _write_jsonl(tmp_path / "shots.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    other = _write_jsonl(tmp_path / "other.jsonl", [{"question": "2 + 2?", "answer": "4"}] * 4)
    argv = ["--model", str(checkpoint), "--task", str(other), "--shots", "1", "--out", str(out)]
    ev.cli([*argv, "--shots-file", str(shots), "--limit", "3", "--max-new-tokens", "4", "--quiet"])
    rows = [json.loads(line) for line in (out / "task_outputs.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows].count("add") == 5
    assert [r["task"] for r in rows].count("other") == 3
    assert set(json.loads((out / "eval.json").read_text())["tasks"]) == {"add", "other"}


def test_batched_generation_matches_one_by_one(model, checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    prompts = [ev.build_prompt([], f"What is {'very ' * i}odd?") for i in range(5)]
    one = ev.generate(model, tok, prompts, max_new_tokens=5, batch_size=1, progress=False)
    many = ev.generate(model, tok, prompts, max_new_tokens=5, batch_size=4, progress=False)
    assert one == many


def test_long_prompts_are_cut_from_the_left(store, checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    short = build_model("tiny", store.vocab_size, max_positions=32)
    outputs = ev.generate(short, tok, ["word " * 100], max_new_tokens=8, progress=False)
    assert len(outputs) == 1
    with pytest.raises(UserError, match="no room"):
        ev.generate(short, tok, ["x"], max_new_tokens=32, progress=False)


def test_stop_sequences(checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    assert ev.cut_at_stop("42\n\nQuestion: next") == "42"
    assert ev.cut_at_stop(" 7 Question: x\n\n") == " 7 "
    assert ev.cut_at_stop("no stop") == "no stop"
    prompt = tok(["Answer:"], return_tensors="pt")["input_ids"]
    rows = [" 12\n\nQuestion", " 12 and", " so Question:"]
    ids = [torch.cat([prompt[0], torch.tensor(tok(r)["input_ids"])]) for r in rows]
    width = max(len(i) for i in ids)
    batch = torch.stack([F.pad(i, (0, width - len(i)), value=tok.pad_token_id) for i in ids])
    criteria = ev._stop_criteria(tok, prompt.shape[1], ev.STOP_SEQUENCES)[0]
    assert criteria(batch, None).tolist() == [True, False, True]


def test_non_numeric_gold_uses_the_first_line():
    assert ev.score_output(" Paris\nQuestion: more", "paris.") == ("Paris", True)
    assert ev.score_output(" 12 apples", "#### 12") == ("12", True)
    assert ev.score_output(" none", "12") == (None, False)


def test_task_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "no answer"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        ev.load_task(str(bad))
    with pytest.raises(UserError, match="neither"):
        ev.load_task("no_such_task")
    with pytest.raises(UserError, match="does not exist"):
        ev.load_task(str(tmp_path / "missing.jsonl"))
    items = [{"question": "q", "answer": "1"}] * 2
    with pytest.raises(UserError, match="more examples"):
        ev.evaluate_task(None, None, items, shots=3)
    with pytest.raises(UserError, match="no items left"):
        ev.evaluate_task(None, None, items, shots=2)


def test_champ_task_loads():
    pytest.importorskip("champ_dataset", reason="champ-dataset is not installed")
    name, items = ev.load_task("champ")
    assert name == "champ" and len(items) >= 50
    for item in items:
        assert item["question"] and ev.parse_number(item["answer"]) is not None
    assert len({item["id"] for item in items}) == len(items)
    prompt = ev.build_prompt(items[:2], items[2]["question"])
    assert prompt.count("Question: ") == 3 and prompt.endswith("\nAnswer:")


def test_champ_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "champ_dataset", None)
    with pytest.raises(UserError, match="pip install champ-dataset"):
        ev.load_task("champ")


# --- Compare --------------------------------------------------------------------------------------


def _run(tmp_path: Path, name: str, loss: float, accuracy: float) -> Path:
    out = tmp_path / name
    metrics = {"tokens": 10, "bytes": 30, "loss": loss, "perplexity": math.exp(loss)}
    metrics["bits_per_byte"] = loss * 10 / math.log(2) / 30
    result = {"tokens": "held", "seq_len": 8, "overall": metrics, "domains": {"web": metrics}}
    ev.save_eval(out, "loss", "held", result, name)
    task = {"shots": 4, "items": 10, "correct": int(accuracy * 10), "accuracy": accuracy}
    ev.save_eval(out, "tasks", "champ", task, name)
    return out


def test_compare_runs_side_by_side(tmp_path, capsys):
    a = _run(tmp_path, "clm", 3.0, 0.1)
    b = _run(tmp_path, "slm", 2.5, 0.3)
    assert ev.cli(["--compare", str(a), str(b / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric | clm | slm |"
    assert "| held · overall · loss | 3.0000 | **2.5000** |" in table
    assert "| task champ · 4-shot accuracy | 0.1000 | **0.3000** |" in table
    assert "| held · web · bits/byte |" in table
    with pytest.raises(UserError, match="no eval.json"):
        ev.cli(["--compare", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="nothing to evaluate"):
        ev.cli(["--model", str(a)])


# --- lm-evaluation-harness bridge -----------------------------------------------------------------

TASK_YAML = """\
task: rho_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
fewshot_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  do_sample: false
  max_gen_toks: 4
metadata:
  version: 1.0
"""


def test_lm_eval_bridge_on_a_local_task(tmp_path, checkpoint, monkeypatch, capsys):
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (pip install 'rho[eval]')")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    data = _task(tmp_path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rho_add.yaml").write_text(TASK_YAML.format(data=data))
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--lm-eval-tasks", "rho_add"]
    argv += ["--lm-eval-include", str(tasks), "--lm-eval-local-only"]
    argv += ["--limit", "3", "--num-fewshot", "1"]
    assert ev.cli([*argv, "--out", str(out), "--device", "cpu", "--batch-size", "2"]) == 0
    results = json.loads((out / "lm_eval_results.json").read_text())
    assert results["results"]["rho_add"]["sample_len"] == 3
    record = json.loads((out / "eval.json").read_text())
    assert 0.0 <= record["lm_eval"]["metrics"]["rho_add"]["exact_match,none"] <= 1.0
    assert "| rho_add | exact_match,none |" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not know"):
        ev.run_lm_eval(checkpoint, ["rho_add_typo"], include_path=tasks, include_defaults=False)


def test_lm_eval_missing_is_a_clear_error(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match=r"pip install 'rho\[eval\]'"):
        ev.run_lm_eval(checkpoint, ["gsm8k"])
