"""Token-loss dynamics across checkpoints (Rho-1, Figure 3): pure numpy, no I/O.

Input is a ``(C, N)`` matrix: the loss of each of N tokens (columns) under each of C checkpoints
(rows, in training order). A token is *unscored* (category -1) when any checkpoint has NaN for it,
which under the alignment rule happens exactly at window starts.

The paper's rule (PAPER.md, "The observation"), as implemented by :func:`classify`:

1. Fit a least-squares line to the token's losses against x = checkpoint index normalised to
   [0, 1] (first checkpoint 0, last 1). The *change* is slope × span = slope × 1: the loss change
   the fit predicts from the first checkpoint to the last.
2. change < −threshold → **H→L** (learned); change > +threshold → **L→H** (forgotten). A change of
   exactly ±threshold (within ``1e-9``, the float noise of the fit) is not a change.
3. Otherwise the token's loss stayed put, and the *last* loss decides: **L→L** when it is at most
   the mean loss, else **H→H**.

"The mean loss" is not pinned down by the paper's wording ("the last loss is at most the mean
loss"). Our reading: the mean over all scored tokens at the *last* checkpoint, i.e. a stable
token is "low" when it ends below the population's average. (A token's own mean across
checkpoints would make the split a coin toss for flat trajectories.) Pass ``mean=`` to use
another reference level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = ("H→L", "L→L", "H→H", "L→H")
"""Category names; a token's category is its index here (-1: unscored)."""
H_TO_L, L_TO_L, H_TO_H, L_TO_H = range(4)
UNSCORED = -1

PAPER_1B = {"H→L": 26.0, "L→L": 51.0, "H→H": 11.0, "L→H": 12.0}
"""Percent of validation tokens per category, TinyLlama-1B on OpenWebMath (Rho-1, Figure 3a)."""
PAPER_7B = {"H→L": 28.0, "L→L": 51.0, "H→H": 8.0, "L→H": 13.0}
"""The same for the 7B model."""

TOLERANCE = 1e-9
"""Changes within this of ±threshold count as exactly at the threshold (no change)."""


def checkpoint_positions(n_checkpoints: int) -> np.ndarray:
    """x of each checkpoint: its index normalised to [0, 1]."""
    if n_checkpoints < 2:
        raise ValueError(f"need at least 2 checkpoints to fit a trend, got {n_checkpoints}")
    return np.linspace(0.0, 1.0, n_checkpoints)


def as_loss_matrix(losses: np.ndarray) -> np.ndarray:
    """Validate and convert to a float64 (C, N) matrix with C >= 2."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses must be (checkpoints, tokens), got shape {losses.shape}")
    checkpoint_positions(losses.shape[0])
    return losses


def scored_mask(losses: np.ndarray) -> np.ndarray:
    """Tokens with a finite loss at every checkpoint."""
    return np.isfinite(np.asarray(losses)).all(axis=0)


def fit_change(losses: np.ndarray) -> np.ndarray:
    """Per token: slope × span of the least-squares line through its losses (x in [0, 1]).

    NaN for unscored tokens. For two checkpoints this is simply last − first.
    """
    losses = as_loss_matrix(losses)
    x = checkpoint_positions(losses.shape[0])
    xc = x - x.mean()
    with np.errstate(invalid="ignore"):
        centred = losses - losses.mean(axis=0)
        slope = (xc[:, None] * centred).sum(axis=0) / (xc**2).sum()
    span = x[-1] - x[0]
    return slope * span


@dataclass
class Trajectories:
    """The result of :func:`classify`."""

    categories: np.ndarray  # int8 (N,): index into CATEGORIES, -1 unscored
    change: np.ndarray  # float64 (N,): slope × span of the fitted line, NaN unscored
    mean: float  # the level that splits L→L from H→H
    threshold: float


def classify(losses: np.ndarray, threshold: float = 0.2, mean: float | None = None) -> Trajectories:
    """Classify every token's loss trajectory as H→L, L→L, H→H or L→H (see the module doc).

    ``mean`` defaults to the mean loss over scored tokens at the last checkpoint.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    losses = as_loss_matrix(losses)
    scored = scored_mask(losses)
    change = fit_change(losses)
    last = losses[-1]
    if mean is None:
        mean = float(last[scored].mean()) if scored.any() else float("nan")
    categories = np.full(losses.shape[1], UNSCORED, dtype=np.int8)
    down = change < -threshold - TOLERANCE
    up = change > threshold + TOLERANCE
    flat = ~down & ~up
    categories[scored & down] = H_TO_L
    categories[scored & up] = L_TO_H
    categories[scored & flat & (last <= mean)] = L_TO_L
    categories[scored & flat & (last > mean)] = H_TO_H
    change = np.where(scored, change, np.nan)
    return Trajectories(categories, change, float(mean), float(threshold))


def category_table(categories: np.ndarray) -> dict:
    """Counts and percentages per category (of scored tokens), the paper's figures beside them."""
    categories = np.asarray(categories)
    scored = int((categories >= 0).sum())
    rows = []
    for code, name in enumerate(CATEGORIES):
        count = int((categories == code).sum())
        rows.append(
            {
                "category": name,
                "count": count,
                "percent": 100.0 * count / scored if scored else float("nan"),
                "paper_1b_percent": PAPER_1B[name],
                "paper_7b_percent": PAPER_7B[name],
            }
        )
    return {"scored": scored, "unscored": int((categories < 0).sum()), "rows": rows}


def table_markdown(table: dict) -> str:
    """The category table as a Markdown table."""
    lines = [
        "| category | tokens | ours | paper 1B | paper 7B |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['category']} | {row['count']:,} | {row['percent']:.1f}% | "
            f"{row['paper_1b_percent']:.0f}% | {row['paper_7b_percent']:.0f}% |"
        )
    lines.append(f"| all scored | {table['scored']:,} | 100% | 100% | 100% |")
    return "\n".join(lines)


def category_curves(losses: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """(4, C): the mean loss of each category's tokens at each checkpoint (NaN if empty)."""
    losses = as_loss_matrix(losses)
    categories = np.asarray(categories)
    curves = np.full((len(CATEGORIES), losses.shape[0]), np.nan)
    for code in range(len(CATEGORIES)):
        members = categories == code
        if members.any():
            curves[code] = losses[:, members].mean(axis=1)
    return curves


def loss_spread(losses: np.ndarray, kind: str = "std") -> np.ndarray:
    """Per token, how much its loss moves across checkpoints: ``std`` (population standard
    deviation) or ``range`` (max − min). NaN for unscored tokens."""
    losses = as_loss_matrix(losses)
    scored = scored_mask(losses)
    if kind == "std":
        spread = losses.std(axis=0)
    elif kind == "range":
        spread = losses.max(axis=0) - losses.min(axis=0)
    else:
        raise ValueError(f"unknown spread {kind!r}; choose std or range")
    return np.where(scored, spread, np.nan)


def fluctuation(losses: np.ndarray) -> np.ndarray:
    """Per token, the mean absolute step between consecutive checkpoints: high for a loss that
    goes up and down, unlike the spread, which a steady fall also makes large."""
    losses = as_loss_matrix(losses)
    steps = np.abs(np.diff(losses, axis=0)).mean(axis=0)
    return np.where(scored_mask(losses), steps, np.nan)


def most_fluctuating(
    values: np.ndarray,
    categories: np.ndarray,
    category: int,
    k: int,
    min_gap: int = 1,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of up to ``k`` tokens of ``category`` with the largest ``values`` (e.g. from
    :func:`fluctuation`), highest first, at least ``min_gap`` positions apart (so the examples
    are not k neighbours of one passage) and, given ``keys`` (e.g. token ids), one per key (so
    they are not k copies of one token)."""
    values = np.asarray(values, dtype=np.float64)
    members = np.flatnonzero((np.asarray(categories) == category) & np.isfinite(values))
    order = members[np.argsort(-values[members], kind="stable")]
    chosen: list[int] = []
    seen: set = set()
    for index in order:
        if len(chosen) == k:
            break
        key = None if keys is None else keys[index].item()
        if key is not None and key in seen:
            continue
        if all(abs(int(index) - c) >= min_gap for c in chosen):
            chosen.append(int(index))
            seen.add(key)
    return np.asarray(chosen, dtype=np.int64)


def spread_summary(spread: np.ndarray, categories: np.ndarray) -> dict:
    """Median and 90th percentile of the spread, overall and per category."""
    spread = np.asarray(spread, dtype=np.float64)
    categories = np.asarray(categories)

    def stats(mask: np.ndarray) -> dict:
        values = spread[mask & np.isfinite(spread)]
        if not len(values):
            return {"tokens": 0, "median": float("nan"), "p90": float("nan")}
        p50, p90 = np.percentile(values, [50, 90])
        return {"tokens": int(len(values)), "median": float(p50), "p90": float(p90)}

    summary = {"all": stats(categories >= 0)}
    for code, name in enumerate(CATEGORIES):
        summary[name] = stats(categories == code)
    return summary
