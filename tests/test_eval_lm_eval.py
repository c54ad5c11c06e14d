"""rho.evaluation.lm_eval_bridge: lm-evaluation-harness on a local task, and its absence."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import make_checkpoint, make_eval_store, make_task, rho_command

from rho.errors import UserError
from rho.evaluation.lm_eval_bridge import run_lm_eval


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    store = make_eval_store(tmp_path_factory.mktemp("eval-corpus"))
    return make_checkpoint(tmp_path_factory.mktemp("eval-ckpt") / "run", store)


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
    data = make_task(tmp_path)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rho_add.yaml").write_text(TASK_YAML.format(data=data))
    out = tmp_path / "out"
    argv = ["--model", str(checkpoint), "--lm-eval-tasks", "rho_add"]
    argv += ["--lm-eval-include", str(tasks), "--lm-eval-local-only"]
    argv += ["--limit", "3", "--num-fewshot", "1"]
    assert (
        rho_command("eval", [*argv, "--out", str(out), "--device", "cpu", "--batch-size", "2"]) == 0
    )
    results = json.loads((out / "lm_eval_results.json").read_text())
    assert results["results"]["rho_add"]["sample_len"] == 3
    record = json.loads((out / "eval.json").read_text())
    assert 0.0 <= record["lm_eval"]["metrics"]["rho_add"]["exact_match,none"] <= 1.0
    assert "| rho_add | exact_match,none |" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not know"):
        run_lm_eval(checkpoint, ["rho_add_typo"], include_path=tasks, include_defaults=False)


def test_lm_eval_missing_is_a_clear_error(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match=r"pip install 'rho\[eval\]'"):
        run_lm_eval(checkpoint, ["gsm8k"])
