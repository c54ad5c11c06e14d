"""The typed records of `rho experiment`: what each stage returns (and its stage.json holds),
and ``Results``, the model results.json is written from and read back through.

Every record is a pydantic model that refuses unknown keys (``base``), so a reader that
misspells a field fails at once: the stage records are in ``stage``, the verdict's in
``verdict``, results.json's own here; import them all from here. A stage record's fields keep
the names the stage.json files have always had, so stages recorded by an earlier rho read
back (and keep their cache keys). results.json carries ``schema_version``; one without it (rho
before the records) is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.records.base import Record
from rho.experiment.records.stage import (
    Analyses,
    ArmRun,
    BaseOverlap,
    Curve,
    Data,
    Decontamination,
    DynamicsRow,
    DynamicsTable,
    Embedded,
    Final,
    InputFiles,
    Mix,
    Model,
    Scores,
    SelectionRates,
    Trained,
    Windows,
)
from rho.experiment.records.verdict import (
    Amortised,
    AxisVerdict,
    ComputeRow,
    CostRatios,
    Difference,
    Family,
    Frontier,
    FrontierEntry,
    LadderPoint,
    Overhead,
    Rank,
    ReferencePair,
    Spread,
    Summary,
    Target,
    Totals,
    Winners,
)
from rho.experiment.settings import ExperimentConfig
from rho.io.files import read_json, write_json_atomic
from rho.io.schema import validate

__all__ = [
    "Amortised",
    "Analyses",
    "ArmRun",
    "AxisVerdict",
    "BaseOverlap",
    "ComputeRow",
    "CostRatios",
    "Curve",
    "Data",
    "DataSummary",
    "Decontamination",
    "Difference",
    "Draw",
    "DynamicsRow",
    "DynamicsTable",
    "Embedded",
    "Environment",
    "Family",
    "Final",
    "Frontier",
    "FrontierEntry",
    "InputFiles",
    "LadderPoint",
    "Mix",
    "Model",
    "Overhead",
    "Pretrained",
    "Rank",
    "Record",
    "Reference",
    "ReferencePair",
    "Results",
    "SCHEMA_VERSION",
    "Scores",
    "SelectionRates",
    "Spread",
    "Summary",
    "Target",
    "Totals",
    "Trained",
    "Windows",
    "Winners",
]

# 1: the untyped results.json (no schema_version field); 2: the records, one axis's compute
# table and frontier, tests unadjusted; 3: Holm-adjusted p, every arm against clm and clm-mix,
# the scoring references' losses, each arm seed's scoring reference, the environment, every
# axis's verdict and the budget ladder
SCHEMA_VERSION = 3


class Pretrained(Record):
    """The pretrained base or proxy, as results.json reports it."""

    seed: int
    steps: int
    warmup_steps: int
    train_tokens: int
    flops_train: float
    n_params: int


class Reference(Record):
    """A scoring reference: the model whose losses score an arm's windows."""

    seed: int
    source: str  # base | proxy | self
    steps: int
    train_tokens: int
    n_params: int
    flops_train: float
    seconds_train: float
    final: Final  # its own loss on the whole validation and test sets of every axis


class Environment(Record):
    """What the run that wrote results.json ran under (rho.experiment.environment)."""

    rho: str
    commit: str | None  # None: rho's sources are not in a git checkout
    dirty: bool | None  # tracked files differ from the commit
    python: str
    torch: str | None
    transformers: str | None
    accelerate: str | None
    tokenizers: str | None
    numpy: str | None
    device: str  # cpu | cuda
    device_name: str | None  # the CUDA device's name
    platform: str


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


class Results(Record):
    """results.json."""

    schema_version: int = SCHEMA_VERSION
    config: ExperimentConfig
    data: DataSummary
    stages: dict[str, str]  # stage -> key
    runs: dict[str, list[ArmRun]]
    ladder: dict[str, list[ArmRun]]  # laddered arm -> its runs below budget 1 (--budgets)
    overhead: dict[str, Overhead]
    analyses: Analyses | None
    seconds: dict[str, float]
    references: dict[str, Reference]
    draws: dict[str, Draw]
    base: Pretrained | None = None
    proxy: Pretrained | None = None
    environment: Environment
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
