"""rho.experiment.sweep: `rho sweep` end to end on the shared tiny corpus: short trainings at
two ratios, reuse on a rerun, the options the sweep sets itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import make_docs, write_texts

from rho.cli import main

SEQ = 32


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, token_store, model_dir):
    """The shared TokenStore, its reference LossStore and a held-out store (same tokenizer)."""
    from rho.data.tokenize import tokenize_corpus
    from rho.scoring.score import score_store

    root = tmp_path_factory.mktemp("sweep")
    score_store(str(model_dir), token_store, root / "ref_losses", SEQ, progress=False)
    heldout = write_texts(root / "heldout.jsonl", make_docs(8, seed=7))
    tokenize_corpus(
        [str(heldout)], root / "heldout", tokenizer=token_store.tokenizer_dir, progress=False
    )
    return root, token_store.path


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.exists(), path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 300


def test_sweep_command(workspace, capsys):
    root, tokens = workspace
    out = root / "sweep"
    argv = ["sweep", "--ratios", "0.5", "1.0", "--tokens", str(tokens)]
    argv += ["--ref-losses", str(root / "ref_losses")]
    argv += ["--eval-tokens", str(root / "heldout"), "--preset", "tiny", "--max-steps", "2"]
    argv += ["--out", str(out), "--use_cpu", "--per_device_train_batch_size", "4"]
    argv += ["--disable_tqdm", "true"]
    assert main(argv) == 0
    assert "best ratio" in capsys.readouterr().out
    data = json.loads((out / "sweep.json").read_text())
    assert data["ratios"] == [0.5, 1.0]
    assert all(math.isfinite(v) for v in data["eval_loss"])
    assert data["summary"]["best_ratio"] in (0.5, 1.0)
    assert_png(out / "fig9_sweep.png")
    assert "| ratio |" in (out / "sweep.md").read_text()
    # A rerun reuses finished ratios instead of training again.
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert main(argv + ["--output_dir", str(out)]) == 2  # the sweep sets each run's own
    assert "set by the sweep" in capsys.readouterr().err
    assert main(argv + ["--ratio", "0.3"]) == 2  # and its selection: --ratios, --score
    assert "set by the sweep" in capsys.readouterr().err
    data = json.loads((out / "runs" / "ratio-0.5" / "rho_options.json").read_text())
    assert data["selection"]["ratio"] == 0.5 and data["selection"]["selection"] == "token"
    # Both spellings of its options; a TrainingArguments option the sweep's record keeps.
    assert main(["--" + a[2:].replace("-", "_") if a[:2] == "--" else a for a in argv]) == 0
    assert "reusing" in capsys.readouterr().out
    settings = json.loads((out / "sweep.json").read_text())["settings"]
    assert settings["training_args"]["per_device_train_batch_size"] == 4


def test_sweep_refuses_a_ratio_out_of_range(capsys):
    argv = ["sweep", "--ratios", "0.5", "1.5", "--tokens", "t", "--ref-losses", "r"]
    argv += ["--eval-tokens", "e", "--out", "o", "--max-steps", "2"]
    assert main(argv) == 2
    assert "--ratios must be in (0, 1], got 1.5" in capsys.readouterr().err
