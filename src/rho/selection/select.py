"""Every selection rule, in one place: which positions count, token scores, how many a selection
keeps, top-k of tokens, and per-window scores and top windows for sample selection.

Convention: inputs are aligned like the loss's (``rho.selection.loss``): index t of ``targets``,
``learner_loss``, ``ref_loss`` and ``ref_entropy`` is about the same target token (the entropy is
that of the reference's distribution that predicts it). Higher score = kept first.

Scores (``token_scores``): ``excess`` (learner − reference loss, the paper's), ``learner``,
``reference`` (lowest reference loss first), ``random`` (seeded control), ``reference-entropy``
(lowest reference entropy first: the tokens the reference is most certain about; Rho-1's
self-reference setting) and ``reference+entropy``: the rank average of the two, each token's
mean over {reference loss, reference entropy} of its rank among the valid tokens of the unit
being selected from (ties share their mean rank; lowest both = kept first). Ranks need no
common scale between nats of loss and nats of entropy, and being taken over the whole unit
(after the scores of every rank are gathered, for ``batch``), the selection is the same for
any number of processes. ``rank_average`` is that rule; ``select_topk`` applies it when given
several keys per token, and ``rho prune`` applies it over the whole store.

How many tokens a selection keeps is decided by one function, ``n_keep`` (ceil(ratio · n) per
selection unit); ``select_topk`` selects that many and ``count_kept`` counts that many, so the
trainer's step normaliser and the selection cannot disagree. A different rule is a different
``keep`` function passed to both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rho.errors import UserError

SCORES = ("excess", "learner", "reference", "random", "reference-entropy", "reference+entropy")
REFERENCE_SCORES = ("excess", "reference", "reference-entropy", "reference+entropy")
ENTROPY_SCORES = ("reference-entropy", "reference+entropy")  # need a LossStore with entropy
SCOPES = ("batch", "sequence")
KeepRule = Callable[[float, torch.Tensor], torch.Tensor]  # (ratio, sizes per unit) -> kept


def check_ratio(ratio: float, option: str = "ratio") -> None:
    """A kept fraction must be in (0, 1] (a UserError, which is a ValueError)."""
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise UserError(f"{option} must be in (0, 1], got {ratio}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def valid_mask(
    targets: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    ignore_index: int = -100,
    ref_entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions that may be ranked and counted: a real target and, if given, a scored reference
    (loss and entropy)."""
    valid = targets != ignore_index
    for ref in (ref_loss, ref_entropy):
        if ref is not None:
            valid = valid & ~torch.isnan(ref)
    return valid


def check_score_inputs(
    name: str, ref_loss: torch.Tensor | None, ref_entropy: torch.Tensor | None
) -> None:
    """What a score needs: a UserError (a ValueError) naming what is missing."""
    check_choice(name, SCORES, "score")
    if name in ("excess", "reference", "reference+entropy") and ref_loss is None:
        raise UserError(f"score {name!r} needs ref_loss (reference-model losses)")
    if name in ENTROPY_SCORES and ref_entropy is None:
        raise UserError(
            f"score {name!r} needs the reference's entropy (a LossStore scored with "
            "`rho score --entropy`)"
        )


def token_scores(
    name: str,
    learner_loss: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    ref_entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selection scores (higher = kept first), detached from the graph, shape of the losses;
    for ``reference+entropy`` two keys per token (shape + (2,): −loss, −entropy) that
    ``select_topk`` turns into their rank average within each selection unit.

    ``excess``: learner − reference (the paper's); ``learner``: learner loss alone;
    ``reference``: lowest reference loss first; ``random``: uniform, seeded by ``generator``;
    ``reference-entropy``: lowest reference entropy first.
    """
    check_score_inputs(name, ref_loss, ref_entropy)

    def real(x: torch.Tensor) -> torch.Tensor:  # float32, or float64 kept (pruning's sums)
        return x.detach().double() if x.dtype == torch.float64 else x.detach().float()

    learner_loss = real(learner_loss)
    if name == "excess":
        return learner_loss - real(ref_loss)
    if name == "learner":
        return learner_loss
    if name == "reference":
        return -real(ref_loss)
    if name == "reference-entropy":
        return -real(ref_entropy)
    if name == "reference+entropy":
        return torch.stack([-real(ref_loss), -real(ref_entropy)], dim=-1)
    # Drawn on the CPU so a seed gives the same draw on every device.
    draw = torch.rand(learner_loss.shape, generator=generator)
    return draw.to(learner_loss.device)


# --- How many are kept ---------------------------------------------------------------------------


def n_keep(ratio: float, n_valid: int | torch.Tensor) -> int | torch.Tensor:
    """k = ceil(ratio · n_valid); the 1e-9 guards float noise (0.7 · 10 must keep 7, not 8)."""
    if torch.is_tensor(n_valid):
        return torch.ceil(n_valid.double() * ratio - 1e-9).clamp(min=0).long()
    return max(0, math.ceil(n_valid * ratio - 1e-9))


def unit_sizes(valid: torch.Tensor, scope: str) -> torch.Tensor:
    """Valid positions per selection unit: one unit for ``batch``, one per row for ``sequence``."""
    check_choice(scope, SCOPES, "scope")
    if scope == "batch":
        return valid.sum().reshape(1)
    return valid.reshape(-1, valid.shape[-1]).sum(-1)


def count_kept(sizes: torch.Tensor, ratio: float, keep: KeepRule = n_keep) -> torch.Tensor:
    """How many positions a selection keeps over units of these sizes (what the trainer divides
    the step's loss by)."""
    return keep(ratio, sizes.long()).sum()


# --- Token selection ---------------------------------------------------------------------------


def rank_average(keys: torch.Tensor, valid: torch.Tensor, scope: str = "batch") -> torch.Tensor:
    """(..., K) keys per position (higher = better) -> (...) float64: each valid position's mean
    over the K keys of its rank among the valid positions of its unit (``batch``: all of them;
    ``sequence``: its row), as a fraction from 0 (worst) to 1 (best); tied values share their mean
    rank; NaN at invalid positions."""
    check_choice(scope, SCOPES, "scope")
    if keys.shape[:-1] != valid.shape:
        raise ValueError(f"keys {tuple(keys.shape)} must be valid {tuple(valid.shape)} plus K")
    if valid.numel() == 0:
        return torch.full(valid.shape, math.nan, dtype=torch.float64, device=keys.device)
    width = valid.shape[-1] if scope == "sequence" and valid.dim() else valid.numel()
    units_valid = valid.reshape(-1, width)
    units_keys = keys.reshape(-1, width, keys.shape[-1]).double()
    total = torch.zeros(units_valid.shape, dtype=torch.float64, device=keys.device)
    for j in range(keys.shape[-1]):
        # invalid positions sort last (+inf) and so never count below a valid value
        key = torch.where(units_valid, units_keys[..., j], math.inf).contiguous()
        ordered = key.sort(dim=-1).values
        below = torch.searchsorted(ordered, key, side="left")
        up_to = torch.searchsorted(ordered, key, side="right")
        total += (below + up_to - 1).double() / 2  # 0-based mean rank of the tied values
    n = units_valid.sum(-1, keepdim=True)
    fraction = total / keys.shape[-1] / (n - 1).clamp(min=1)
    return torch.where(units_valid, fraction, math.nan).reshape(valid.shape)


def _ranks(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of every position along the last dim: valid before invalid, then highest score first,
    ties by position (stable sorts), so the result is deterministic."""
    key = torch.where(valid, torch.nan_to_num(scores.float(), nan=-math.inf), -math.inf)
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    invalid_in_order = (~valid).gather(-1, order).to(torch.uint8)
    order = order.gather(-1, torch.argsort(invalid_in_order, dim=-1, stable=True))
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def select_topk(
    scores: torch.Tensor,
    valid: torch.Tensor,
    ratio: float,
    scope: str = "batch",
    keep: KeepRule = n_keep,
) -> torch.Tensor:
    """Boolean mask keeping exactly ``keep(ratio, n_valid)`` valid positions per scope unit.

    ``scope="batch"`` ranks all valid positions of the tensor together; ``scope="sequence"`` ranks
    each row (last dim) on its own. ``scores`` with one more dim than ``valid`` are several keys
    per position, ranked by their ``rank_average`` within each unit.
    """
    check_ratio(ratio)
    if scores.dim() == valid.dim() + 1:
        scores = rank_average(scores, valid, scope)
    if scores.shape != valid.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and valid {tuple(valid.shape)} differ")
    k = keep(ratio, unit_sizes(valid, scope))
    if scope == "batch":
        selected = _ranks(scores.reshape(-1), valid.reshape(-1)) < k
    else:
        rows_valid = valid.reshape(-1, valid.shape[-1])
        selected = _ranks(scores.reshape(rows_valid.shape), rows_valid) < k[:, None]
    return selected.view(valid.shape) & valid


# --- Sample selection (whole windows) ----------------------------------------------------------


def window_scores(
    learner_loss: torch.Tensor | None,
    targets: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    score: str = "excess",
    ignore_index: int = -100,
) -> torch.Tensor:
    """One score per window (row), higher = trained first: the mean over the row's valid targets
    of the token score, so ``excess`` gives the mean reducible loss (learner − reference) of
    RHO-LOSS. Ignored targets and positions without a reference (NaN) are left out of the mean;
    a row without any valid target scores NaN. ``random`` is not a per-window statistic: draw it
    over the global candidates instead."""
    if score == "random":
        raise ValueError("random window scores are drawn per candidate, not computed")
    if score in ENTROPY_SCORES:
        raise UserError(f"score {score!r} selects tokens, not windows (use --selection token)")
    uses_ref = score in ("excess", "reference")
    valid = valid_mask(targets, ref_loss if uses_ref else None, ignore_index)
    if learner_loss is None:  # "reference" needs no learner forward
        learner_loss = torch.zeros(targets.shape, device=targets.device)
    tokens = token_scores(score, learner_loss, ref_loss)
    n = valid.sum(-1)
    total = torch.where(valid, tokens, 0.0).sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), float("nan"))


def top_windows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices of the ``k`` best windows, returned in row order: highest score first, NaN
    last, ties by position (a stable sort), so the choice is deterministic."""
    if not 0 <= k <= scores.shape[0]:
        raise ValueError(f"cannot choose {k} of {scores.shape[0]} windows")
    nan = torch.isnan(scores)
    order = torch.argsort(torch.where(nan, -math.inf, scores.float()), descending=True, stable=True)
    order = order[torch.argsort(nan[order].to(torch.uint8), stable=True)]  # NaN after -inf too
    return order[:k].sort().values
