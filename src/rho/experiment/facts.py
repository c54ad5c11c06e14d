"""The verdict of a `rho experiment` run, computed once from its results and stored in
results.json (``summary``): the report only formats these numbers, so every figure it prints
can be traced back to that file.

``summarise`` gives: the test-loss table; per held-out axis, the target (CLM's mean final loss
on its whole validation set), how far the curves' sample sits from it, the compute to reach it
and the frontier (with the budget ladder's annealed points); who wins on each axis (the
compute ranks on the target axis, --target_axis); every arm against CLM and against the curated
mix on every axis with its test (paired where the seeds share data order, else Welch's), every
test Holm-adjusted over the report's family (rho.experiment.family); each reference-reading arm
seed with the scoring reference that scored it, and the scoring references' own losses; and the
sources of variance the seeds do not cover.
"""

from __future__ import annotations

import numpy as np

from rho.experiment.arms import ARMS
from rho.experiment.budget_ladder import points
from rho.experiment.family import adjust_family
from rho.experiment.records import (
    ArmRun,
    AxisVerdict,
    ComputeRow,
    Difference,
    Frontier,
    FrontierEntry,
    Reference,
    ReferencePair,
    Spread,
    Summary,
    Target,
)
from rho.experiment.settings import ExperimentConfig
from rho.experiment.stats import ALPHA, difference, spread
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
    references: dict[str, Reference],
    ladder: Runs | None = None,
) -> Summary:
    """The verdict of the runs: ``overhead`` is each arm's one-off charge; ``pretrained_base``
    whether the base was pretrained here (for the variance the seeds do not cover);
    ``references`` the scoring references, by stage; ``ladder`` the laddered arms' runs below
    budget 1. The winners are on the target axis."""
    losses = loss_table(runs, "test")
    verdicts = {axis: axis_verdict(runs, ladder or {}, overhead, axis) for axis in axes}
    target_axis = cfg.target_axis or axes[0]
    compute = verdicts[target_axis].compute
    curated_only = [arm for arm in runs if ARMS[arm].data == "curated"]
    won = winners(losses, compute, lambda a, b: shares_order(runs, a, b), curated_only)
    tested = against(runs, losses)
    frontiers = {axis: verdict.frontier for axis, verdict in verdicts.items()}
    tests = adjust_family(tested, won, frontiers, MIX, target_axis)
    for front in frontiers.values():  # by the adjusted tests
        front.beats_mix = [arm for arm in front.arms if selects(arm) and beats(front.arms, arm)]
    return Summary(
        losses=losses,
        target_axis=target_axis,
        axes=verdicts,
        winners=won,
        tokens_left_out=curated_only,
        against=tested,
        tests=tests,
        paired_arms=[arm for arm in runs if shares_order(runs, arm, BASELINE)],
        reference_pairs=reference_pairs(runs, axes, references),
        scoring_references=scoring_references(references, axes),
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


def against(runs: Runs, losses: dict) -> dict[str, dict[str, dict[str, Difference]]]:
    """baseline -> arm -> axis -> the difference of the arm's test loss from the baseline's,
    with its test: every arm against clm, and against clm-mix when it ran (clm against the mix
    is the mix's row against clm, not a second test)."""
    out = {}
    for base in (BASELINE, MIX):
        if base not in losses:
            continue
        out[base] = {}
        for arm, row in losses.items():
            if arm in (BASELINE, base):
                continue
            paired = shares_order(runs, arm, base)
            out[base][arm] = {
                axis: difference(s.values, losses[base][axis].values, paired=paired)
                for axis, s in row.items()
                if axis in losses[base]
            }
    return out


def reference_pairs(
    runs: Runs, axes: list[str], references: dict[str, Reference]
) -> dict[str, list[ReferencePair]]:
    """For each arm that reads reference scores: per seed, the scoring reference that scored
    its windows (the reference arm's run, a ``ref-seed`` run for --ref_tokens, a proxy's or a
    self-reference), that reference's own losses, and the arm's test loss minus CLM's of the
    same data seed (the paired difference: data order cancels, the reference does not). A
    run with no recorded reference (a hand-made results file) has no pair."""
    clm = {r.seed: r.final.test for r in runs.get(BASELINE, [])}
    pairs = {
        arm: [
            pair(r, references[r.reference], clm.get(r.seed), axes)
            for r in seeds
            if r.reference in references
        ]
        for arm, seeds in runs.items()
        if ARMS[arm].uses_reference
    }
    return {arm: found for arm, found in pairs.items() if found}


def pair(run: ArmRun, ref: Reference, clm: dict | None, axes: list[str]) -> ReferencePair:
    return ReferencePair(
        seed=run.seed,
        reference_seed=run.reference_seed,
        reference=run.reference,
        reference_validation=ref.final.validation,
        reference_test=ref.final.test,
        test=run.final.test,
        minus_clm=None if clm is None else {a: run.final.test[a] - clm[a] for a in axes},
    )


def scoring_references(
    references: dict[str, Reference], axes: list[str]
) -> dict[str, dict[str, Spread]]:
    """Per source (base, proxy, self): its scoring references' own test loss on every axis
    (that has one), over their seeds."""
    out = {}
    for source in dict.fromkeys(r.source for r in references.values()):
        mine = [r.final.test for r in references.values() if r.source == source]
        losses = {a: [t[a] for t in mine if t.get(a) is not None] for a in axes}
        out[source] = {a: spread(values) for a, values in losses.items() if values}
    return out


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
    clm's whole run, on how many seeds it is below clm's run, and whether it is below the curated
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
        entry = FrontierEntry(ratio_one_off=ratio, seeds_below_clm=None, against_mix=None)
        if ratio is not None:
            entry.seeds_below_clm = sum(v < 1.0 for v in ratio.values)
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
        beats_mix=[],  # by the Holm-adjusted tests: summarise sets it
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
