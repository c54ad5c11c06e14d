"""rho.analysis.selection: which tokens are selected and their loss statistics, on hand-made
arrays."""

from __future__ import annotations

import numpy as np
import pytest

from rho.analysis import selection as sel


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
