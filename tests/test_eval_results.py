"""rho.evaluation.results: eval.json / eval.md, and `rho eval --compare`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers import make_task, rho_command

from rho.errors import UserError
from rho.evaluation.results import open_output, save_eval, save_task_outputs


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
    assert rho_command("eval", ["--compare", str(a), str(b / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric | clm | slm |"
    assert "| held · overall · loss | 3.0000 | **2.5000** |" in table
    assert "| task champ · 4-shot accuracy | 0.1000 | **0.3000** |" in table
    assert "| held · web · bits/byte |" in table
    with pytest.raises(UserError, match="no eval.json"):
        rho_command("eval", ["--compare", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="nothing to evaluate"):
        rho_command("eval", ["--model", str(a)])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["tasks"]["champ"].update(accuracy="high"), "tasks.champ.accuracy is 'high'"),
        (lambda r: r["tasks"]["champ"].pop("shots"), "missing tasks.champ.shots"),
        (lambda r: r["loss"]["held"].update(overall=[1]), "loss.held.overall is \\[1\\]"),
        (lambda r: r.update(lm_eval={"metrics": {"t": {"acc": "x"}}}), "lm_eval.metrics.t.acc"),
        (
            lambda r: r["loss"]["held"]["overall"].update(tokens=-1),
            "overall.tokens -1 is out of range",
        ),
    ],
)
def test_compare_checks_every_field_of_eval_json(tmp_path, change, message):
    import json

    run = _run(tmp_path, "clm", 3.0, 0.1)
    record = json.loads((run / "eval.json").read_text())
    change(record)
    (run / "eval.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=message):
        rho_command("eval", ["--compare", str(run)])


def test_compare_refuses_hostile_json(tmp_path):
    run = _run(tmp_path, "clm", 3.0, 0.1)
    for text in ("[" * 100000, '{"format": "rho.eval", "n": ' + "9" * 5000 + "}"):
        (run / "eval.json").write_text(text)
        with pytest.raises(UserError, match="unreadable or corrupted"):
            rho_command("eval", ["--compare", str(run)])


def test_eval_never_writes_among_a_users_files(tmp_path, eval_checkpoint):
    """--out naming a user's directory (or a link to one) is refused in one line; without --out
    the results go to a rho_eval directory rho makes in the checkpoint. The user's eval.md and
    task_outputs.jsonl (one of its lines no parser reads) stay byte for byte."""
    task = make_task(tmp_path)
    mine = {"eval.md": b"# my notes\n", "task_outputs.jsonl": b'{"task": "add"}\nnot json\n'}
    user, model = tmp_path / "user", tmp_path / "ckpt"
    user.mkdir()
    shutil.copytree(eval_checkpoint, model)
    for folder in (user, model):
        for name, data in mine.items():
            (folder / name).write_bytes(data)
    (tmp_path / "link").symlink_to(user)
    argv = ["--model", str(model), "--task", str(task), "--shots", "2", "--max-new-tokens", "4"]
    argv.append("--quiet")
    with pytest.raises(UserError, match="a directory rho did not make .*will not replace it"):
        rho_command("eval", [*argv, "--out", str(user)])
    with pytest.raises(UserError, match="is not a directory rho made"):
        rho_command("eval", [*argv, "--out", str(tmp_path / "link")])
    assert rho_command("eval", argv) == 0
    assert rho_command("eval", argv) == 0  # its own directory: the results are merged again
    for folder in (user, model):
        assert {name: (folder / name).read_bytes() for name in mine} == mine
    out = model / "rho_eval"
    assert (out / ".rho-output").read_text().startswith("rho.eval\n")
    assert json.loads((out / "eval.json").read_text())["tasks"]["add"]["items"] == 5
    assert rho_command("eval", ["--compare", str(model)]) == 0  # the run's rho_eval is found


def test_task_outputs_keep_the_lines_they_cannot_parse(tmp_path):
    file = open_output(tmp_path / "e") / "task_outputs.jsonl"
    file.write_bytes(b'not json\n{"task": "a", "x": 1}\n{"task": "b"}\n\xff\n')
    save_task_outputs(tmp_path / "e", "a", [{"x": 2}])
    assert file.read_bytes() == b'not json\n{"task": "b"}\n\xff\n{"task": "a", "x": 2}\n'
