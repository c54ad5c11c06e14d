"""Does a small size's verdict hold at a larger one? Pure functions from each size's loss
table (arm -> ``Spread`` of its test loss over seeds) to the rankings per size and the
agreement between two sizes (rho.experiment.records.ladder.Agreement says the definitions)."""

from __future__ import annotations

import math
from itertools import combinations

from scipy.stats import kendalltau

from rho.experiment.records import Results, Spread
from rho.experiment.records.ladder import Agreement, AxisLadder, Rung

Table = dict[str, Spread]  # arm -> test loss over seeds, at one size on one axis


def ranking(table: Table) -> list[str]:
    """Arms by mean test loss, lowest first (a tie in the means: by name)."""
    return sorted(table, key=lambda arm: (table[arm].mean, arm))


def pooled_std(a: Spread, b: Spread) -> float:
    """The pooled sample std of two arms' seeds (0.0 with one seed each)."""
    df = a.n + b.n - 2
    if df <= 0:
        return 0.0
    return math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / df)


def decision(a: Spread, b: Spread) -> int:
    """-1: a is lower (better), +1: b is, 0: a tie (|mean difference| <= the pooled std)."""
    delta = a.mean - b.mean
    if abs(delta) <= pooled_std(a, b):
        return 0
    return -1 if delta < 0 else 1


def agreement(small: Table, large: Table, names: tuple[str, str]) -> Agreement:
    """The two sizes' decisions on every pair of the arms both ran, and Kendall's tau-b of
    their mean losses."""
    arms = sorted(set(small) & set(large))
    counts = {"same_order": 0, "opposite_order": 0, "tied_both": 0, "tied_one": 0}
    for a, b in combinations(arms, 2):
        d_small, d_large = decision(small[a], small[b]), decision(large[a], large[b])
        if d_small == d_large:
            counts["tied_both" if d_small == 0 else "same_order"] += 1
        else:
            counts["tied_one" if 0 in (d_small, d_large) else "opposite_order"] += 1
    pairs = len(arms) * (len(arms) - 1) // 2
    agree = counts["same_order"] + counts["tied_both"]
    tau, p = None, None
    if len(arms) >= 2:
        found = kendalltau([small[a].mean for a in arms], [large[a].mean for a in arms])
        if not math.isnan(found.statistic):
            tau, p = float(found.statistic), float(found.pvalue)
    return Agreement(
        smaller=names[0],
        larger=names[1],
        pairs=pairs,
        **counts,
        agreement=agree / pairs if pairs else None,
        tau=tau,
        tau_p=p,
    )


def one_off_ratios(results: Results, axis: str) -> dict[str, float | None]:
    """Each arm's one-off FLOPs to reach CLM's final loss on ``axis``, as a ratio to CLM's run
    (mean over seeds; None where the arm did not reach it)."""
    ratios: dict[str, float | None] = {}
    for arm, row in results.summary.axes[axis].compute.items():
        found = row.flops_total.ratio_one_off if row.flops_total else None
        ratios[arm] = found.mean if found else None
    return ratios


def axis_ladder(axis: str, rungs: list[Rung], results: dict[str, Results]) -> AxisLadder:
    """One axis over the sizes (``results``: size name -> its results), smallest first."""
    names = [r.name for r in rungs if axis in results[r.name].data.axes]
    losses = {
        name: {arm: row[axis] for arm, row in results[name].summary.losses.items() if axis in row}
        for name in names
    }
    largest = names[-1] if names else None

    def compare(a: str, b: str) -> Agreement:
        return agreement(losses[a], losses[b], (a, b))

    return AxisLadder(
        losses=losses,
        ratios={name: one_off_ratios(results[name], axis) for name in names},
        rankings={name: ranking(losses[name]) for name in names},
        adjacent=[compare(a, b) for a, b in zip(names, names[1:], strict=False)],
        to_largest=[compare(a, largest) for a in names[:-1]],
    )
