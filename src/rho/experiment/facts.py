"""The verdict of a `rho experiment` run, computed once from its results and stored in
results.json (``summary``): the report only formats these numbers, so every figure it prints
can be traced back to that file.

``summarise`` gives: the test-loss table; the target (CLM's mean final loss on the whole target
validation set) and how far the curves' sample sits from it; the compute to reach it; who wins
on each axis; every arm against CLM on every axis with its test (paired where the seeds share
data order, else Welch's); each reference-reading arm seed with the scoring reference that
scored it, and the scoring references' own losses; and the sources of variance the seeds do
not cover.
"""

from __future__ import annotations

import numpy as np

from rho.experiment.arms import ARMS
from rho.experiment.records import (
    ArmRun,
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
) -> Summary:
    """The verdict of the runs: ``overhead`` is each arm's one-off charge; ``pretrained_base``
    whether the base was pretrained here (for the variance the seeds do not cover);
    ``references`` the scoring references, by stage."""
    axis = axes[0]
    losses = loss_table(runs, "test")
    base_runs = runs[BASELINE]
    target = float(np.mean([final_loss(r, axis) for r in base_runs]))
    sample_end = float(np.mean([r.curve.losses[axis][-1] for r in base_runs]))
    compute = compute_table(runs, overhead, baseline=BASELINE, axis=axis, target=target)
    curated_only = [arm for arm in runs if ARMS[arm].data == "curated"]
    won = winners(losses, compute, lambda a, b: shares_order(runs, a, b), curated_only)
    return Summary(
        losses=losses,
        target=Target(
            axis=axis,
            loss=target,
            what="clm's final loss on the whole validation set, mean over its seeds",
            curve_sample_end=sample_end,
            curve_sample_gap=sample_end - target,
            curve_windows=base_runs[0].sample_windows.get(axis),
        ),
        compute=compute,
        winners=won,
        tokens_left_out=curated_only,
        against_baseline=against_baseline(runs, losses),
        paired_arms=[arm for arm in runs if shares_order(runs, arm, BASELINE)],
        reference_pairs=reference_pairs(runs, axes, references),
        scoring_references=scoring_references(references, axes),
        uncovered_variance=uncovered_variance(cfg, pretrained_base),
        frontier=frontier(compute, runs),
        alpha=ALPHA,
        read_per_trained=read_per_trained(runs),
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


def reference_pairs(
    runs: Runs, axes: list[str], references: dict[str, Reference]
) -> dict[str, list[ReferencePair]]:
    """For each arm that reads reference scores: per seed, the scoring reference that scored
    its windows (the reference arm's run, a ``ref-seed`` run for --ref_tokens, a proxy's or a
    self-reference), that reference's own losses, and the arm's test loss minus CLM's of the
    same data seed (the paired difference: data order cancels, the reference does not)."""
    clm = {r.seed: r.final.test for r in runs.get(BASELINE, [])}
    return {
        arm: [pair(r, references[r.reference], clm.get(r.seed), axes) for r in seeds]
        for arm, seeds in runs.items()
        if ARMS[arm].uses_reference
    }


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


def frontier(compute: dict[str, ComputeRow], runs: Runs) -> Frontier:
    """Per arm, its one-off total FLOPs to reach the target (overhead + training) as a ratio to
    clm's whole run, and whether it is below clm's run on every seed and below the curated
    mix's one-off total (Welch's or the paired test on the per-seed totals); ``best``: the arm
    with the least one-off FLOPs to the target among those that reach it on every seed."""
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
    return Frontier(arms=rows, best=best, best_ratio=reached.get(best))
