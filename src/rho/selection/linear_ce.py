"""Linear cross-entropy: per-token losses from a causal LM's last hidden states and its output
layer, a chunk of rows at a time, so the (B, T, V) logits never exist, in forward or backward.

Pure torch, no I/O. ``HeadInputs`` (hidden states + ``Head``) is what
``rho.selection.loss.slm_loss`` takes
in place of logits: it gives every token's loss without gradient (for ranking; entropy from the
same chunks) and the summed loss of the selected tokens only, whose gradient (``_SelectedSum``)
is computed chunk by chunk during its forward, so the output layer's backward costs the selected
share of the tokens. The model side (getting the hidden states, refusing heads rho cannot
reproduce, picking the implementation) is ``rho.selection.output_layer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CPU_CHUNK_BYTES = 8 << 20  # float32 logits of one chunk of rows on a CPU (cache-sized)
GPU_CHUNK_BYTES = 256 << 20  # on a GPU: big enough for full-speed matmuls


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows of logits computed at a time: a fixed float32 budget per chunk."""
    budget = CPU_CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    return max(64, budget // (4 * vocab))


def entropy_(block: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's softmax, H = lse − Σ softmax(z)·z; changes ``block`` in place."""
    probs = block.sub(lse[:, None]).exp_()
    # a -inf logit (a banned token) has probability 0 and must add 0, not 0·(-inf) = NaN
    block.nan_to_num_(nan=math.nan, posinf=math.inf, neginf=0.0)
    # softmax(z)·z as one dot product per row: no third chunk-sized tensor
    return lse - torch.bmm(probs[:, None, :], block[:, :, None]).view(-1)


def chunk_stats(
    n: int,
    block: Callable[[slice], torch.Tensor],
    targets: torch.Tensor,
    ignore_index: int,
    chunk: int,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(losses, log-sum-exps, entropies or None) of ``n`` rows, float32; ``block(rows)`` gives a
    chunk's float32 logits (its own copy when ``entropy``: that changes it). Loss 0 at ignored
    targets."""
    device = targets.device
    losses = torch.empty(n, dtype=torch.float32, device=device)
    lse = torch.empty(n, dtype=torch.float32, device=device)
    entropies = torch.empty(n, dtype=torch.float32, device=device) if entropy else None
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        z = block(rows)
        lse[rows] = torch.logsumexp(z, dim=-1)
        picked = z.gather(1, safe[rows, None]).squeeze(1)
        losses[rows] = torch.where(valid[rows], lse[rows] - picked, 0.0)
        if entropies is not None:
            entropies[rows] = entropy_(z, lse[rows])
    return losses, lse, entropies


@dataclass(frozen=True)
class Head:
    """An output layer: logits = softcap·tanh(scale·(h Wᵀ + b)/softcap) (no tanh without a cap)."""

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None = None
    scale: float = 1.0  # Cohere's logit_scale, 1/Granite's logits_scaling
    softcap: float | None = None  # Gemma 2's final_logit_softcapping

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits of some rows of hidden states (a new tensor)."""
        z = F.linear(hidden, self.weight, self.bias).float()
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def slope(self, logits: torch.Tensor) -> torch.Tensor | float:
        """d logits / d (h Wᵀ + b), from the logits themselves."""
        if self.softcap is None:
            return self.scale
        return (1 - (logits / self.softcap).square_()).mul_(self.scale)


class _SelectedSum(torch.autograd.Function):
    """Sum of the losses of rows that all have a real target, and (returned apart, without
    gradient) each row's loss. The gradients are computed in forward, chunk by chunk, and only
    scaled by the incoming gradient in backward: no chunk's logits are kept or recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head: Head, chunk: int):
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(hidden.dtype)  # no copy unless autocast made the hidden states bf16
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h, t = hidden[rows], targets[rows, None]
            s = head.logits(h)
            lse = torch.logsumexp(s, dim=-1, keepdim=True)
            losses[rows] = (lse - s.gather(1, t)).squeeze(1)
            slope = head.slope(s)
            g = s.sub_(lse).exp_()  # softmax, in place of the logits
            g.scatter_add_(1, t, torch.full_like(t, -1, dtype=g.dtype)).mul_(slope)
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[rows] = g @ w
            if grad_w is not None:
                # in place when the dtypes agree (float32), else through a temporary (bf16 autocast)
                if grad_w.dtype == g.dtype and not torch.is_autocast_enabled(h.device.type):
                    grad_w.addmm_(g.T, h)
                else:
                    grad_w += g.T @ h
            if grad_b is not None:
                grad_b += g.sum(0)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w)))
        ctx.grad_b = grad_b
        ctx.mark_non_differentiable(losses)
        return losses.sum(), losses

    @staticmethod
    def backward(ctx, grad_total, _grad_losses):
        grad_h, grad_w = ctx.saved_tensors
        grads = [
            None if g is None or not ctx.needs_input_grad[i] else g * grad_total.to(g.dtype)
            for i, g in enumerate((grad_h, grad_w, ctx.grad_b))
        ]
        return (*grads, None, None, None)


@dataclass
class HeadInputs:
    """Last hidden states (..., H) and the output layer, in place of logits: see the module doc.
    ``fused`` (optional) is a fused library's function (``rho.selection.output_layer``): f(h, head,
    targets, reduction) with reduction "none" or "sum"."""

    hidden: torch.Tensor
    head: Head
    chunk: int | None = None
    fused: Callable | None = None

    def _losses(self, rows: torch.Tensor, t: torch.Tensor, ignore_index: int, entropy: bool):
        if self.fused is not None and not entropy:
            losses = self.fused(rows, self.head, t, "none").float()
            return torch.where(t != ignore_index, losses, 0.0), None
        chunk = self.chunk or chunk_rows(self.head.weight.shape[0], rows.device)
        block = lambda r: self.head.logits(rows[r])  # noqa: E731
        losses, _, ent = chunk_stats(rows.shape[0], block, t, ignore_index, chunk, entropy)
        return losses, ent

    @torch.no_grad()
    def token_losses(
        self, targets: torch.Tensor, ignore_index: int = -100, entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Every target's loss (0 where ignored), float32, shape of ``targets``, no gradient;
        with ``entropy``, also the entropy of each position's distribution, from the same
        chunks."""
        flat = self.hidden.reshape(-1, self.hidden.shape[-1])
        losses, ent = self._losses(flat, targets.reshape(-1), ignore_index, entropy)
        if ent is None:
            return losses.view(targets.shape)
        return losses.view(targets.shape), ent.view(targets.shape)

    def selected_sum(
        self, targets: torch.Tensor, selected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the sum of the selected targets' losses, differentiable; their losses, flat, without
        gradient, or None from a fused library). Only the selected rows reach the output layer,
        forward and backward. Selected targets must be real ones (not ignored)."""
        index = selected.reshape(-1).nonzero().squeeze(1)
        rows = self.hidden.reshape(-1, self.hidden.shape[-1]).index_select(0, index)
        t = targets.reshape(-1)[index]
        if not torch.is_grad_enabled():  # evaluation
            losses = self._losses(rows, t, -100, False)[0]
            return losses.sum(), losses
        if self.fused is not None:
            return self.fused(rows, self.head, t, "sum"), None
        chunk = self.chunk or chunk_rows(self.head.weight.shape[0], rows.device)
        head = self.head
        return _SelectedSum.apply(rows, head.weight, head.bias, t, head, chunk)
