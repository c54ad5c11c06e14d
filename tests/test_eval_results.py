"""rho.eval.results: eval.json / eval.md, and `rho eval --compare`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rho.errors import UserError
from rho.eval.cli import cli
from rho.eval.results import save_eval


def _run(tmp_path: Path, name: str, loss: float, accuracy: float) -> Path:
    out = tmp_path / name
    metrics = {"tokens": 10, "bytes": 30, "loss": loss, "perplexity": math.exp(loss)}
    metrics["bits_per_byte"] = loss * 10 / math.log(2) / 30
    result = {"tokens": "held", "seq_len": 8, "overall": metrics, "domains": {"web": metrics}}
    save_eval(out, "loss", "held", result, name)
    task = {"shots": 4, "items": 10, "correct": int(accuracy * 10), "accuracy": accuracy}
    save_eval(out, "tasks", "champ", task, name)
    return out


def test_compare_runs_side_by_side(tmp_path, capsys):
    a = _run(tmp_path, "clm", 3.0, 0.1)
    b = _run(tmp_path, "slm", 2.5, 0.3)
    assert cli(["--compare", str(a), str(b / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric | clm | slm |"
    assert "| held · overall · loss | 3.0000 | **2.5000** |" in table
    assert "| task champ · 4-shot accuracy | 0.1000 | **0.3000** |" in table
    assert "| held · web · bits/byte |" in table
    with pytest.raises(UserError, match="no eval.json"):
        cli(["--compare", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="nothing to evaluate"):
        cli(["--model", str(a)])
