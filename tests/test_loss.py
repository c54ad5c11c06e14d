import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rho.selection.loss import slm_loss, stats_from_sums, token_entropy, token_losses
from rho.selection.select import n_keep, rank_average, select_topk, token_scores, valid_mask


def logits_with_losses(losses):
    """Two-class logits [0, z] with target 0, so each token's cross-entropy is exactly ``loss``."""
    loss = torch.as_tensor(losses, dtype=torch.float64)
    z = torch.log(torch.expm1(loss))
    logits = torch.stack([torch.zeros_like(z), z], dim=-1).float().requires_grad_()
    return logits, torch.zeros(loss.shape, dtype=torch.long)


# --- token_losses -----------------------------------------------------------------------------


def test_token_losses_hand_computed():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [5.0, 1.0, 2.0]]])
    targets = torch.tensor([[1, 1, -100]])
    got = token_losses(logits, targets)
    assert got.dtype == torch.float32
    assert got[0, 0].item() == pytest.approx(math.log(3.0))
    assert got[0, 1].item() == pytest.approx(math.log(2.0))  # p = 2 / (1 + 2 + 1)
    assert got[0, 2].item() == 0.0  # ignored


@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_chunked_equals_cross_entropy_values_and_gradients(chunk):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 5))
    targets[1, 2] = -100
    ours = token_losses(logits, targets, chunk_tokens=chunk)
    (g_ours,) = torch.autograd.grad((ours * torch.arange(15.0).view(3, 5)).sum(), logits)
    ref = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    (g_ref,) = torch.autograd.grad((ref * torch.arange(15.0).view(3, 5)).sum(), logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_bf16_logits_give_float32_losses_and_bf16_grads():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9).bfloat16().requires_grad_()
    targets = torch.randint(0, 9, (2, 4))
    losses = token_losses(logits, targets, chunk_tokens=3)
    assert losses.dtype == torch.float32
    expected = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(losses, expected)
    losses.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_token_losses_shape_mismatch():
    with pytest.raises(ValueError, match="vocab"):
        token_losses(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# --- token_entropy ------------------------------------------------------------------------------


def test_token_entropy_hand_computed():
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [0.0, 0.0, -math.inf], [50.0, 0.0, 0.0]]]
    )
    got = token_entropy(logits)
    assert got.shape == (1, 4) and got.dtype == torch.float32
    assert got[0, 0].item() == pytest.approx(math.log(3.0))  # uniform over 3
    # p = (1/4, 1/2, 1/4): H = 2 * (1/4) log 4 + (1/2) log 2 = 1.5 log 2
    assert got[0, 1].item() == pytest.approx(1.5 * math.log(2.0))
    assert got[0, 2].item() == pytest.approx(math.log(2.0))  # a banned token adds 0, not NaN
    assert got[0, 3].item() == pytest.approx(0.0, abs=1e-6)  # certain


@pytest.mark.parametrize("chunk", [1, 4, 10_000])
def test_token_entropy_equals_the_definition_in_any_chunks(chunk):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 3
    log_p = torch.log_softmax(logits.double(), -1)
    expected = -(log_p.exp() * log_p).sum(-1).float()
    torch.testing.assert_close(token_entropy(logits, chunk_tokens=chunk), expected)
    bf16 = token_entropy(logits.bfloat16(), chunk_tokens=chunk)
    assert bf16.dtype == torch.float32
    with pytest.raises(ValueError, match="chunk_tokens"):
        token_entropy(logits, chunk_tokens=0)


# --- select_topk --------------------------------------------------------------------------------

SCORES = torch.tensor([[3.0, 1.0, 2.0], [5.0, 0.0, 4.0]])
ALL = torch.ones(2, 3, dtype=torch.bool)


def test_batch_scope_hand_computed():
    got = select_topk(SCORES, ALL, 0.5, "batch")  # k = 3 of 6: scores 5, 4, 3
    assert got.tolist() == [[True, False, False], [True, False, True]]


def test_sequence_scope_hand_computed():
    got = select_topk(SCORES, ALL, 0.5, "sequence")  # k = ceil(1.5) = 2 per row
    assert got.tolist() == [[True, False, True], [True, False, True]]


def test_sequence_scope_is_per_row_not_flattened_indices():
    # Public-port bug: per-row top-k indices applied to the flattened tensor select row 0's tokens.
    scores = torch.tensor([[0.0, 0.0, 0.0, 9.0], [7.0, 8.0, 0.0, 0.0]])
    got = select_topk(scores, torch.ones(2, 4, dtype=torch.bool), 0.25, "sequence")
    assert got.tolist() == [[False, False, False, True], [False, True, False, False]]


def test_ties_are_broken_by_position():
    got = select_topk(torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool), 0.4, "batch")
    assert got.tolist() == [[True, True, False, False, False]]


def test_k_is_ceil_without_float_noise():
    assert n_keep(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001 in floating point
    assert n_keep(0.6, 10) == 6
    assert n_keep(0.61, 10) == 7
    assert n_keep(0.5, 0) == 0
    assert n_keep(0.01, 1) == 1
    assert n_keep(0.7, torch.tensor([10, 3, 0])).tolist() == [7, 3, 0]


def test_invalid_positions_are_never_selected_and_not_counted():
    scores = torch.tensor([[100.0, 1.0, 2.0, 3.0]])
    valid = torch.tensor([[False, True, True, True]])
    got = select_topk(scores, valid, 0.5, "batch")  # k = ceil(0.5 * 3) = 2
    assert got.tolist() == [[False, False, True, True]]


def test_invalid_ranks_behind_valid_even_with_minus_inf_scores():
    scores = torch.tensor([0.0, -math.inf, -math.inf])
    valid = torch.tensor([False, True, True])
    assert select_topk(scores, valid, 1.0).tolist() == [False, True, True]


def test_row_without_valid_tokens_selects_nothing():
    valid = torch.tensor([[False, False], [True, True]])
    got = select_topk(torch.ones(2, 2), valid, 0.5, "sequence")
    assert got.tolist() == [[False, False], [True, False]]


def test_sequence_scope_does_not_depend_on_how_the_batch_is_split():
    torch.manual_seed(1)
    scores, valid = torch.randn(6, 9), torch.rand(6, 9) > 0.2
    whole = select_topk(scores, valid, 0.6, "sequence")
    halves = torch.cat(
        [select_topk(scores[i : i + 3], valid[i : i + 3], 0.6, "sequence") for i in (0, 3)]
    )
    assert torch.equal(whole, halves)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 12),
    ratio=st.floats(0.01, 1.0),
    scope=st.sampled_from(["batch", "sequence"]),
    seed=st.integers(0, 10_000),
)
def test_property_exactly_k_per_unit_and_the_best_ones(rows, cols, ratio, scope, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (rows, cols), generator=g).float()  # many ties
    valid = torch.rand(rows, cols, generator=g) > 0.3
    got = select_topk(scores, valid, ratio, scope)
    assert not (got & ~valid).any()
    units = [slice(None)] if scope == "batch" else [slice(r, r + 1) for r in range(rows)]
    for unit in units:
        sel, val, sc = got[unit], valid[unit], scores[unit]
        assert int(sel.sum()) == math.ceil(ratio * int(val.sum()) - 1e-9)
        if sel.any() and (val & ~sel).any():
            assert sc[sel].min() >= sc[val & ~sel].max()  # nothing better was left out


def test_select_topk_errors():
    with pytest.raises(ValueError, match="ratio"):
        select_topk(SCORES, ALL, 0.0)
    with pytest.raises(ValueError, match="ratio"):
        select_topk(SCORES, ALL, 1.5)
    with pytest.raises(ValueError, match="scope"):
        select_topk(SCORES, ALL, 0.5, "document")
    with pytest.raises(ValueError, match="differ"):
        select_topk(SCORES, ALL[:, :2], 0.5)


# --- scores and slm_loss -------------------------------------------------------------------------

LEARNER = [1.0, 2.0, 3.0, 4.0]
REF = [0.9, 0.1, 2.5, 3.2]  # excess = [0.1, 1.9, 0.5, 0.8]


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("excess", [False, True, False, True]),  # excess 1.9 and 0.8
        ("learner", [False, False, True, True]),  # learner 4 and 3
        ("reference", [True, True, False, False]),  # lowest reference 0.1 and 0.9
    ],
)
def test_scores_hand_computed(score, expected):
    logits, targets = logits_with_losses([LEARNER])
    out = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5, score=score)
    assert out.selected[0].tolist() == expected
    chosen = [x for x, keep in zip(LEARNER, expected, strict=True) if keep]
    # Public-port bug: dividing by all tokens. The mean is over the selected ones.
    assert out.loss.item() == pytest.approx(sum(chosen) / len(chosen), rel=1e-5)


ENTROPY = [0.2, 3.0, 0.4, 0.1]


def test_entropy_scores_hand_computed():
    logits, targets = logits_with_losses([LEARNER])
    ref, ent = torch.tensor([REF]), torch.tensor([ENTROPY])
    # reference-entropy keeps the lowest entropies: 0.1 (token 3) and 0.2 (token 0)
    out = slm_loss(logits, targets, ref, ratio=0.5, score="reference-entropy", ref_entropy=ent)
    assert out.selected[0].tolist() == [True, False, False, True]
    assert out.loss.item() == pytest.approx((1.0 + 4.0) / 2, rel=1e-5)
    # reference+entropy: ranks (0 = worst) by -reference [2, 3, 1, 0] and by -entropy
    # [2, 0, 1, 3]; their means [2, 1.5, 1, 1.5] / 3 = [2/3, 1/2, 1/3, 1/2]
    keys = token_scores("reference+entropy", torch.tensor(LEARNER), torch.tensor(REF),
                        ref_entropy=torch.tensor(ENTROPY))  # fmt: skip
    expected = torch.tensor([[-0.9, -0.2], [-0.1, -3.0], [-2.5, -0.4], [-3.2, -0.1]])
    torch.testing.assert_close(keys, expected)
    ranks = rank_average(keys, torch.ones(4, dtype=torch.bool))
    assert ranks.tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 3, 1 / 2])
    # k = 1: token 0, kept by neither score alone at this ratio (reference: token 1; entropy: 3)
    both = slm_loss(logits, targets, ref, ratio=0.25, score="reference+entropy", ref_entropy=ent)
    assert both.selected[0].tolist() == [True, False, False, False]
    alone = [slm_loss(logits, targets, ref, ratio=0.25, score=s, ref_entropy=ent).selected
             for s in ("reference", "reference-entropy")]  # fmt: skip
    assert [a[0].tolist() for a in alone] == [[False, True, False, False], [False] * 3 + [True]]
    # k = 2: token 0, then the tie at 1/2 between tokens 1 and 3 goes to the earlier one
    two = slm_loss(logits, targets, ref, ratio=0.5, score="reference+entropy", ref_entropy=ent)
    assert two.selected[0].tolist() == [True, True, False, False]


def test_rank_average_ties_and_invalid_positions_by_hand():
    keys = torch.tensor([[1.0], [1.0], [0.0], [9.0]])
    valid = torch.tensor([True, True, True, False])
    # among the valid: 0 has rank 0; the two 1s share ranks 1 and 2 -> 1.5; scaled by n - 1 = 2
    got = rank_average(keys, valid)
    assert got[:3].tolist() == [0.75, 0.75, 0.0] and math.isnan(got[3].item())
    # sequence scope: each row its own population
    rows = torch.tensor([[[0.0, 5.0], [1.0, 4.0]], [[7.0, 0.0], [3.0, 1.0]]])
    both = torch.ones(2, 2, dtype=torch.bool)
    assert rank_average(rows, both, "sequence").tolist() == [[0.5, 0.5], [0.5, 0.5]]
    # batch: first keys 0, 1, 7, 3 rank 0, 1, 3, 2; second keys 5, 4, 0, 1 rank 3, 2, 0, 1
    expected = torch.tensor([[(0 + 3) / 6, (1 + 2) / 6], [(3 + 0) / 6, (2 + 1) / 6]])
    torch.testing.assert_close(rank_average(rows, both, "batch"), expected.double())
    assert rank_average(torch.ones(1, 0, 2), torch.ones(1, 0, dtype=torch.bool)).numel() == 0


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 10),
    ratio=st.floats(0.01, 1.0),
    scope=st.sampled_from(["batch", "sequence"]),
    seed=st.integers(0, 10_000),
)
def test_property_rank_average_of_one_key_selects_like_the_key(rows, cols, ratio, scope, seed):
    """One key's rank is monotone in it (ties kept), so selecting by it or by its rank is the
    same; and for sequence scope the ranks of a row do not depend on the other rows."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (rows, cols), generator=g).float()  # many ties
    valid = torch.rand(rows, cols, generator=g) > 0.3
    by_key = select_topk(scores, valid, ratio, scope)
    assert torch.equal(select_topk(scores[..., None], valid, ratio, scope), by_key)
    if scope == "sequence" and rows > 1:
        keys = torch.stack([scores, -scores.roll(1, -1)], -1)
        whole = rank_average(keys, valid, "sequence")
        first = rank_average(keys[:1], valid[:1], "sequence")
        torch.testing.assert_close(whole[:1], first, equal_nan=True)


def test_excess_is_learner_minus_reference():
    got = token_scores("excess", torch.tensor(LEARNER), torch.tensor(REF))
    torch.testing.assert_close(got, torch.tensor([0.1, 1.9, 0.5, 0.8]))


def test_excess_uses_the_reference_not_the_learner():
    # Public-port bug: "reference" loss computed by the learner's weights makes excess ~ 0 and
    # the selection degenerate (by position). A real reference must move the selection.
    logits, targets = logits_with_losses([LEARNER])
    learner_as_ref = slm_loss(logits, targets, torch.tensor([LEARNER]), ratio=0.5)
    assert learner_as_ref.stats["excess_mean"] == pytest.approx(0.0, abs=1e-5)
    real_ref = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5)
    assert real_ref.selected[0].tolist() == [False, True, False, True]


def test_selection_uses_log_softmax_loss_not_raw_logits():
    # Public-port bug: raw logits as "loss". Shifting every logit of a token by a constant
    # changes raw logits but not cross-entropy, so neither the losses nor the selection move.
    logits, targets = logits_with_losses([LEARNER])
    shifted = (logits.detach() + torch.tensor([[[10.0], [-3.0], [0.0], [7.0]]])).requires_grad_()
    a = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5)
    b = slm_loss(shifted, targets, torch.tensor([REF]), ratio=0.5)
    assert torch.equal(a.selected, b.selected)
    torch.testing.assert_close(a.token_loss, b.token_loss)
    torch.testing.assert_close(a.token_loss[0], torch.tensor(LEARNER))


def test_random_score_is_seeded():
    logits = torch.randn(4, 16, 5)
    targets = torch.randint(0, 5, (4, 16))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return slm_loss(logits, targets, ratio=0.3, score="random", generator=g).selected

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert int(run(7).sum()) == math.ceil(0.3 * 64)


def test_padding_and_nan_reference_are_never_selected_or_counted():
    # Public-port bug: padding ranked. Give the padded and unscored positions the largest losses.
    logits, _ = logits_with_losses([[9.0, 1.0, 2.0, 9.0, 3.0, 4.0]])
    targets = torch.tensor([[-100, 0, 0, 0, 0, 0]])
    ref = torch.tensor([[0.0, 0.0, 0.0, float("nan"), 0.0, 0.0]])
    out = slm_loss(logits, targets, ref, ratio=0.5)
    assert out.selected[0].tolist() == [False, False, False, False, True, True]
    assert out.stats["n_valid"] == 4
    assert out.loss.item() == pytest.approx(3.5, rel=1e-5)
    assert not math.isnan(out.stats["excess_mean"])


def test_ratio_one_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 13)
    targets = torch.randint(0, 13, (3, 7))
    targets[0, :3] = -100
    out = slm_loss(logits, targets, ratio=1.0, score="learner")
    expected = F.cross_entropy(logits.reshape(-1, 13), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert out.stats["n_selected"] == out.stats["n_valid"] == 18


def test_unselected_positions_get_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 6, requires_grad=True)
    targets = torch.randint(0, 6, (2, 8))
    ref = torch.rand(2, 8)
    out = slm_loss(logits, targets, ref, ratio=0.4, scope="sequence")
    out.loss.backward()
    grad_norm = logits.grad.abs().sum(-1)
    assert (grad_norm[~out.selected] == 0).all()
    assert (grad_norm[out.selected] > 0).all()


def test_gradient_equals_mean_over_selected():
    logits, targets = logits_with_losses([LEARNER])
    out = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5)
    out.loss.backward()
    manual = logits.detach().clone().requires_grad_()
    losses = F.cross_entropy(manual[0], targets[0], reduction="none")
    (losses[1] + losses[3]).div(2).backward()
    torch.testing.assert_close(logits.grad, manual.grad)


def test_normalizer_divides_the_selected_sum():
    logits, targets = logits_with_losses([LEARNER])
    out = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5, normalizer=10)
    assert out.loss.item() == pytest.approx((2.0 + 4.0) / 10, rel=1e-5)


def test_no_valid_token_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.full((2, 3), -100)
    out = slm_loss(logits, targets, ratio=0.6, score="learner")
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_stats():
    logits, targets = logits_with_losses([LEARNER])
    out = slm_loss(logits, targets, torch.tensor([REF]), ratio=0.5)
    s = out.stats
    assert s["n_valid"] == 4 and s["n_selected"] == 2
    assert s["selected_fraction"] == 0.5
    assert s["loss_all"] == pytest.approx(2.5, rel=1e-5)
    assert s["loss_selected"] == pytest.approx(3.0, rel=1e-5)
    assert s["loss_unselected"] == pytest.approx(2.0, rel=1e-5)
    assert s["excess_mean"] == pytest.approx(0.825, rel=1e-4)
    assert stats_from_sums({k: v * 0 for k, v in out.sums.items()})["loss_selected"] != 0  # NaN


def test_valid_mask():
    targets = torch.tensor([1, -100, 2, 3])
    ref = torch.tensor([0.1, 0.2, float("nan"), 0.4])
    assert valid_mask(targets).tolist() == [True, False, True, True]
    assert valid_mask(targets, ref).tolist() == [True, False, False, True]
    entropy = torch.tensor([float("nan"), 0.2, 0.3, 0.4])
    assert valid_mask(targets, ref, ref_entropy=entropy).tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.01}, "ratio"),
        ({"score": "entropy"}, "unknown score"),
        ({"scope": "doc"}, "unknown scope"),
        ({"ref_loss": None}, "needs ref_loss"),
        ({"ref_loss": None, "score": "reference"}, "needs ref_loss"),
        ({"score": "reference-entropy"}, "rho score --entropy"),
        ({"score": "reference+entropy"}, "needs the reference's entropy"),
        ({"ref_entropy": torch.zeros(1, 3)}, "ref_entropy .* must have the shape"),
        ({"ref_loss": torch.zeros(1, 3)}, "shape"),
    ],
)
def test_slm_loss_errors(kwargs, message):
    logits, targets = logits_with_losses([LEARNER])
    args = {"ref_loss": torch.tensor([REF]), **kwargs}
    with pytest.raises(ValueError, match=message):
        slm_loss(logits, targets, **args)
