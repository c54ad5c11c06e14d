"""The verdict's records (rho.experiment.stats, summary and facts): spreads over seeds, tests
of a difference, the compute table, the winners, the frontier and the ``Summary``."""

from __future__ import annotations

from rho.experiment.records.base import Record


class Spread(Record):
    """A number over seeds: mean, sample std (ddof=1; 0.0 for one value), count, the values."""

    mean: float
    std: float
    n: int
    values: list[float]


class Difference(Record):
    """mean(a) − mean(b) and its t-test; se, p, supported None when it cannot be tested."""

    delta: float
    se: float | None = None
    test: str
    t: float | None = None
    df: float | None = None
    critical: float | None = None
    p: float | None = None
    supported: bool | None = None
    n: list[int]


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
    below_clm: bool | None
    against_mix: Difference | None


class Frontier(Record):
    arms: dict[str, FrontierEntry]
    best: str | None
    best_ratio: float | None


class Summary(Record):
    """The verdict (rho.experiment.facts): the report only formats these numbers."""

    losses: dict[str, dict[str, Spread]]
    target: Target
    compute: dict[str, ComputeRow]
    winners: Winners
    tokens_left_out: list[str]
    against_baseline: dict[str, dict[str, Difference]]
    paired_arms: list[str]
    reference_pairs: dict[str, list[ReferencePair]]
    # source (base | proxy | self) -> axis -> its scoring references' test loss
    scoring_references: dict[str, dict[str, Spread]]
    uncovered_variance: list[str]
    frontier: Frontier
    alpha: float
    read_per_trained: dict[str, float]
