"""The report's sections on the budget ladder and on every axis's frontier, from results.json's
``summary`` (rho.experiment.facts, rho.experiment.budget_ladder): each arm's fully annealed points
with clm's cost to reach their loss, on its curve and on its laddered runs, side by side; and
per axis, the arm with the least one-off FLOPs to clm's loss there and the selection arms
that beat the curated mix."""

from __future__ import annotations

from rho.experiment.records import ArmRun, Frontier, LadderPoint, Summary
from rho.experiment.tables import pm

MIX = "clm-mix"


def _cost(flops: float | None, ratio: float | None, missing: str) -> str:
    """clm's FLOPs to a loss and the point's one-off FLOPs as a ratio to them."""
    if flops is None:
        return missing
    if ratio is None:
        return f"{flops:.3g} (at its start: the base)"
    return f"{flops:.3g} ({ratio:.3g}×)"


def _point_row(arm: str, p: LadderPoint, clm: list[LadderPoint]) -> str:
    """One point's row; ``clm``: clm's points (its ladder when there are two or more)."""
    if len(clm) < 2:
        outside = "no ladder"
    elif p.loss.mean < min(q.loss.mean for q in clm):
        outside = "below every clm run: beyond the ladder"
    else:
        outside = "above clm's smallest run"
    cells = [
        arm,
        f"{p.budget:g}",
        pm(p.loss, ".4f"),
        pm(p.flops, ".3g"),
        _cost(p.clm_on_curve, p.ratio_on_curve, "not reached by clm's curve"),
        _cost(p.clm_on_ladder, p.ratio_on_ladder, outside),
    ]
    return "| " + " | ".join(cells) + " |"


def ladder_lines(frontier: Frontier, ladder: dict[str, list[ArmRun]]) -> list[str]:
    """Every arm's annealed points (one per budget) and clm's FLOPs to their loss, both ways."""
    budgets = sorted({r.budget for runs in ladder.values() for r in runs})
    clm = frontier.points.get("clm", [])
    laddered = (
        f"{', '.join(ladder)} also ran at {', '.join(f'{b:g}' for b in budgets)} of the budget, "
        "each a whole run with its own warm-up and cosine decay."
        if ladder
        else "No arm ran a budget ladder (--budgets): clm's laddered runs are missing."
    )
    lines = [
        "## Annealed points: clm's cost to each arm's loss",
        "",
        f"{laddered} A point is an arm's whole run at one budget: its final validation loss "
        "(mean ± sample std over seeds) at its one-off FLOPs (overhead + the whole run). Beside "
        "it, the FLOPs clm spends to reach that loss, with the point's FLOPs as a ratio to them "
        "(below 1: cheaper than clm): on clm's curve (its whole run read mid-schedule, the "
        "paper's way, at the point's curve loss) and on clm's laddered runs (each annealed, "
        "interpolated in log-compute between them; outside them, no figure).",
        "",
        "| arm | budget | final validation loss | one-off FLOPs | clm's FLOPs on its curve | "
        "clm's FLOPs on its laddered runs |",
        "|---|---|---|---|---|---|",
    ]
    for arm, points in frontier.points.items():
        lines += [_point_row(arm, p, clm) for p in points]
    return [*lines, ""]


def axes_lines(summary: Summary) -> list[str]:
    """Per axis: its target, the arm with the least one-off FLOPs to it (× clm's run) and the
    selection arms that beat the curated mix there."""
    lines = [
        "## The frontier on every axis",
        "",
        "Each axis's target is clm's final validation loss there (mean over its seeds); "
        f"results.json holds every axis's compute table and frontier (`summary.axes`); the "
        f"tables above are on {summary.target_axis}. A selection arm beats the mix on an axis "
        "when it reaches the target on every seed and the mix does not, or does with fewer "
        "one-off FLOPs than the mix, the difference supported.",
        "",
        "| axis | target | least one-off FLOPs to it (× clm's run) | selection arms that beat "
        "clm-mix |",
        "|---|---|---|---|",
    ]
    for axis, verdict in summary.axes.items():
        f = verdict.frontier
        best = "no arm on every seed" if f.best is None else f"{f.best} ({f.best_ratio:.3g}×)"
        mix = "no clm-mix arm" if MIX not in f.arms else ", ".join(f.beats_mix) or "none"
        lines.append(f"| {axis} | {verdict.target.loss:.4f} | {best} | {mix} |")
    return [*lines, ""]
