"""The selective loss: pure torch, no I/O.

Convention: inputs are already aligned. ``logits[b, t]`` predicts ``targets[b, t]``,
``ref_loss[b, t]`` is the reference model's loss on that same target and ``ref_entropy[b, t]`` the
entropy of the reference's distribution that predicts it. ``targets == ignore_index`` marks
padding or ignored positions (prompt tokens of instruction data too) and a NaN in ``ref_loss`` or
``ref_entropy`` marks a position the reference could not score: neither is ever selected or
counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from rho.selection.linear_ce import HeadInputs, chunk_stats
from rho.selection.select import (
    SCOPES,
    check_choice,
    check_ratio,
    check_score_inputs,
    select_topk,
    token_scores,
    valid_mask,
)

CHUNK_TOKENS = 2048  # rows of logits upcast to float32 at a time on a GPU
CPU_CHUNK_BYTES = 4 << 20  # on a CPU the loss runs ~2x faster when a float32 chunk fits in cache


def default_chunk_tokens(logits: torch.Tensor) -> int:
    if logits.device.type != "cpu":
        return CHUNK_TOKENS
    return max(64, CPU_CHUNK_BYTES // (4 * logits.shape[-1]))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy whose float32 working set is one chunk of rows.

    Saves only the logits (no copy) and one log-sum-exp per row; the softmax is recomputed chunk by
    chunk in backward, so neither pass ever holds a float32 (N, V) tensor.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, chunk):
        block = lambda rows: logits[rows].float()  # noqa: E731
        losses, lse, _ = chunk_stats(logits.shape[0], block, targets, ignore_index, chunk)
        valid = targets != ignore_index
        ctx.save_for_backward(logits, torch.where(valid, targets, 0), valid, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        logits, safe_targets, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = torch.where(valid, grad_losses.float(), 0.0)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = torch.exp(logits[rows].float() - lse[rows, None])
            probs.scatter_add_(
                1, safe_targets[rows, None], -torch.ones_like(probs[:, :1])
            )  # softmax - onehot
            grad[rows] = (probs * scale[rows, None]).to(logits.dtype)
        return grad, None, None, None


def token_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Per-token cross-entropy in float32, shape of ``targets``; 0 at ignored positions.

    Computed ``chunk_tokens`` rows at a time (default: by device, see ``default_chunk_tokens``)
    so a float32 copy of the whole (B, T, V) logits never exists, in forward or backward.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus a vocab dim"
        )
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(logits)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    flat = logits.reshape(-1, logits.shape[-1])
    losses = _ChunkedCrossEntropy.apply(flat, targets.reshape(-1), ignore_index, chunk_tokens)
    return losses.view(targets.shape)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Entropy (nats) of the next-token distribution at every position, float32, shape of
    ``logits`` without the vocab dim: H = logsumexp(z) − Σ softmax(z)·z. No gradient: it is a
    reference's statistic. Chunked like ``token_losses``, so only one chunk of rows is ever
    upcast to float32."""
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(logits)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    flat = logits.reshape(-1, logits.shape[-1])
    # our own copy even of float32 logits: entropy_ changes it in place
    block = lambda rows: flat[rows].to(torch.float32, copy=True)  # noqa: E731
    nothing = torch.full(flat.shape[:1], -1, device=flat.device)  # no targets: losses unused
    _, _, entropies = chunk_stats(flat.shape[0], block, nothing, -1, chunk_tokens, entropy=True)
    return entropies.view(logits.shape[:-1])


STAT_KEYS = ("n_valid", "n_selected", "sum_all", "sum_selected", "sum_excess", "n_excess")


@dataclass
class SLMResult:
    """What ``slm_loss`` returns: the loss to backpropagate, the selection, and its statistics."""

    loss: torch.Tensor  # mean learner loss over the selected tokens (differentiable)
    selected: torch.Tensor  # bool, shape of targets
    token_loss: torch.Tensor  # per-token learner loss, float32 (differentiable from logits)
    sums: dict[str, torch.Tensor]  # counts and sums (STAT_KEYS): add them across batches and ranks

    @property
    def stats(self) -> dict[str, float]:
        return stats_from_sums(self.sums)


def selection_sums(
    token_loss: torch.Tensor,
    selected: torch.Tensor,
    valid: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Counts and loss sums as 0-d float tensors (no device sync), ready to be summed over
    micro-batches and ranks before ``stats_from_sums`` turns them into means."""
    loss = token_loss.detach()

    def total(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values, 0.0).sum()

    sums = {
        "n_valid": valid.sum().float(),
        "n_selected": selected.sum().float(),
        "sum_all": total(valid, loss),
        "sum_selected": total(selected, loss),
        "sum_excess": torch.zeros((), device=loss.device),
        "n_excess": torch.zeros((), device=loss.device),
    }
    if ref_loss is not None:
        sums["sum_excess"] = total(valid, loss - torch.nan_to_num(ref_loss.float()))
        sums["n_excess"] = sums["n_valid"]
    return sums


def stats_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """n_valid, n_selected, selected fraction and the mean loss of all, selected and unselected
    tokens, and mean excess (NaN where a mean has no tokens)."""
    s = {k: float(v) for k, v in sums.items()}

    def div(a: float, b: float) -> float:
        return a / b if b else float("nan")

    n_unselected = s["n_valid"] - s["n_selected"]
    return {
        "n_valid": int(s["n_valid"]),
        "n_selected": int(s["n_selected"]),
        "selected_fraction": div(s["n_selected"], s["n_valid"]),
        "loss_all": div(s["sum_all"], s["n_valid"]),
        "loss_selected": div(s["sum_selected"], s["n_selected"]),
        "loss_unselected": div(s["sum_all"] - s["sum_selected"], n_unselected),
        "excess_mean": div(s["sum_excess"], s["n_excess"]),
    }


def selective_mean(
    token_loss: torch.Tensor, selected: torch.Tensor, normalizer: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the selected tokens' losses over ``normalizer`` (default: how many were selected).

    Unselected positions are masked with ``where`` (not multiplied by 0) so their gradient is
    exactly zero even if their loss is inf. An empty selection gives 0.0 that still backpropagates.
    """
    return _mean(torch.where(selected, token_loss, 0.0).sum(), selected, normalizer)


def _mean(total: torch.Tensor, selected: torch.Tensor, normalizer) -> torch.Tensor:
    if normalizer is None:
        normalizer = selected.sum()
    return total / torch.clamp(torch.as_tensor(normalizer, device=total.device), min=1)


def _head_losses(inputs: HeadInputs, targets, ratio: float, ignore_index: int, normalizer):
    """(every target's loss, without gradient; selected -> the loss) from hidden states. At
    ratio 1 every real target is likely kept: one pass then gives their losses and gradients."""

    def loss_of(selected: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        if total is None:
            total = inputs.selected_sum(targets, selected)[0]
        return _mean(total, selected, normalizer)

    if ratio < 1.0 or inputs.fused is not None:
        return inputs.token_losses(targets, ignore_index), loss_of
    real = targets != ignore_index
    total, kept = inputs.selected_sum(targets, real)
    token_loss = torch.zeros(targets.shape, device=kept.device).masked_scatter_(real, kept)
    return token_loss, lambda sel: loss_of(sel, total if torch.equal(sel, real) else None)


def slm_loss(
    logits: torch.Tensor | HeadInputs,
    targets: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    ratio: float = 0.6,
    score: str = "excess",
    scope: str = "batch",
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    normalizer: float | torch.Tensor | None = None,
    select: Callable[..., torch.Tensor] | None = None,
    chunk_tokens: int | None = None,
    ref_entropy: torch.Tensor | None = None,
) -> SLMResult:
    """Selective Language Modeling loss (Rho-1): mean learner loss over the top-``ratio`` tokens.

    Tokens are ranked by ``score`` (detached; see ``rho.selection.select``) within each ``scope``
    unit; only
    the selected tokens' losses carry gradient. ``ratio=1.0`` equals mean cross-entropy over valid
    tokens. ``reference-entropy`` and ``reference+entropy`` need ``ref_entropy``.

    Adapters may pass ``normalizer`` (the number of tokens selected over a whole optimizer step,
    for gradient accumulation and many ranks) and ``select`` (a drop-in for ``select_topk``, e.g.
    one that ranks across all ranks).

    ``logits`` may be ``HeadInputs`` (hidden states and the output layer,
    ``rho.selection.linear_ce``):
    then the whole logits never exist, ``token_loss`` carries no gradient, and only the selected
    tokens go through the output layer with gradient.
    """
    if targets.dim() < 1:
        raise ValueError("targets must have at least one dimension")
    for name, ref in (("ref_loss", ref_loss), ("ref_entropy", ref_entropy)):
        if ref is not None and ref.shape != targets.shape:
            raise ValueError(
                f"{name} {tuple(ref.shape)} must have the shape of targets {tuple(targets.shape)}"
            )
    check_ratio(ratio)
    check_choice(scope, SCOPES, "scope")
    check_score_inputs(score, ref_loss, ref_entropy)
    if ref_loss is not None:
        ref_loss = ref_loss.to(device=targets.device)
    if ref_entropy is not None:
        ref_entropy = ref_entropy.to(device=targets.device)

    valid = valid_mask(targets, ref_loss, ignore_index, ref_entropy)
    if isinstance(logits, torch.Tensor):
        token_loss = token_losses(logits, targets, ignore_index, chunk_tokens)
        loss_of = partial(selective_mean, token_loss, normalizer=normalizer)
    else:
        token_loss, loss_of = _head_losses(logits, targets, ratio, ignore_index, normalizer)
    scores = token_scores(score, token_loss, ref_loss, generator, ref_entropy)
    selected = (select or select_topk)(scores, valid, ratio, scope)
    loss = loss_of(selected)
    sums = selection_sums(token_loss, selected, valid, ref_loss)
    return SLMResult(loss=loss, selected=selected, token_loss=token_loss, sums=sums)
