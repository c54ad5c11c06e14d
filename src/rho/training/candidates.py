"""Online RHO-LOSS: choose the windows to train on from a candidate batch.

The train dataloader yields ``candidate_factor`` × the batch size candidate windows. Before the
step the learner (and an online reference, if any) runs forward on them without gradient; each
window is scored by the mean of its valid tokens' score (``rho.selection.select.window_scores``:
mean
learner − reference for ``excess``, the reducible loss); the best windows are kept.

World consistency: the candidates of all ranks are ranked together (rank 0's rows, then rank
1's, ...); the top world_size × B of them, in candidate order, are dealt in contiguous shares of
B rows, rank r training on the r-th share (rows move between ranks when needed), so the trained
windows do not depend on the number of processes for the same global candidate batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from rho import distributed as dist
from rho.data.batches import NOT_MODEL_INPUTS
from rho.scoring.windows import IGNORE, to_model, to_store
from rho.selection.output_layer import model_token_losses
from rho.selection.select import top_windows, window_scores
from rho.training.options import SelectionArguments

LEARNER_SCORES = ("excess", "learner")  # scores that read the learner's loss of each candidate


def forward_losses(
    model,
    batch: dict,
    targets: torch.Tensor,
    chunk: int,
    autocast: Callable[[], AbstractContextManager],
    loss_impl: str = "auto",
) -> torch.Tensor:
    """Per-target losses of ``model`` on ``batch`` (model alignment): forward only, in eval mode,
    under the training autocast, ``chunk`` rows at a time (no more memory than a training
    forward), the output layer by ``loss_impl`` (``rho.selection.output_layer``)."""
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    parts, was_training = [], model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast():
            for i in range(0, targets.shape[0], chunk):
                rows = {k: v[i : i + chunk] for k, v in inputs.items()}
                losses = model_token_losses(model, rows, targets[i : i + chunk], loss_impl)
                parts.append(losses)
    finally:
        model.train(was_training)
    return torch.cat(parts).clone()  # a normal tensor again, outside inference mode


def random_window_scores(n: int, seed: int, step: int, micro: int) -> torch.Tensor:
    """Random scores for the global candidates: the same draw for any world size."""
    draw = torch.Generator().manual_seed(hash((seed, step, micro)) & 0x7FFFFFFF)
    return torch.rand(n, generator=draw)


def choose_windows(
    batch: dict,
    *,
    learner,
    ref_model,
    selection: SelectionArguments,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager],
    seed: int,
    step: int,
    micro: int,
    loss_impl: str = "auto",
) -> tuple[dict, torch.Tensor, dict]:
    """This rank's share of the best windows of the global candidate batch; how many candidate
    tokens the learner and the online reference scored (forward-only); and what was decided
    (``scores`` of the global candidates, the ``chosen`` global rows) for debugging dumps."""
    score, labels = selection.score, batch["labels"]
    targets = to_model(labels, IGNORE)
    n_tokens = float((labels != IGNORE).sum())
    scored = torch.zeros(2, dtype=torch.float64)
    if ref_model is not None and selection.needs_reference:
        ref = forward_losses(ref_model, batch, targets, batch_size, autocast, loss_impl)
        # stored like a LossStore's windows (loss of input_ids[t]), so it travels with the rows
        ref = torch.where(labels == IGNORE, float("nan"), to_store(ref))
        batch = {**batch, "ref_loss": ref}
        scored[1] = n_tokens
    ref_loss = to_model(batch["ref_loss"], float("nan")) if "ref_loss" in batch else None
    learner_loss = None
    if score in LEARNER_SCORES:
        learner_loss = forward_losses(learner, batch, targets, batch_size, autocast, loss_impl)
        scored[0] = n_tokens
    if score == "random":
        local = torch.zeros(targets.shape[0], device=targets.device)
    else:
        local = window_scores(learner_loss, targets, ref_loss, score)
    scores, _ = dist.gather_rows(local)
    if score == "random":
        scores = random_window_scores(scores.shape[0], seed, step, micro).to(scores.device)
    world, rank = dist.world_size(), dist.rank()
    share = min(batch_size, scores.shape[0] // world)
    chosen = top_windows(scores, share * world)
    mine = chosen[rank * share : (rank + 1) * share]
    decided = {"scores": scores, "chosen": chosen}
    if world > 1:  # the share may hold other ranks' candidates
        batch = {k: dist.gather_rows(v)[0] for k, v in batch.items()}
    return {k: v[mine] for k, v in batch.items()}, scored, decided
