"""What each stage of `rho experiment` returns, as its stage.json holds it. The fields keep
the names the stage records have always had, so stages recorded by an earlier rho read back
(and keep their cache keys)."""

from __future__ import annotations

from typing import Any

from pydantic import model_serializer, model_validator

from rho.experiment.decontam import OverlapStats
from rho.experiment.records.base import Record


class Decontamination(Record):
    """A held-out set's decontamination (rho.experiment.decontam.DecontamResult.as_dict)."""

    n: int
    max_shared_fraction: float
    before: OverlapStats  # the held-out set's overlap with the training side, before and after
    after: OverlapStats
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
    """One seed of an arm in results.json: its run, its data seed, the reference it read and
    its budget."""

    seed: int
    reference_seed: int | None = None
    reference: str | None = None  # the stage of the reference whose scores it read
    windows: str | None = None  # the stage whose windows it trained on
    budget: float = 1.0  # its fraction of the arms' budget (below 1: a run on the ladder)


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
