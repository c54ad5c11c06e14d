"""rho.evaluation.fewshot (with tasks and champ): task files, prompts, generation cut at stop
sequences, k-shot exact match, and `rho eval --task`."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import make_task, rho_command, write_jsonl

from rho.errors import UserError
from rho.evaluation.answers import answers_match, extract_answer, parse_number
from rho.evaluation.fewshot import (
    STOP_SEQUENCES,
    _stop_criteria,
    build_prompt,
    cut_at_stop,
    evaluate_task,
    generate,
    load_task,
    read_task_file,
)
from rho.models import build_model


def test_generative_task_run(tmp_path, eval_checkpoint, capsys):
    task = make_task(tmp_path)
    out = tmp_path / "out"
    argv = ["--model", str(eval_checkpoint), "--task", str(task), "--shots", "2", "--out", str(out)]
    assert (
        rho_command("eval", [*argv, "--max-new-tokens", "6", "--batch-size", "3", "--quiet"]) == 0
    )
    assert "| add | 2 | 5 |" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "task_outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 5  # 7 items, the first 2 used as shots
    for row in rows:
        assert {"prompt", "output", "extracted", "correct"} <= set(row) and row["task"] == "add"
        assert row["prompt"].startswith("Question: What is 0 plus 0?\nAnswer: 0\n\n")
        assert row["prompt"].endswith(f"Question: {row['question']}\nAnswer:")
        assert "\n\n" not in row["output"] and "Question:" not in row["output"]
        assert row["correct"] == answers_match(extract_answer(row["output"]), row["gold"])
    assert rows[1]["gold"] == "6"
    summary = json.loads((out / "eval.json").read_text())["tasks"]["add"]
    assert summary["items"] == 5 and summary["shots"] == 2
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 5

    # A shots file: every task item is evaluated; --limit caps them; other tasks' rows are kept.
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "2 + 2?", "answer": "4"}] * 4)
    argv = [
        "--model",
        str(eval_checkpoint),
        "--task",
        str(other),
        "--shots",
        "1",
        "--out",
        str(out),
    ]
    rho_command(
        "eval",
        [*argv, "--shots-file", str(shots), "--limit", "3", "--max-new-tokens", "4", "--quiet"],
    )
    rows = [json.loads(line) for line in (out / "task_outputs.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows].count("add") == 5
    assert [r["task"] for r in rows].count("other") == 3
    assert set(json.loads((out / "eval.json").read_text())["tasks"]) == {"add", "other"}


def test_batched_generation_matches_one_by_one(eval_model, eval_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(eval_checkpoint)
    prompts = [build_prompt([], f"What is {'very ' * i}odd?") for i in range(5)]
    one = generate(eval_model, tok, prompts, max_new_tokens=5, batch_size=1, progress=False)
    many = generate(eval_model, tok, prompts, max_new_tokens=5, batch_size=4, progress=False)
    assert one == many


def test_long_prompts_are_cut_from_the_left(eval_store, eval_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(eval_checkpoint)
    short = build_model("tiny", eval_store.vocab_size, max_positions=32)
    outputs = generate(short, tok, ["word " * 100], max_new_tokens=8, progress=False)
    assert len(outputs) == 1
    with pytest.raises(UserError, match="no room"):
        generate(short, tok, ["x"], max_new_tokens=32, progress=False)


def test_stop_sequences(eval_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(eval_checkpoint)
    assert cut_at_stop("42\n\nQuestion: next") == "42"
    assert cut_at_stop(" 7 Question: x\n\n") == " 7 "
    assert cut_at_stop("no stop") == "no stop"
    prompt = tok(["Answer:"], return_tensors="pt")["input_ids"]
    rows = [" 12\n\nQuestion", " 12 and", " so Question:"]
    ids = [torch.cat([prompt[0], torch.tensor(tok(r)["input_ids"])]) for r in rows]
    width = max(len(i) for i in ids)
    batch = torch.stack([F.pad(i, (0, width - len(i)), value=tok.pad_token_id) for i in ids])
    criteria = _stop_criteria(tok, prompt.shape[1], STOP_SEQUENCES)[0]
    assert criteria(batch, None).tolist() == [True, False, True]


def test_task_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "no answer"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        load_task(str(bad))
    with pytest.raises(UserError, match="neither"):
        load_task("no_such_task")
    with pytest.raises(UserError, match="does not exist"):
        load_task(str(tmp_path / "missing.jsonl"))
    items = [{"question": "q", "answer": "1"}] * 2
    with pytest.raises(UserError, match="more examples"):
        evaluate_task(None, None, items, shots=3)
    with pytest.raises(UserError, match="no items left"):
        evaluate_task(None, None, items, shots=2)


def test_champ_task_loads():
    pytest.importorskip("champ_dataset", reason="champ-dataset is not installed")
    name, items = load_task("champ")
    assert name == "champ" and len(items) >= 50
    for item in items:
        assert item["question"] and parse_number(item["answer"]) is not None
    assert len({item["id"] for item in items}) == len(items)
    prompt = build_prompt(items[:2], items[2]["question"])
    assert prompt.count("Question: ") == 3 and prompt.endswith("\nAnswer:")


def test_champ_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "champ_dataset", None)
    with pytest.raises(UserError, match="pip install champ-dataset"):
        load_task("champ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": ' + "9" * 5000 + "}", "invalid JSON"),
        ('{"question": ' + "[" * 3000 + "]" * 3000 + ', "answer": 1}', "invalid JSON"),
        ('{"question": "\\ud800", "answer": "1"}', "surrogate"),
        ('{"question": {"a": 1}, "answer": "1"}', "question"),
        ('{"question": "q", "answer": NaN}', "answer"),
    ],
)
def test_hostile_task_lines_are_one_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "1+1", "answer": 2}\n' + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        read_task_file(path)
    assert "t.jsonl:2" in str(err.value) and "\n" not in str(err.value)


def test_bogus_device_is_one_line(tmp_path, eval_checkpoint, eval_store):
    given = ["--model", eval_checkpoint, "--tokens", eval_store.path, "--out", tmp_path / "e"]
    with pytest.raises(UserError, match="'bogus' is not a device"):
        rho_command("eval", [*given, "--device", "bogus"])
    with pytest.raises(UserError, match="no cuda device|only"):
        rho_command("eval", [*given, "--device", "cuda:7"])
