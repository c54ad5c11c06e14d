"""rho.analysis.dynamics: the trajectory classification rule and its statistics, on hand-made
loss matrices."""

from __future__ import annotations

import numpy as np
import pytest

from rho.analysis import dynamics as dyn

HL, LL, HH, LH = dyn.H_TO_L, dyn.L_TO_L, dyn.H_TO_H, dyn.L_TO_H


def columns(*trajectories) -> np.ndarray:
    """A (checkpoints, tokens) loss matrix from one trajectory per token."""
    return np.array(trajectories, dtype=np.float64).T


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
