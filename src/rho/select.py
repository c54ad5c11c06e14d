"""Every selection rule, in one place: which positions count, token scores, how many a selection
keeps, top-k of tokens, and per-window scores and top windows for sample selection.

Convention: inputs are aligned like the loss's (``rho.loss``): index t of ``targets``,
``learner_loss`` and ``ref_loss`` is about the same target token. Higher score = kept first.

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

SCORES = ("excess", "learner", "reference", "random")
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
    targets: torch.Tensor, ref_loss: torch.Tensor | None = None, ignore_index: int = -100
) -> torch.Tensor:
    """Positions that may be ranked and counted: a real target and, if given, a scored reference."""
    valid = targets != ignore_index
    if ref_loss is not None:
        valid = valid & ~torch.isnan(ref_loss)
    return valid


def token_scores(
    name: str,
    learner_loss: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Selection scores (higher = kept first), detached from the graph.

    ``excess``: learner − reference (the paper's); ``learner``: learner loss alone;
    ``reference``: lowest reference loss first; ``random``: uniform, seeded by ``generator``.
    """
    check_choice(name, SCORES, "score")
    if name in ("excess", "reference") and ref_loss is None:
        raise ValueError(f"score {name!r} needs ref_loss (reference-model losses)")
    learner_loss = learner_loss.detach().float()
    if name == "excess":
        return learner_loss - ref_loss.float()
    if name == "learner":
        return learner_loss
    if name == "reference":
        return -ref_loss.float()
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
    each row (last dim) on its own.
    """
    check_ratio(ratio)
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
