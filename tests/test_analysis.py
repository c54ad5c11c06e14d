"""`rho analyze dynamics | selection | html`: one small end-to-end run per command on a tiny
corpus, models and runs, and the dispatcher's refusals."""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import tokenized

from rho.analysis import html as page
from rho.cli import main

SEQ = 32
NOISE = "<script>alert('x')</script> & qzv "


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A TokenStore with domains and a noise mask, a reference LossStore, and SLM and CLM runs
    with checkpoints at steps 2 and 4."""

    from rho.models import build_model
    from rho.scoring.score import score_store
    from rho.training.options import ModelDataArguments
    from rho.training.train import run_training
    from rho.training.trainer import SelectiveTrainingArguments

    root = tmp_path_factory.mktemp("analysis")
    lines = []
    for i in range(40):
        body = f"Let x = {i} so x^2 + {i} = {i * i + i}; café ∑ naïve.\n"
        text = (NOISE if i % 3 == 0 else "") + body * 2
        spans = [[0, len(NOISE)]] if i % 3 == 0 else []
        lines.append({"text": text, "domain": "math" if i % 2 else "web", "noise_spans": spans})
    tokens = tokenized(root, lines, vocab=320)
    ref = build_model("tiny", tokens.vocab_size, seed=1, max_positions=SEQ)
    ref.save_pretrained(root / "ref_model")
    score_store(ref, tokens, root / "ref_losses", SEQ, batch_size=8, progress=False)

    def run(name, selection):
        args = SelectiveTrainingArguments(
            **selection,
            output_dir=str(root / name),
            max_steps=4,
            save_steps=2,
            per_device_train_batch_size=4,
            logging_steps=1,
            learning_rate=5e-3,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            save_only_model=True,
        )
        data = ModelDataArguments(
            tokens=str(root / "tokens"), preset="tiny", ref_losses=str(root / "ref_losses")
        )
        run_training(data, args)

    run("slm", {"ratio": 0.6})
    run("clm", {"selection": "none"})
    return root


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.exists(), path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 300


def test_dynamics_command(workspace, capsys):
    out = workspace / "dyn"
    ckpts = [workspace / "slm" / "checkpoint-2", workspace / "slm" / "checkpoint-4"]
    argv = ["analyze", "dynamics", "--checkpoints", *map(str, ckpts), "--tokens"]
    argv += [str(workspace / "tokens"), "--out", str(out), "--seq-len", str(SEQ)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "H→L" in printed and str(out / "dynamics.md") in printed
    data = json.loads((out / "dynamics.json").read_text())
    assert data["threshold"] == 0.2 and len(data["checkpoints"]) == 2
    assert sum(row["percent"] for row in data["table"]["rows"]) == pytest.approx(100)
    cats = np.load(out / "categories.npy")
    assert cats.dtype == np.int8 and set(np.unique(cats)) <= {-1, 0, 1, 2, 3}
    assert (cats[::SEQ] == -1).all()  # window starts have no loss
    assert "| category |" in (out / "dynamics.md").read_text()
    for name in ("fig3a_categories.png", "fig3bc_fluctuating.png", "loss_spread.png"):
        assert_png(out / name)
    assert len(list((out / "losses").iterdir())) == 2
    # Rerun: the loss stores are complete and reused.
    assert main(argv + ["--threshold", "0.5"]) == 0
    assert json.loads((out / "dynamics.json").read_text())["threshold"] == 0.5


def test_selection_command(workspace, capsys):
    out = workspace / "sel"
    # --tokens and --losses default to what the SLM run trained on (its rho_options.json).
    argv = ["analyze", "selection", "--runs", str(workspace / "slm"), str(workspace / "clm")]
    argv += ["--out", str(out), "--windows", "12", "--batch-size", "4"]
    assert main(argv) == 0
    assert "selected/unselected" in capsys.readouterr().out
    data = json.loads((out / "selection.json").read_text())
    assert data["ratio"] == 0.6 and data["score"] == "excess" and data["select_batch"] == 4
    assert [r["step"] for r in data["fig6"]["SLM"]] == [2, 4]
    assert [r["step"] for r in data["fig6"]["CLM"]] == [2, 4]
    for row in data["fig6"]["SLM"] + data["fig6"]["CLM"]:
        total = row["n_selected"] + row["n_unselected"]
        # ceil(0.6 n) per ranking group of 4 windows (the run's batch), 3 groups in all
        assert 0.6 * total <= row["n_selected"] <= 0.6 * total + 3
    matrix = np.array(data["fig8"]["perplexity"])
    assert matrix.shape == (2, 2) and (matrix > 1).all()
    assert np.allclose(np.diag(np.array(data["fig8"]["overlap_jaccard"])), 1.0)
    assert data["slm_training_log"]["step"] == [1, 2, 3, 4]
    assert "Perplexity" in (out / "selection.md").read_text()
    for name in ("fig6_selected_unselected.png", "fig8_perplexity_matrix.png"):
        assert_png(out / name)
    assert_png(out / "fig8_perplexity_lines.png")


def test_selection_refuses_a_clm_run_as_slm(workspace, capsys):
    argv = ["analyze", "selection", "--runs", str(workspace / "clm"), str(workspace / "clm")]
    argv += ["--tokens", str(workspace / "tokens"), "--losses", str(workspace / "ref_losses")]
    assert main(argv + ["--out", str(workspace / "bad")]) == 2
    assert "not an SLM run" in capsys.readouterr().err


def test_html_command_with_and_without_model(workspace, capsys):
    from rho.io.store import TokenStore

    n_windows = TokenStore(workspace / "tokens").n_tokens // SEQ
    base = ["analyze", "html", "--tokens", str(workspace / "tokens"), "--losses"]
    base += [str(workspace / "ref_losses"), "--passages", "500", "--passage-tokens", "64"]
    with_model = workspace / "page.html"
    model = str(workspace / "slm" / "checkpoint-4")
    assert main(base + ["--model", model, "--out", str(with_model)]) == 0
    assert "noise tokens" in capsys.readouterr().out
    text = with_model.read_text()
    assert text.startswith("<!DOCTYPE html>") and "excess loss (learner − reference)" in text
    assert text.count('<section class="passage">') == n_windows  # every window, 32 tokens each
    # The corpus holds <script>: the page shows it as text and never runs it.
    assert "<script" not in text.lower()
    visible = html_lib.unescape(re.sub(r"<[^>]+>", "", text))
    assert "<script>alert('x')</script> & qzv" in visible
    assert re.search(r'class="t s[ "]', text) and 'class="t u' in text
    assert re.search(r'class="t [a-z]+ n"', text)  # noise ground truth is marked
    assert "domain: math" in text and "domain: web" in text
    without = workspace / "page_ref.html"
    assert main(base + ["--out", str(without)]) == 0
    text = without.read_text()
    assert "No --model given" in text and "reference loss" in text
    assert main(base + ["--out", str(without), "--ratio", "1.5"]) == 2


def test_decoded_pieces_rebuild_the_text(workspace):
    from rho.io.store import TokenStore

    store = TokenStore(workspace / "tokens")
    tokenizer = store.tokenizer()
    ids = np.asarray(store.tokens[: store.doc_offsets[4]])
    pieces, special = page.decode_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and sum(special) == 4  # one EOS per document
    assert "".join(pieces) == tokenizer.decode(ids.tolist())
    assert "é" in "".join(pieces) and "∑" in "".join(pieces)
    passages = page.passages_from_arrays(
        tokenizer, ids, np.zeros(len(ids)), np.ones(len(ids), bool), None, [0, 5], 7, ["a", None]
    )
    assert [len(p["pieces"]) for p in passages] == [7, 7] and passages[1]["domain"] is None
    assert passages[0]["noise"] is None and passages[0]["selected"] == [True] * 7


def test_bad_invocations_exit_2(workspace, capsys):
    assert main(["analyze"]) == 2
    assert main(["analyze", "nope"]) == 2
    argv = ["analyze", "dynamics", "--checkpoints", str(workspace / "slm" / "checkpoint-2")]
    argv += ["--tokens", str(workspace / "tokens"), "--out", str(workspace / "x")]
    assert main(argv) == 2
    assert "at least 2" in capsys.readouterr().err


def test_html_never_replaces_a_file_it_did_not_write(workspace, capsys):
    """`--out` naming a store's meta.json, a user's notes or a directory is refused, one line,
    nothing changed; a page rho wrote is replaced on a rerun; --overwrite replaces notes."""
    base = ["analyze", "html", "--tokens", str(workspace / "tokens"), "--losses"]
    base += [str(workspace / "ref_losses"), "--passages", "2", "--passage-tokens", "16"]
    meta = workspace / "tokens" / "meta.json"
    notes = workspace / "notes.txt"
    notes.write_text("my notes\n")
    before = meta.read_bytes()
    for out, says in ((meta, "overlaps the input"), (notes, "rho did not write it")):
        assert main(base + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    assert meta.read_bytes() == before and notes.read_text() == "my notes\n"
    (workspace / "a_dir").mkdir()
    assert main(base + ["--out", str(workspace / "a_dir")]) == 2
    assert "is a directory" in capsys.readouterr().err
    page_file = workspace / "again.html"
    assert main(base + ["--out", str(page_file)]) == 0
    assert main(base + ["--out", str(page_file)]) == 0  # its own page: replaced
    user = workspace / "user_dir"  # a file reached through a link: kept, even with --overwrite
    user.mkdir()
    (user / "mine.html").write_bytes(b"mine\n")
    (workspace / "link").symlink_to(user)
    assert main(base + ["--out", str(workspace / "link" / "mine.html"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "through the symbolic link" in err and len(err.strip().splitlines()) == 1
    assert (user / "mine.html").read_bytes() == b"mine\n"
    assert main(base + ["--out", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith("<!DOCTYPE html>")
