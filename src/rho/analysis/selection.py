"""Which tokens SLM selects, and how their loss behaves (Rho-1, Figures 6, 8 and 9): pure numpy.

Losses here are ``(W, L)`` window matrices under the alignment rule (NaN at each window start)
or any array of the same shape as its mask. Selection reuses
:func:`rho.selection.select.select_topk`, so
analyses rank tokens exactly as training does: the top ``ceil(ratio · n_valid)`` scores per
ranking unit, ties by position.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rho.selection.select import select_topk, token_scores


def valid_positions(*losses: np.ndarray) -> np.ndarray:
    """Positions where every given loss is finite (window starts are not)."""
    valid = np.ones(np.shape(losses[0]), dtype=bool)
    for loss in losses:
        valid &= np.isfinite(np.asarray(loss))
    return valid


def scores_for(
    score: str, learner: np.ndarray, ref: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Selection scores (higher is kept first), as in training: see
    rho.selection.select.token_scores
    (which refuses an unknown score)."""
    learner_t = torch.as_tensor(np.nan_to_num(np.asarray(learner, dtype=np.float32)))
    ref_t = None if ref is None else torch.as_tensor(np.asarray(ref, dtype=np.float32))
    generator = torch.Generator().manual_seed(seed) if score == "random" else None
    return token_scores(score, learner_t, ref_t, generator).numpy()


def select(
    scores: np.ndarray,
    valid: np.ndarray,
    ratio: float,
    scope: str = "batch",
    group: int | None = None,
) -> np.ndarray:
    """Bool mask of the selected tokens of ``(W, L)`` windows.

    ``scope="sequence"`` ranks each window alone; ``scope="batch"`` ranks ``group`` consecutive
    windows together (all of them when ``group`` is None), like a training batch.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float32))
    valid = np.atleast_2d(np.asarray(valid, dtype=bool))
    if scores.shape != valid.shape:
        raise ValueError(f"scores {scores.shape} and valid {valid.shape} differ")
    scores = np.where(valid, scores, 0.0)  # NaN scores at invalid positions are never ranked
    if scope == "sequence":
        group = 1
    rows = scores.shape[0]
    group = rows if group is None else max(1, int(group))
    selected = np.zeros(scores.shape, dtype=bool)
    for start in range(0, rows, group):
        block = slice(start, start + group)
        mask = select_topk(
            torch.from_numpy(np.ascontiguousarray(scores[block])),
            torch.from_numpy(np.ascontiguousarray(valid[block])),
            ratio,
            "batch",
        )
        selected[block] = mask.numpy()
    return selected


def split_loss(loss: np.ndarray, selected: np.ndarray, valid: np.ndarray) -> dict:
    """Mean loss of the selected, unselected and all valid tokens, and their counts."""
    loss = np.asarray(loss, dtype=np.float64)
    selected = np.asarray(selected, dtype=bool) & valid
    unselected = np.asarray(valid, dtype=bool) & ~selected

    def mean(mask: np.ndarray) -> float:
        return float(loss[mask].mean()) if mask.any() else float("nan")

    return {
        "loss_selected": mean(selected),
        "loss_unselected": mean(unselected),
        "loss_all": mean(selected | unselected),
        "n_selected": int(selected.sum()),
        "n_unselected": int(unselected.sum()),
    }


def mean_loss_matrix(losses: np.ndarray, selections: np.ndarray) -> np.ndarray:
    """(S, E): mean of evaluating checkpoint e's losses over the tokens selection s picked.

    ``losses`` is (E, ...) (one loss array per evaluating checkpoint), ``selections`` is (S, ...)
    (one bool mask per selecting checkpoint), with the same trailing shape. NaN for an empty
    selection or where the evaluated losses are all NaN.
    """
    losses = np.asarray(losses, dtype=np.float64)
    selections = np.asarray(selections, dtype=bool)
    if losses.shape[1:] != selections.shape[1:]:
        raise ValueError(
            f"losses {losses.shape} and selections {selections.shape} differ after the first axis"
        )
    flat_loss = losses.reshape(losses.shape[0], -1)
    flat_sel = selections.reshape(selections.shape[0], -1)
    matrix = np.full((flat_sel.shape[0], flat_loss.shape[0]), np.nan)
    for s, mask in enumerate(flat_sel):
        if not mask.any():
            continue
        picked = flat_loss[:, mask]
        finite = np.isfinite(picked)
        counts = finite.sum(axis=1)
        sums = np.where(finite, picked, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix[s] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return matrix


def perplexity_matrix(losses: np.ndarray, selections: np.ndarray) -> np.ndarray:
    """(S, E): perplexity exp(mean loss) of the tokens selected at checkpoint s, evaluated with
    checkpoint e's model (Figure 8: rows select, columns evaluate)."""
    return np.exp(mean_loss_matrix(losses, selections))


def overlap_matrix(selections: np.ndarray) -> np.ndarray:
    """(S, S): Jaccard overlap |A ∩ B| / |A ∪ B| of every pair of selections (1 on the
    diagonal; NaN where both are empty)."""
    flat = np.asarray(selections, dtype=bool).reshape(len(selections), -1).astype(np.float64)
    inter = flat @ flat.T
    sizes = flat.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def pair_by_step(steps: list[int], targets: list[int]) -> list[int]:
    """For each step, the index of the target with the same step, else the nearest one (ties to
    the earlier)."""
    if not targets:
        raise ValueError("nothing to pair with")
    return [min(range(len(targets)), key=lambda i: (abs(targets[i] - s), i)) for s in steps]


def metric_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a training-log key, skipping logs without it or with a non-finite
    value (e.g. loss_unselected of a CLM run)."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in record:
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def sweep_summary(ratios: list[float], eval_losses: list[float]) -> dict:
    """Held-out loss against selection ratio: the best ratio and each ratio's gap to it and to
    ratio 1.0 (all tokens, i.e. plain causal LM) when it was run."""
    if len(ratios) != len(eval_losses) or not ratios:
        raise ValueError("need one held-out loss per ratio")
    order = np.argsort(ratios, kind="stable")
    ratios = [float(ratios[i]) for i in order]
    losses = [float(eval_losses[i]) for i in order]
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    best = min(finite, key=lambda i: losses[i]) if finite else None
    full = ratios.index(1.0) if 1.0 in ratios else None
    rows = []
    for r, v in zip(ratios, losses, strict=True):
        row = {"ratio": r, "eval_loss": v}
        if full is not None:
            row["vs_all_tokens"] = v - losses[full]
        rows.append(row)
    return {
        "rows": rows,
        "best_ratio": ratios[best] if best is not None else None,
        "best_eval_loss": losses[best] if best is not None else None,
        "all_tokens_eval_loss": losses[full] if full is not None else None,
    }
