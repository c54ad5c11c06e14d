"""rho.analysis: pure computations on hand-made inputs, and one small end-to-end run per command."""

from __future__ import annotations

import html as html_lib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from rho.analysis import dynamics as dyn
from rho.analysis import html as page
from rho.analysis import selection as sel
from rho.cli import main

HL, LL, HH, LH = dyn.H_TO_L, dyn.L_TO_L, dyn.H_TO_H, dyn.L_TO_H


def columns(*trajectories) -> np.ndarray:
    """A (checkpoints, tokens) loss matrix from one trajectory per token."""
    return np.array(trajectories, dtype=np.float64).T


# --- dynamics: the classification rule ---------------------------------------------------------


def test_every_category_on_a_hand_made_matrix():
    losses = columns([3, 2, 1], [1, 1, 1], [5, 5, 5], [1, 2, 3])  # last-loss mean: 2.5
    traj = dyn.classify(losses)
    assert traj.categories.tolist() == [HL, LL, HH, LH]
    assert traj.mean == pytest.approx(2.5)
    np.testing.assert_allclose(traj.change, [-2, 0, 0, 2], atol=1e-12)


def test_change_is_slope_times_span_of_the_least_squares_line():
    x = np.linspace(0, 1, 5)
    linear = 2.0 - 0.9 * x
    np.testing.assert_allclose(dyn.fit_change(columns(linear)), [-0.9])
    np.testing.assert_allclose(dyn.fit_change(columns([4.0, 1.5])), [-2.5])  # 2 points: last-first
    # Up and down with no trend: no change, however large the swings.
    np.testing.assert_allclose(dyn.fit_change(columns([1, 5, 1])), [0.0], atol=1e-12)


def test_a_fluctuating_token_without_trend_is_classified_by_its_last_loss():
    losses = columns([1, 6, 1], [6, 1, 6], [2, 2, 2])  # last-loss mean 3
    assert dyn.classify(losses).categories.tolist() == [LL, HH, LL]


@pytest.mark.parametrize("n_checkpoints", [2, 3, 5])
def test_exactly_plus_minus_threshold_is_no_change(n_checkpoints):
    x = np.linspace(0, 1, n_checkpoints)
    up, down = 1.0 + 0.2 * x, 1.0 - 0.2 * x  # change exactly +0.2 / -0.2 (up to float noise)
    high = np.full(n_checkpoints, 9.0)  # pulls the mean up: flat tokens at ~1 are L→L
    traj = dyn.classify(columns(up, down, high), threshold=0.2)
    assert traj.categories.tolist() == [LL, LL, HH]


def test_just_beyond_the_threshold_changes_category():
    eps = 1e-6
    losses = columns([1.0, 1.2 + eps], [1.0, 0.8 - eps], [1.0, 1.2 - eps], [1.0, 0.8 + eps])
    assert dyn.classify(losses, threshold=0.2).categories.tolist() == [LH, HL, HH, LL]


def test_threshold_is_configurable():
    losses = columns([1.0, 1.5], [1.0, 1.51], [2.0, 1.49])  # changes +0.5, +0.51, -0.51
    assert dyn.classify(losses, threshold=0.5, mean=1.0).categories.tolist() == [HH, LH, HL]
    assert dyn.classify(losses, threshold=0.6, mean=1.0).categories.tolist() == [HH, HH, HH]
    assert dyn.classify(losses, threshold=0.0, mean=1.0).categories.tolist() == [LH, LH, HL]


def test_low_high_split_at_the_mean_last_loss():
    losses = columns([2, 2], [3, 3], [4, 4])  # mean of last losses: exactly 3
    traj = dyn.classify(losses)
    assert traj.mean == 3.0
    assert traj.categories.tolist() == [LL, LL, HH]  # last == mean counts as low
    # The mean is over all scored tokens at the last checkpoint, changed ones included.
    with_drop = columns([2, 2], [3, 3], [4, 4], [10, 0.0])  # mean of last: 2.25
    assert dyn.classify(with_drop).categories.tolist() == [LL, HH, HH, HL]
    # An explicit level overrides it.
    assert dyn.classify(losses, mean=3.5).categories.tolist() == [LL, LL, HH]


def test_unscored_tokens_are_minus_one_and_left_out_of_the_mean():
    losses = columns([np.nan, np.nan], [1, 1], [3, 3], [2, np.nan])
    traj = dyn.classify(losses)
    assert traj.categories.tolist() == [dyn.UNSCORED, LL, HH, dyn.UNSCORED]
    assert traj.mean == 2.0
    assert np.isnan(traj.change[[0, 3]]).all()
    table = dyn.category_table(traj.categories)
    assert table["scored"] == 2 and table["unscored"] == 2


def test_classify_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        dyn.classify(np.ones((1, 4)))
    with pytest.raises(ValueError, match="checkpoints, tokens"):
        dyn.classify(np.ones(4))
    with pytest.raises(ValueError, match="threshold"):
        dyn.classify(np.ones((2, 4)), threshold=-0.1)


def test_category_table_and_markdown():
    cats = np.array([HL, HL, LL, LL, LL, HH, LH, LH, -1], dtype=np.int8)
    table = dyn.category_table(cats)
    by_name = {row["category"]: row for row in table["rows"]}
    assert table["scored"] == 8 and table["unscored"] == 1
    assert by_name["L→L"]["count"] == 3 and by_name["L→L"]["percent"] == pytest.approx(37.5)
    assert sum(row["percent"] for row in table["rows"]) == pytest.approx(100)
    assert [by_name[c]["paper_1b_percent"] for c in dyn.CATEGORIES] == [26, 51, 11, 12]
    md = dyn.table_markdown(table)
    assert "| L→L | 3 | 37.5% | 51% | 51% |" in md


def test_curves_spread_and_fluctuation():
    losses = columns([3, 2, 1], [1, 1, 1], [5, 5, 5], [1, 4, 1], [np.nan, 1, 1])
    traj = dyn.classify(losses)
    curves = dyn.category_curves(losses, traj.categories)
    np.testing.assert_allclose(curves[HL], [3, 2, 1])
    np.testing.assert_allclose(curves[LL], [1, 2.5, 1])  # [1,1,1] and [1,4,1]
    assert np.isnan(curves[LH]).all()  # empty category
    np.testing.assert_allclose(dyn.loss_spread(losses, "range")[:4], [2, 0, 0, 3])
    np.testing.assert_allclose(dyn.loss_spread(losses, "std")[:2], [np.std([3, 2, 1]), 0])
    assert np.isnan(dyn.loss_spread(losses)[4])
    np.testing.assert_allclose(dyn.fluctuation(losses)[:4], [1, 0, 0, 3])


def test_most_fluctuating_takes_the_largest_apart_from_each_other():
    values = np.array([0.1, 5.0, 4.9, 0.2, 3.0, np.nan, 2.0])
    cats = np.array([LL, LL, LL, HH, LL, LL, LL])
    assert dyn.most_fluctuating(values, cats, LL, 2).tolist() == [1, 2]
    assert dyn.most_fluctuating(values, cats, LL, 2, min_gap=2).tolist() == [1, 4]
    assert dyn.most_fluctuating(values, cats, HH, 5).tolist() == [3]
    token_ids = np.array([7, 8, 8, 9, 8, 7, 7])  # 1 and 2 are the same token: one example each
    assert dyn.most_fluctuating(values, cats, LL, 3, keys=token_ids).tolist() == [1, 6]


# --- selection: pure functions -----------------------------------------------------------------


def test_select_keeps_the_top_ratio_per_ranking_unit():
    scores = np.array([[1.0, 4.0, 3.0, 2.0], [8.0, 7.0, 6.0, 5.0]])
    valid = np.ones_like(scores, dtype=bool)
    valid[0, 1] = False  # the highest score of row 0 cannot be selected
    batch = sel.select(scores, valid, 0.5)  # ceil(0.5 * 7) = 4 of all 7 valid
    assert batch.tolist() == [[False] * 4, [True] * 4]
    per_row = sel.select(scores, valid, 0.5, scope="sequence")  # ceil(1.5)=2 and 2
    assert per_row.tolist() == [[False, False, True, True], [True, True, False, False]]
    grouped = sel.select(np.vstack([scores, scores]), np.vstack([valid, valid]), 0.5, group=2)
    assert grouped.tolist() == batch.tolist() * 2


def test_scores_follow_the_training_definitions():
    learner, ref = np.array([[3.0, 1.0, np.nan]]), np.array([[1.0, 2.0, np.nan]])
    np.testing.assert_allclose(sel.scores_for("excess", learner, ref)[0, :2], [2.0, -1.0])
    np.testing.assert_allclose(sel.scores_for("reference", learner, ref)[0, :2], [-1.0, -2.0])
    assert sel.valid_positions(learner, ref).tolist() == [[True, True, False]]
    with pytest.raises(ValueError):
        sel.scores_for("bogus", learner, ref)


def test_split_loss_means_and_counts():
    loss = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    selected = np.array([True, False, True, False, True])
    valid = np.array([True, True, True, True, False])  # the 100 is never counted
    got = sel.split_loss(loss, selected, valid)
    assert got["loss_selected"] == 2.0 and got["loss_unselected"] == 3.0
    assert got["loss_all"] == 2.5 and got["n_selected"] == 2 and got["n_unselected"] == 2


def test_perplexity_matrix_rows_select_columns_evaluate():
    losses = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    selections = np.array(
        [[True, True, False, False], [False, False, True, True], [False] * 4], dtype=bool
    )
    expected_loss = np.array([[1.5, 3.5, 0.0], [3.5, 1.5, 0.0], [np.nan] * 3])
    np.testing.assert_allclose(sel.mean_loss_matrix(losses, selections), expected_loss)
    np.testing.assert_allclose(sel.perplexity_matrix(losses, selections), np.exp(expected_loss))
    # Non-square: 1 selecting checkpoint, 3 evaluating; trailing shapes may be (W, L).
    m = sel.perplexity_matrix(losses.reshape(3, 2, 2), selections[:1].reshape(1, 2, 2))
    assert m.shape == (1, 3)
    with pytest.raises(ValueError):
        sel.mean_loss_matrix(losses, selections[:, :3])


def test_overlap_matrix_is_jaccard():
    selections = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    m = sel.overlap_matrix(selections)
    assert m[0, 1] == pytest.approx(1 / 3) and m[1, 0] == pytest.approx(1 / 3)
    assert m[0, 2] == 1.0 and m[0, 0] == 1.0
    assert m[0, 3] == 0.0 and np.isnan(m[3, 3])


def test_pairing_series_and_sweep_summary():
    assert sel.pair_by_step([2, 4, 5, 100], [2, 4, 6]) == [0, 1, 1, 2]
    records = [
        {"step": 1, "loss_unselected": 2.0},
        {"step": 2, "loss_unselected": float("nan")},
        {"step": 3, "eval_loss": 1.0},
        {"step": 4, "loss_unselected": 1.5},
    ]
    assert sel.metric_series(records, "loss_unselected") == ([1, 4], [2.0, 1.5])
    summary = sel.sweep_summary([1.0, 0.3, 0.6], [3.0, 3.2, 2.9])
    assert [r["ratio"] for r in summary["rows"]] == [0.3, 0.6, 1.0]
    assert summary["best_ratio"] == 0.6 and summary["all_tokens_eval_loss"] == 3.0
    assert summary["rows"][0]["vs_all_tokens"] == pytest.approx(0.2)


# --- html: rendering and escaping ----------------------------------------------------------------


def passage(pieces, selected=None, excess=None, noise=None, domain=None):
    n = len(pieces)
    return {
        "pieces": pieces,
        "excess": excess if excess is not None else [float(i) for i in range(n)],
        "selected": selected if selected is not None else [True] * n,
        "noise": noise,
        "domain": domain,
    }


def test_render_escapes_script_and_ampersand_everywhere():
    pieces = ["<script>", "alert('x')", "</script>", " & ", "a<b", '"q"']
    text = page.render_page(
        [passage(pieces, domain="<i>web</i> & co")],
        title="<script>alert(1)</script> & title",
        ratio=0.6,
        score="<b>excess</b>",
        note="note with <img src=x> & more",
    )
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text and "&lt;/script&gt;" in text
    assert "&amp;" in text and " &amp; " in text
    assert "<img" not in text and "<i>web" not in text and "<b>excess" not in text
    assert "a&lt;b" in text and "&quot;q&quot;" in text


def test_render_marks_selection_noise_scale_and_legend():
    p = passage(
        ["\n", "alpha", " beta", " gamma", "\tdelta"],
        selected=[False, True, False, True, True],
        excess=[float("nan"), 0.5, -1.0, 2.0, 1.0],
        noise=[False, False, True, True, False],
        domain="math",
    )
    text = page.render_page([p], title="T", ratio=0.6, score="excess")
    assert "ratio <b>60%</b>" in text and "excess loss (learner − reference)" in text
    assert "white-space: pre-wrap" in text
    assert len(re.findall(r'class="t s[ "]', text)) == 3 and text.count("background:#") == 3
    assert 'class="t u n"' in text  # " beta": unselected noise
    assert 'class="t na"' in text  # no score: window start
    assert "injected noise" in text  # legend entry only when ground truth exists
    assert "domain: math" in text
    assert "injected noise" not in page.render_page([passage(["x"])], title="T", ratio=1, score="x")
    with pytest.raises(ValueError, match="lengths differ"):
        page.render_page([passage(["a", "b"], selected=[True])], title="T", ratio=1, score="x")


def test_reference_score_colours_lowest_loss_darkest():
    p = passage(["lo", "hi"], selected=[True, True], excess=[0.0, 10.0])
    text = page.render_page([p], title="T", ratio=1.0, score="reference")
    lo_colour = text.split(">lo<")[0].rsplit("background:", 1)[1][:7]
    assert lo_colour == page._colour(1.0)


def test_pick_windows_spreads_over_the_store_and_domains():
    assert page.pick_windows(10, 3) == [0, 4, 9]
    assert page.pick_windows(2, 5) == [0, 1]
    domains = ["a"] * 8 + ["b"] * 2
    picked = page.pick_windows(10, 4, domains)
    assert len(picked) == 4 and {domains[i] for i in picked} == {"a", "b"}


# --- End to end on a tiny corpus, models and runs ------------------------------------------------

SEQ = 32
NOISE = "<script>alert('x')</script> & qzv "


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A TokenStore with domains and a noise mask, a held-out store, a reference LossStore, and
    SLM and CLM runs with checkpoints at steps 2 and 4."""
    from transformers import TrainingArguments

    from rho.models import build_model
    from rho.score import score_store
    from rho.tokenize import tokenize_corpus
    from rho.trainer import ModelDataArguments, SelectionArguments, train

    root = tmp_path_factory.mktemp("analysis")
    lines = []
    for i in range(40):
        body = f"Let x = {i} so x^2 + {i} = {i * i + i}; café ∑ naïve.\n"
        text = (NOISE if i % 3 == 0 else "") + body * 2
        spans = [[0, len(NOISE)]] if i % 3 == 0 else []
        lines.append({"text": text, "domain": "math" if i % 2 else "web", "noise_spans": spans})
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    heldout = root / "heldout.jsonl"
    heldout.write_text(json.dumps({"text": "Let x = 99 so x^2 + 99 = 9900.\n" * 8}) + "\n")
    tokens = tokenize_corpus([str(corpus)], root / "tokens", train_vocab=320, progress=False)
    tokenize_corpus(
        [str(heldout)], root / "heldout", tokenizer=tokens.tokenizer_dir, progress=False
    )
    ref = build_model("tiny", tokens.vocab_size, seed=1, max_positions=SEQ)
    ref.save_pretrained(root / "ref_model")
    score_store(ref, tokens, root / "ref_losses", SEQ, batch_size=8, progress=False)

    def run(name, selection):
        args = TrainingArguments(
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
        train(data, selection, args)

    run("slm", SelectionArguments(ratio=0.6))
    run("clm", SelectionArguments(selection="none"))
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


def test_sweep_command(workspace, capsys):
    out = workspace / "sweep"
    argv = ["analyze", "sweep", "--ratios", "0.5", "1.0", "--tokens", str(workspace / "tokens")]
    argv += ["--ref-losses", str(workspace / "ref_losses")]
    argv += ["--eval-tokens", str(workspace / "heldout"), "--preset", "tiny", "--max-steps", "2"]
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


def test_html_command_with_and_without_model(workspace, capsys):
    from rho.store import TokenStore

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
    from rho.store import TokenStore

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
