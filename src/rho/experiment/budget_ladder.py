"""The budget ladder's arithmetic (--budgets): every arm's fully annealed points (a whole run at
one budget: its final loss and its one-off FLOPs), and what clm spends to reach each point's
loss, two ways side by side: on clm's curve (the validation curve of its whole run, read
mid-schedule: the paper's way) and on clm's laddered runs (each a whole run with its own
warm-up and cosine decay, interpolated in log-compute between them: what clm reaches when
given that budget).

Inputs are rho.experiment.records' models: ``runs`` (arm -> its runs at budget 1), ``ladder``
(arm -> its runs below 1, each with its ``budget``) and ``overhead`` (arm -> its one-off charge).
"""

from __future__ import annotations

import math

import numpy as np

from rho.experiment.records import ArmRun, LadderPoint, Overhead
from rho.experiment.stats import spread
from rho.experiment.summary import Runs, final_loss, tokens_to_reach

BASELINE = "clm"


def ladder_flops(line: list[tuple[float, float]], loss: float) -> float | None:
    """The compute at which a ladder of annealed runs, (compute, loss) read in order of
    compute, first reaches ``loss``, with log-compute interpolated linearly in the loss between
    the two runs around it; None outside the ladder (a loss below every run's, or above its
    smallest run's: no run says how little compute would do) or with fewer than two runs.
    Example: (100, 5.0) and (400, 4.0) reach 4.5 at exp((ln 100 + ln 400)/2) = 200."""
    if len(line) < 2:
        return None
    line = sorted(line)
    for i, (flops, reached) in enumerate(line):
        if reached == loss:
            return float(flops)
        if reached < loss:
            if i == 0:
                return None
            before, above = line[i - 1]
            share = (above - loss) / (above - reached)
            return float(math.exp(math.log(before) + share * math.log(flops / before)))
    return None


def mean_curve(seeds: list[ArmRun], axis: str) -> tuple[np.ndarray, np.ndarray]:
    """The mean over seeds of their (FLOPs, validation loss on ``axis``) curves, point by point
    (the seeds of one arm share a schedule; a longer curve is cut to the shortest)."""
    n = min(len(r.curve.flops) for r in seeds)
    flops = np.mean([np.asarray(r.curve.flops[:n], float) for r in seeds], axis=0)
    losses = np.mean([np.asarray(r.curve.losses[axis][:n], float) for r in seeds], axis=0)
    return flops, losses


def _ratio(flops: float, clm: float | None) -> float | None:
    return flops / clm if clm else None


def points(runs: Runs, ladder: Runs, overhead: dict[str, Overhead], axis: str):
    """arm -> its ``LadderPoint`` per budget (its own runs at 1, its ladder below), each with
    clm's FLOPs to its loss on clm's mean curve and on clm's ladder (needs clm's ladder: two
    budgets or more)."""
    raw = {arm: _annealed(runs[arm] + ladder.get(arm, []), overhead, arm, axis) for arm in runs}
    clm_line = [(p["flops"].mean, p["loss"].mean) for p in raw.get(BASELINE, [])]
    curve = mean_curve(runs[BASELINE], axis) if BASELINE in runs else None
    out = {}
    for arm, found in raw.items():
        out[arm] = []
        for p in found:
            on_curve = None if curve is None else tokens_to_reach(*curve, p["curve_loss"])
            on_ladder = ladder_flops(clm_line, p["loss"].mean)
            out[arm].append(
                LadderPoint(
                    **p,
                    clm_on_curve=on_curve,
                    clm_on_ladder=on_ladder,
                    ratio_on_curve=_ratio(p["flops"].mean, on_curve),
                    ratio_on_ladder=_ratio(p["flops"].mean, on_ladder),
                )
            )
    return out


def _annealed(seeds: list[ArmRun], overhead: dict[str, Overhead], arm: str, axis: str):
    """An arm's runs grouped by budget: their final validation loss, one-off total FLOPs
    (overhead + the whole run) and the mean of their curves' last points."""
    extra = overhead[arm].flops if arm in overhead else 0.0
    out = []
    for budget in sorted({r.budget for r in seeds}):
        mine = [r for r in seeds if r.budget == budget]
        out.append(
            {
                "budget": budget,
                "loss": spread([final_loss(r, axis) for r in mine]),
                "flops": spread([extra + r.flops_train for r in mine]),
                "curve_loss": float(np.mean([r.curve.losses[axis][-1] for r in mine])),
            }
        )
    return out
