"""The verdict's records (rho.experiment.stats, summary and facts): spreads over seeds, tests
of a difference, the compute table, the winners, the frontier (with the budget ladder's
points), each axis's and the ``Summary``."""

from __future__ import annotations

from rho.experiment.records.base import Record


class Spread(Record):
    """A number over seeds: mean, sample std (ddof=1; 0.0 for one value), count, the values."""

    mean: float
    std: float
    n: int
    values: list[float]


class Difference(Record):
    """mean(a) − mean(b) and its t-test: ``p`` the test's own, ``p_adjusted`` Holm's over the
    ``family`` of tests it was judged in (rho.experiment.family), ``supported`` p_adjusted
    < alpha; se, p, supported None when it cannot be tested."""

    delta: float
    se: float | None = None
    test: str
    t: float | None = None
    df: float | None = None
    critical: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    family: int | None = None
    supported: bool | None = None
    n: list[int]


class Family(Record):
    """The family of tests the report's claims come from, adjusted together (Holm–Bonferroni):
    ``what`` it holds in words, ``tests`` one name per test, ``size`` how many."""

    method: str
    alpha: float
    what: str
    size: int
    tests: list[str]


class Overhead(Record):
    """What an arm is charged before training (mean over its seeds)."""

    flops: float = 0.0
    seconds: float = 0.0  # charged runs' training seconds (no evaluations), other stages' all

    what: str = ""
    tokens_scored: float | None = None


class CostRatios(Record):
    tokens: Spread | None
    flops_train: Spread | None
    seconds_train: Spread | None


class Amortised(Record):
    runs: int
    total: Spread | None
    ratio: Spread | None


class Totals(Record):
    one_off: Spread | None
    ratio_one_off: Spread | None
    amortised: list[Amortised]
    break_even: int | None


class ComputeRow(Record):
    """An arm's cost to reach the target (rho.experiment.summary.compute_table)."""

    baseline: str
    target: float
    seeds: int
    reached: int
    tokens: Spread | None
    flops_train: Spread | None
    seconds_train: Spread | None
    ratio: CostRatios
    overhead: Overhead
    flops_total: Totals | None
    seconds_total: Totals | None


class Rank(Record):
    """The best arm by a value, the runner-up and their difference."""

    arm: str
    value: Spread
    runner_up: str | None = None
    runner_up_value: Spread | None = None
    difference: Difference | None = None
    ranking: list[str]
    places: dict[str, int]
    ranked: int
    runs: int | None = None  # amortised ranks: over how many runs


class Winners(Record):
    loss: dict[str, Rank | None]
    tokens: Rank | None = None
    flops_one_off: Rank | None = None
    flops_amortised: Rank | None = None
    baseline: str | None = None
    target: float | None = None


class Target(Record):
    axis: str
    loss: float
    what: str
    curve_sample_end: float
    curve_sample_gap: float
    curve_windows: int | None


class ReferencePair(Record):
    """An arm seed and the scoring reference that scored its windows (its stage and losses)."""

    seed: int
    reference_seed: int | None
    reference: str
    reference_validation: dict[str, float | None]
    reference_test: dict[str, float | None]
    test: dict[str, float | None]
    minus_clm: dict[str, float] | None


class FrontierEntry(Record):
    ratio_one_off: Spread | None
    seeds_below_clm: int | None  # seeds whose one-off total is below clm's whole run
    against_mix: Difference | None


class LadderPoint(Record):
    """An arm's fully annealed point at one budget (1: its own runs; below: a ladder run), and
    what clm spends to reach its loss: on clm's mean curve (mid-schedule, the paper's way) and
    on clm's laddered runs (each annealed, interpolated in log-compute; None outside them)."""

    budget: float
    loss: Spread  # final validation loss on the axis, over the arm's seeds
    flops: Spread  # one-off total FLOPs: overhead + the whole run
    curve_loss: float  # its curves' mean last point (the sample clm's curve is measured on)
    clm_on_curve: float | None  # clm's FLOPs to curve_loss on its mean curve (None: never)
    clm_on_ladder: float | None  # clm's FLOPs to loss.mean on its ladder (None: outside it)
    ratio_on_curve: float | None  # flops.mean ÷ clm_on_curve
    ratio_on_ladder: float | None  # flops.mean ÷ clm_on_ladder


class Frontier(Record):
    arms: dict[str, FrontierEntry]
    best: str | None
    best_ratio: float | None
    points: dict[str, list[LadderPoint]]  # per arm, by budget
    beats_mix: list[str]  # selection arms below clm-mix's one-off FLOPs to the target


class AxisVerdict(Record):
    """One held-out axis's target (clm's final loss there), compute table and frontier."""

    target: Target
    compute: dict[str, ComputeRow]
    frontier: Frontier


class Summary(Record):
    """The verdict (rho.experiment.facts): the report only formats these numbers. ``target``,
    ``compute`` and ``frontier`` are the target axis's (--target_axis)."""

    losses: dict[str, dict[str, Spread]]
    target_axis: str
    axes: dict[str, AxisVerdict]
    winners: Winners
    tokens_left_out: list[str]
    against: dict[str, dict[str, dict[str, Difference]]]  # baseline -> arm -> axis
    tests: Family
    paired_arms: list[str]
    reference_pairs: dict[str, list[ReferencePair]]
    # source (base | proxy | self) -> axis -> its scoring references' test loss
    scoring_references: dict[str, dict[str, Spread]]
    uncovered_variance: list[str]
    alpha: float
    read_per_trained: dict[str, float]

    @property
    def target(self) -> Target:
        return self.axes[self.target_axis].target

    @property
    def compute(self) -> dict[str, ComputeRow]:
        return self.axes[self.target_axis].compute

    @property
    def frontier(self) -> Frontier:
        return self.axes[self.target_axis].frontier
