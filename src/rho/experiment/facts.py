"""The verdict of a `rho experiment` run, computed once from its results and stored in
results.json (``summary``): the report only formats these numbers, so every figure it prints
can be traced back to that file.

``summarise`` gives: the test-loss table; per held-out axis, the target (CLM's mean final loss
on its whole validation set), how far the curves' sample sits from it, the compute to reach it
and the frontier (with the budget ladder's annealed points); who wins on each axis (the
compute ranks on the target axis, --target_axis); every arm against CLM on every axis with its
test (paired where the seeds share data order, else Welch's); the pairing of arms with
reference seeds; and the sources of variance the seeds do not cover.
"""

from __future__ import annotations

import numpy as np

from rho.experiment.arms import ARMS
from rho.experiment.ladder import points
from rho.experiment.records import (
    ArmRun,
    AxisVerdict,
    ComputeRow,
    Difference,
    Frontier,
    FrontierEntry,
    ReferencePair,
    Summary,
    Target,
)
from rho.experiment.settings import ExperimentConfig
from rho.experiment.stats import ALPHA, difference
from rho.experiment.summary import Runs, compute_table, final_loss, loss_table, winners

BASELINE = "clm"
MIX = "clm-mix"  # the cheapest line to beat: curated data mixed in, no overhead


def shares_order(runs: Runs, a: str, b: str) -> bool:
    """Two arms' seeds pair: both train on the corpus's window order for a seed (the same
    store, sampler and seeds), with at least two seeds."""
    seeds = [[r.seed for r in runs[arm]] for arm in (a, b)]
    same_order = all(ARMS[arm].corpus_order for arm in (a, b))
    return same_order and seeds[0] == seeds[1] and len(seeds[0]) > 1


def summarise(
    runs: Runs,
    axes: list[str],
    overhead: dict,
    cfg: ExperimentConfig,
    pretrained_base: bool,
    ladder: Runs | None = None,
) -> Summary:
    """The verdict of the runs: ``overhead`` is each arm's one-off charge; ``pretrained_base``
    whether the base was pretrained here (for the variance the seeds do not cover);
    ``ladder`` the laddered arms' runs below budget 1. The winners are on the target axis."""
    losses = loss_table(runs, "test")
    verdicts = {axis: axis_verdict(runs, ladder or {}, overhead, axis) for axis in axes}
    compute = verdicts[cfg.target].compute
    curated_only = [arm for arm in runs if ARMS[arm].data == "curated"]
    won = winners(losses, compute, lambda a, b: shares_order(runs, a, b), curated_only)
    return Summary(
        losses=losses,
        target_axis=cfg.target,
        axes=verdicts,
        winners=won,
        tokens_left_out=curated_only,
        against_baseline=against_baseline(runs, losses),
        paired_arms=[arm for arm in runs if shares_order(runs, arm, BASELINE)],
        reference_pairs=reference_pairs(runs, axes),
        uncovered_variance=uncovered_variance(cfg, pretrained_base),
        alpha=ALPHA,
        read_per_trained=read_per_trained(runs),
    )


def axis_verdict(runs: Runs, ladder: Runs, overhead: dict, axis: str) -> AxisVerdict:
    """One axis's target (clm's mean final validation loss there), the compute to reach it
    and the frontier, with every arm's annealed points (rho.experiment.ladder)."""
    base_runs = runs[BASELINE]
    target = float(np.mean([final_loss(r, axis) for r in base_runs]))
    sample_end = float(np.mean([r.curve.losses[axis][-1] for r in base_runs]))
    compute = compute_table(runs, overhead, baseline=BASELINE, axis=axis, target=target)
    return AxisVerdict(
        target=Target(
            axis=axis,
            loss=target,
            what="clm's final loss on the whole validation set, mean over its seeds",
            curve_sample_end=sample_end,
            curve_sample_gap=sample_end - target,
            curve_windows=base_runs[0].sample_windows.get(axis),
        ),
        compute=compute,
        frontier=frontier(compute, runs, points(runs, ladder, overhead, axis)),
    )


def read_per_trained(runs: Runs) -> dict[str, float]:
    """arm -> windows read per window trained (above 1 for RHO-LOSS's candidates)."""
    return {
        arm: seeds[0].windows_read / seeds[0].windows_trained
        for arm, seeds in runs.items()
        if seeds[0].windows_trained
    }


def against_baseline(runs: Runs, losses: dict) -> dict[str, dict[str, Difference]]:
    """arm -> axis -> the difference of its test loss from CLM's, with its test."""
    out = {}
    for arm, row in losses.items():
        if arm == BASELINE:
            continue
        paired = shares_order(runs, arm, BASELINE)
        out[arm] = {
            axis: difference(s.values, losses[BASELINE][axis].values, paired=paired)
            for axis, s in row.items()
            if axis in losses[BASELINE]
        }
    return out


def reference_pairs(runs: Runs, axes: list[str]) -> dict[str, list[ReferencePair]]:
    """For each arm that reads reference scores over several seeds: per seed, the reference it
    used, that reference's own test loss and the arm's minus CLM's of the same data seed (the
    paired difference: data order cancels, the reference's seed does not)."""
    refs = {r.seed: r.final.test for r in runs.get("reference", [])}
    clm = {r.seed: r.final.test for r in runs.get(BASELINE, [])}
    out = {}
    for arm, seeds in runs.items():
        if not ARMS[arm].uses_reference or len({r.reference_seed for r in seeds}) < 2:
            continue
        out[arm] = [pair(r, refs, clm.get(r.seed), axes) for r in seeds]
    return out


def pair(run: ArmRun, refs: dict, clm: dict | None, axes: list[str]) -> ReferencePair:
    return ReferencePair(
        seed=run.seed,
        reference_seed=run.reference_seed,
        reference_test=refs.get(run.reference_seed),
        test=run.final.test,
        minus_clm=None if clm is None else {a: run.final.test[a] - clm[a] for a in axes},
    )


def uncovered_variance(cfg: ExperimentConfig, pretrained_base: bool) -> list[str]:
    """What stays fixed across seeds, so the spread over seeds does not include it."""
    fixed = []
    if not cfg.from_scratch:
        fixed.append(
            "one base model" + (" (pretrained here once, seed 0)" if pretrained_base else "")
        )
    fixed.append("one tokenizer")
    fixed.append("one corpus, one curated set and one validation/test split")
    if len(cfg.reference_seeds or cfg.seeds[:1]) < 2:
        fixed.append("one reference model (its seed is fixed)")
    fixed.append("one model size and one schedule")
    return fixed


def frontier(compute: dict[str, ComputeRow], runs: Runs, annealed: dict | None = None) -> Frontier:
    """Per arm, its one-off total FLOPs to reach the target (overhead + training) as a ratio to
    clm's whole run, and whether it is below clm's run on every seed and below the curated
    mix's one-off total (Welch's or the paired test on the per-seed totals); ``best``: the arm
    with the least one-off FLOPs to the target among those that reach it on every seed;
    ``annealed``: every arm's points by budget (rho.experiment.ladder.points); ``beats_mix``:
    the selection arms that reach the target on every seed where the mix does not, or with
    fewer one-off FLOPs than it, the difference supported."""
    rows = {}
    mix = compute[MIX].flops_total if MIX in compute else None
    for arm, row in compute.items():
        total = row.flops_total
        ratio = None if total is None else total.ratio_one_off
        entry = FrontierEntry(ratio_one_off=ratio, below_clm=None, against_mix=None)
        if ratio is not None:
            entry.below_clm = max(ratio.values) < 1.0
            if arm != MIX and mix is not None and mix.one_off is not None:
                entry.against_mix = difference(
                    total.one_off.values, mix.one_off.values, paired=shares_order(runs, arm, MIX)
                )
        rows[arm] = entry
    reached = {arm: e.ratio_one_off.mean for arm, e in rows.items() if e.ratio_one_off}
    best = min(reached, key=reached.get) if reached else None
    return Frontier(
        arms=rows,
        best=best,
        best_ratio=reached.get(best),
        points=annealed or {},
        beats_mix=[arm for arm in rows if selects(arm) and beats(rows, arm)],
    )


def selects(arm: str) -> bool:
    """The arm chooses its tokens or windows by a score (a random choice is a control)."""
    spec = ARMS[arm]
    return (spec.selection != "none" or spec.data in ("pruned", "proto")) and spec.score != "random"


def beats(rows: dict[str, FrontierEntry], arm: str) -> bool:
    """The arm reaches the target on every seed, and the mix does not, or the arm's one-off
    FLOPs are below the mix's, the difference supported."""
    if MIX not in rows or rows[arm].ratio_one_off is None:
        return False
    versus = rows[arm].against_mix
    if rows[MIX].ratio_one_off is None:
        return True
    return versus is not None and bool(versus.supported) and versus.delta < 0
