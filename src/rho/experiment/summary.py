"""The arithmetic of a multi-arm, multi-seed experiment: pure functions from per-run results
(plain, JSON-ready dicts) to the tables a sceptical reviewer asks for.

This module owns: the test-loss table per arm and held-out axis (``loss_table``), the compute
needed to reach a target validation loss — tokens, training FLOPs and wall time, one-off and
amortised over runs that reuse an arm's overhead (reference training and scoring), with the
break-even number of runs (``compute_table``) — and which arm wins on each axis, SLM or not
(``winners``). The spread over seeds and the tests of a difference are ``rho.experiment.stats``;
the verdict stored in results.json is ``rho.experiment.facts``; Markdown is
``rho.experiment.tables`` and figures ``rho.experiment.figures``.

Inputs are rho.experiment.records' models: ``runs`` maps an arm to one ``ArmRun`` per seed
(its ``final`` losses, its ``curve``: validation loss per axis with the cumulative training
tokens, FLOPs and seconds at each evaluation, and its whole-run ``train_tokens``,
``flops_train``, ``seconds_train``); ``overhead`` maps an arm to its ``Overhead``.
"""

from __future__ import annotations

import math

import numpy as np

from rho.experiment.records import (
    Amortised,
    ArmRun,
    ComputeRow,
    CostRatios,
    Overhead,
    Rank,
    Spread,
    Totals,
    Winners,
)
from rho.experiment.stats import difference, spread

# Per-seed costs: the name in the tables, the curve's column, the run's whole-run attribute.
_COSTS = (
    ("tokens", "tokens", "train_tokens"),
    ("flops_train", "flops", "flops_train"),
    ("seconds_train", "seconds", "seconds_train"),
)
Runs = dict[str, list[ArmRun]]


def loss_table(runs: Runs, split: str = "test") -> dict[str, dict[str, Spread]]:
    """``table[arm][axis]`` = the ``spread`` over the arm's seeds of its final loss on ``split``
    (an axis missing from some seeds is spread over the seeds that have it)."""
    table = {}
    for arm, seeds in runs.items():
        per_axis: dict[str, list[float]] = {}
        for run in seeds:
            for axis, loss in getattr(run.final, split).items():
                per_axis.setdefault(axis, []).append(loss)
        table[arm] = {axis: spread(v) for axis, v in per_axis.items()}
    return table


def tokens_to_reach(tokens: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First point where a curve reaches ``target`` (x at the first loss <= target), linearly
    interpolated between evaluations; None if it never does."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return float(tokens[0])
            t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
            return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
    return None


def _reach(run: ArmRun, target: float, axis: str) -> dict[str, float | None]:
    """A seed's tokens, training FLOPs and seconds where its validation curve on ``axis`` first
    reaches ``target`` (linear interpolation between evaluations; None: never)."""
    losses = np.asarray(run.curve.losses[axis], dtype=np.float64)
    return {
        key: tokens_to_reach(np.asarray(getattr(run.curve, column), float), losses, target)
        for key, column, _ in _COSTS
    }


def final_loss(run: ArmRun, axis: str, split: str = "validation") -> float:
    """A run's final loss on the whole ``split`` set of ``axis`` (its curve's last point if the
    run has no final loss there)."""
    final = getattr(run.final, split)
    return float(final[axis]) if axis in final else float(run.curve.losses[axis][-1])


def _spread_or_none(values) -> Spread | None:
    """The spread of per-seed values, or None unless every seed has one: a mean over only the
    seeds that got there would report the lucky ones."""
    if not values or any(v is None for v in values):
        return None
    return spread(values)


def break_even(train: float, overhead: float, base_train: float, base_overhead: float = 0.0):
    """The smallest number of runs N from which on an arm's amortised total is below the
    baseline's, i.e. for every M ≥ N:

        train + overhead/M < base_train + base_overhead/M
        ⇔ M·(base_train − train) > overhead − base_overhead.

    With d = base_train − train (saving per run) and e = overhead − base_overhead (extra one-off
    cost): d > 0 gives N = max(1, ⌊e/d⌋ + 1) (strict inequality, so e/d = 2.5 → 3 and e/d = 2 →
    3); d = 0 gives N = 1 when e < 0, else None; d < 0 gives None: the arm's training alone costs
    more than the baseline's, so no number of runs pays its overhead back. Example: overhead 10,
    training 6, baseline 10 → 6 + 10/N < 10 ⇔ N > 2.5 → N = 3."""
    d = base_train - train
    e = overhead - base_overhead
    if d < 0 or (d == 0 and e >= 0):
        return None
    if d == 0:
        return 1

    def below(n: int) -> bool:
        return train + overhead / n < base_train + base_overhead / n

    n = max(1, math.floor(e / d) + 1)
    while not below(n):  # guard against rounding of e/d at an exact integer
        n += 1
    while n > 1 and below(n - 1):
        n -= 1
    return n


def _totals(reach: list, extra: float, base_train: float, base_extra: float, amortise) -> Totals:
    """One-off and amortised totals (training to reach + overhead, or + overhead/N) of one cost,
    per seed, with their ratios to the baseline's totals and the break-even N (on means)."""
    one_off = _spread_or_none([None if r is None else r + extra for r in reach])
    amortised = [
        Amortised(
            runs=int(n),
            total=_spread_or_none([None if r is None else r + extra / n for r in reach]),
            ratio=_ratio(reach, extra / n, base_train + base_extra / n),
        )
        for n in amortise
    ]
    even = None
    if one_off is not None:
        even = break_even(one_off.mean - extra, extra, base_train, base_extra)
    return Totals(
        one_off=one_off,
        ratio_one_off=_ratio(reach, extra, base_train + base_extra),
        amortised=amortised,
        break_even=even,
    )


def _ratio(reach: list, extra: float, base: float | None) -> Spread | None:
    """The spread over seeds of (value + extra) / base; None if a seed has no value or base is 0."""
    if not base or not reach or any(r is None for r in reach):
        return None
    return spread([(r + extra) / base for r in reach])


def compute_table(
    runs: Runs,
    overhead: dict[str, Overhead] | None = None,
    baseline: str = "clm",
    amortise=(1, 10, 100),
    axis: str = "target",
    target: float | None = None,
) -> dict[str, ComputeRow]:
    """What each arm spends to reach ``target`` on ``axis``: by default the baseline's final
    validation loss (the mean over its seeds, on the whole validation set, or of its curve's
    last point when a run has no final loss there).

    Per arm (``ComputeRow``): ``target``, ``seeds`` and ``reached`` (how many seeds got there);
    ``tokens``, ``flops_train``, ``seconds_train`` (the ``spread`` over seeds of the cost to
    reach, linearly interpolated on the curve; None unless every seed reaches); ``ratio`` (each
    of those three divided by the baseline's whole-run mean); ``overhead`` (the arm's one-off
    cost before training); and ``flops_total`` / ``seconds_total`` (``Totals``: training to
    reach + overhead, its ratio to the baseline's training + own overhead, the same amortised
    over N runs for each N in ``amortise``, and the break-even N, see ``break_even``).

    The baseline is measured like every arm, on its curve: a seed that ends above the mean of
    its seeds does not reach it, and the curves may be a sample of the validation set while the
    target is the whole set's."""
    overhead = overhead or {}
    if baseline not in runs:
        raise KeyError(f"baseline arm {baseline!r} not in runs ({', '.join(runs)})")
    if target is None:
        target = float(np.mean([final_loss(r, axis) for r in runs[baseline]]))
    base_mean = {
        key: float(np.mean([getattr(r, end) for r in runs[baseline]])) for key, _, end in _COSTS
    }
    base_extra = overhead.get(baseline, Overhead())
    return {
        arm: _compute_row(
            seeds,
            overhead.get(arm, Overhead()),
            base_mean,
            base_extra,
            amortise,
            baseline=baseline,
            axis=axis,
            target=target,
        )
        for arm, seeds in runs.items()
    }


def _compute_row(
    seeds,
    extra: Overhead,
    base_mean: dict,
    base_extra: Overhead,
    amortise,
    *,
    baseline: str,
    axis: str,
    target: float,
) -> ComputeRow:
    """One arm's row of ``compute_table``."""
    reach = [_reach(r, target, axis) for r in seeds]
    per_key = {key: [r[key] for r in reach] for key, _, _ in _COSTS}
    costs = {key: _spread_or_none(per_key[key]) for key, _, _ in _COSTS}
    ratios = {key: _ratio(per_key[key], 0.0, base_mean[key]) for key, _, _ in _COSTS}
    overhead = Overhead(flops=extra.flops, seconds=extra.seconds, what=extra.what)
    totals = {
        f"{cost}_total": _totals(
            per_key[key], getattr(extra, cost), base_mean[key], getattr(base_extra, cost), amortise
        )
        for cost, key in (("flops", "flops_train"), ("seconds", "seconds_train"))
    }
    return ComputeRow(
        baseline=baseline,
        target=target,
        seeds=len(seeds),
        reached=sum(r["tokens"] is not None for r in reach),
        **costs,
        ratio=CostRatios(**ratios),
        overhead=overhead,
        **totals,
    )


def _rank(candidates: dict[str, Spread | None], paired=None) -> Rank | None:
    """The best (lowest) and runner-up of {arm: spread} (None values skipped), with their
    difference; ``paired(a, b)`` says whether two arms' values pair by seed."""
    items = [(arm, s) for arm, s in candidates.items() if s is not None]
    if not items:
        return None
    items.sort(key=lambda kv: kv[1].mean)
    (arm, best), rest = items[0], items[1:]
    rank = Rank(
        arm=arm,
        value=best,
        ranking=[a for a, _ in items],
        places={a: i + 1 for i, (a, _) in enumerate(items)},
        ranked=len(items),
    )
    if rest:
        rank.runner_up, rank.runner_up_value = rest[0]
        both = paired is not None and paired(arm, rest[0][0])
        rank.difference = difference(best.values, rest[0][1].values, paired=both)
    return rank


def winners(
    loss_table: dict,
    compute_table: dict[str, ComputeRow] | None = None,
    paired=None,
    tokens_left_out=(),
) -> Winners:
    """Which arm wins on each axis, whichever it is.

    ``loss``: per axis, the rank of the arms' mean test losses; ``tokens``: fewest tokens to
    reach the target; ``flops_one_off``: least one-off total FLOPs (training to reach +
    overhead); ``flops_amortised``: least FLOPs amortised over the largest N (its ``runs``).
    A rank (``Rank``) names the winner, its value, the runner-up and their ``difference``
    (its ``supported`` says whether the lead survives the spread over seeds), and the ranking;
    None when no arm has a value. Arms that did not reach the target on every seed are left out
    of the compute ranks, and so are ``tokens_left_out`` from the tokens rank (tokens of
    another kind, e.g. curated rather than corpus tokens). ``paired(a, b)``: whether two arms'
    seeds share data order (a paired test), see ``difference``."""
    axes: list[str] = []
    for row in loss_table.values():
        axes += [a for a in row if a not in axes]
    out = Winners(
        loss={
            axis: _rank({arm: row.get(axis) for arm, row in loss_table.items()}, paired)
            for axis in axes
        }
    )
    if not compute_table:
        return out
    first = next(iter(compute_table.values()))
    out.baseline, out.target = first.baseline, first.target
    out.tokens = _rank(
        {arm: row.tokens for arm, row in compute_table.items() if arm not in tokens_left_out},
        paired,
    )
    flops = {arm: row.flops_total for arm, row in compute_table.items() if row.flops_total}
    out.flops_one_off = _rank({arm: t.one_off for arm, t in flops.items()}, paired)
    if flops:
        amortised = first.flops_total.amortised
        largest = max(range(len(amortised)), key=lambda i: amortised[i].runs)
        out.flops_amortised = _rank(
            {arm: t.amortised[largest].total for arm, t in flops.items()}, paired
        )
        if out.flops_amortised is not None:
            out.flops_amortised.runs = amortised[largest].runs
    return out
