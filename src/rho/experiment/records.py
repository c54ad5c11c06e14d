"""The typed records of `rho experiment`: what each stage returns (and its stage.json holds),
and ``Results``, the model results.json is written from and read back through.

Every record is a pydantic model that refuses unknown keys, so a reader that misspells a field
fails at once. A stage record's fields keep the names the stage.json files have always had, so
stages recorded by an earlier rho read back (and keep their cache keys). results.json carries
``schema_version``; one without it (rho before the records) is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from rho.errors import UserError
from rho.experiment.settings import ExperimentConfig
from rho.files import read_json, write_json_atomic
from rho.schema import validate

SCHEMA_VERSION = 2  # 1: the untyped results.json (no schema_version field)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- statistics (rho.experiment.stats)
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


# ---------------------------------------------------------------- stage records
class Overlap(Record):
    """rho.experiment.decontam.OverlapStats, as recorded."""

    documents: int
    ngrams: int
    shared_ngrams: int
    shared_fraction: float
    documents_with_overlap: int
    documents_without_ngrams: int


class Decontamination(Record):
    n: int
    max_shared_fraction: float
    before: Overlap
    after: Overlap
    documents_dropped: int
    dropped: list[int]


class BaseOverlap(Record):
    """How much of the base's pretraining text is also in the corpus (whole documents)."""

    documents: int
    base_documents: int
    corpus_documents: int
    share_of_corpus_characters: float


class InputFiles(Record):
    corpus: list[str]
    curated: list[str]


class Data(Record):
    """The data stage: token stores by role (corpus, curated, base, AXIS-validation,
    AXIS-test), their token counts, the held-out axes (the first is the target)."""

    stores: dict[str, str]
    files: InputFiles
    axes: list[str]
    decontamination: dict[str, Decontamination]
    base_overlap: BaseOverlap
    tokens: dict[str, int]

    def store(self, role: str) -> str:
        return self.stores[role]

    def split(self, axis: str, split: str) -> str:
        return self.stores[f"{axis}-{split}"]


class Mix(Record):
    """The clm-mix arm's corpus: the corpus with the curated data repeated into it."""

    store: str
    repeats: int
    share: float
    tokens: int


class Windows(Record):
    """Whole windows written as a token store: a draw, a self-reference's sample, or what
    pruning kept (with their reference losses when pruned by them)."""

    tokens: str
    losses: str | None = None
    windows: int
    of: int | None = None  # a draw's: the source's whole windows
    dropped_by_dedup: int | None = None  # prototype pruning's
    clusters: int | None = None


class Scores(Record):
    losses: str
    store: str
    scored_tokens: int
    n_params: int


class Embedded(Record):
    embeddings: str
    model: str
    layer: int
    embedded_tokens: int
    flops: float


class Model(Record):
    """A model directory (or preset name) a stage starts from, trained elsewhere."""

    run: str


class Final(Record):
    """Final loss on the whole split of each axis."""

    validation: dict[str, float | None]
    test: dict[str, float | None]


CURVE_COLUMNS = ("tokens", "flops", "seconds")


class Curve(Record):
    """Validation loss per axis at each evaluation, with the trained tokens, FLOPs and seconds
    there. Serialised flat, as run records always were: {tokens, flops, seconds, AXIS: [...]}."""

    tokens: list[int]
    flops: list[float]
    seconds: list[float]
    losses: dict[str, list[float | None]]

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, data: Any) -> Any:
        if isinstance(data, dict) and "losses" not in data:
            rest = {k: v for k, v in data.items() if k not in CURVE_COLUMNS}
            data = {**{k: data.get(k, []) for k in CURVE_COLUMNS}, "losses": rest}
        return data

    @model_serializer(mode="wrap")
    def _flat(self, handler) -> dict:
        out = handler(self)
        return {**{k: out[k] for k in CURVE_COLUMNS}, **out["losses"]}


class Trained(Model):
    """A training run (the base, a proxy, a reference, an arm seed): its curve, final losses,
    what it trained, FLOPs and seconds."""

    final: Final
    curve: Curve
    train_tokens: int
    steps: int
    warmup_steps: int
    windows_read: int
    windows_trained: int
    sample_windows: dict[str, int]
    flops_train: float
    seconds_train: float
    n_params: int


class ArmRun(Trained):
    """One seed of an arm in results.json: its run, its data seed and the reference it read."""

    seed: int
    reference_seed: int | None = None
    windows: str | None = None  # the stage whose windows it trained on


class DynamicsRow(Record):
    category: str
    count: int
    percent: float | None
    paper_1b_percent: float
    paper_7b_percent: float


class DynamicsTable(Record):
    scored: int
    unscored: int
    rows: list[DynamicsRow]


class SelectionRates(Record):
    """SLM's selection against the corpus's ground truth, pooled over checkpoints."""

    checkpoints: list[str]
    tokens_per_checkpoint: int
    noise_fraction: float | None = None
    selection_rate_noise: float | None = None
    selection_rate_clean: float | None = None
    clean_precision: float | None = None
    clean_recall: float | None = None
    selected_fraction_by_domain: dict[str, float] | None = None


class Analyses(Record):
    dynamics: DynamicsTable
    dynamics_checkpoints: int
    dynamics_threshold: float
    dynamics_mean_loss: list[float]
    dynamics_loss_fall: float | None = None
    selection: SelectionRates | None = None


# ---------------------------------------------------------------- results.json
class Overhead(Record):
    """What an arm is charged before training (mean over its seeds)."""

    flops: float = 0.0
    seconds: float = 0.0
    what: str = ""
    tokens_scored: float | None = None


class Pretrained(Record):
    """The pretrained base or proxy, as results.json reports it."""

    seed: int
    steps: int
    warmup_steps: int
    train_tokens: int
    flops_train: float
    n_params: int


class Reference(Record):
    seed: int
    source: str  # base | proxy | self
    steps: int
    train_tokens: int
    n_params: int
    flops_train: float


class Draw(Record):
    pool: float
    source: str  # corpus | mix
    seed: int
    windows: int
    of: int


class DataSummary(Record):
    axes: list[str]
    decontamination: dict[str, Decontamination]
    tokens: dict[str, int]
    base_overlap: BaseOverlap
    mix: Mix | None = None


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
    seed: int
    reference_seed: int | None
    reference_test: dict[str, float | None] | None
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
    uncovered_variance: list[str]
    frontier: Frontier
    alpha: float
    read_per_trained: dict[str, float]


class Results(Record):
    """results.json."""

    schema_version: int = SCHEMA_VERSION
    config: ExperimentConfig
    data: DataSummary
    stages: dict[str, str]  # stage -> key
    runs: dict[str, list[ArmRun]]
    overhead: dict[str, Overhead]
    analyses: Analyses | None
    seconds: dict[str, float]
    references: dict[str, Reference]
    draws: dict[str, Draw]
    base: Pretrained | None = None
    proxy: Pretrained | None = None
    summary: Summary

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, self.model_dump(), sort_keys=False)

    @classmethod
    def read(cls, path: str | Path) -> Results:
        data = read_json(path)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{path}: results of schema version {version or 1}; this rho reads version "
                f"{SCHEMA_VERSION} (rerun the experiment into its directory to rewrite it)"
            )
        return validate(cls, data, str(path))
