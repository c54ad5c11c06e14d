"""`rho experiment --plan`'s plan.json: every stage of the plan with what it reads, whether it
is recorded, its FLOPs (rho.experiment.cost) and its estimated seconds, and the probe the
estimate comes from."""

from __future__ import annotations

from pathlib import Path

from rho.experiment.records.base import Record
from rho.experiment.settings import ExperimentConfig
from rho.io.files import write_json_atomic

# A stage's status: recorded here (or in the shared cache), a given model (nothing to run), or
# to run.
STATUSES = ("recorded", "cached", "given", "to run")


class PlannedStage(Record):
    name: str
    kind: str
    arm: str | None
    seed: int | None
    after: list[str]  # the stages it reads
    status: str  # one of STATUSES
    model: str | None  # the model whose size it is charged at (base, proxy)
    n_params: int | None
    train_tokens: int | None  # None: after the data stage
    forward_tokens: int | None  # forwarded without a gradient (candidates, scored, embedded)
    flops: float | None  # None: known after the data stage
    exact: bool  # False: at most this (see rho.experiment.cost)
    seconds: float | None  # recorded, or estimated from the probe (None: nothing to estimate)
    note: str = ""  # why a figure is an upper bound or unknown


class Throughput(Record):
    """One model's probe: seconds per token trained (forward, backward, AdamW step) and per
    token forwarded without a gradient."""

    n_params: int
    train_token_seconds: float
    forward_token_seconds: float


class Probe(Record):
    device: str
    threads: int  # CPU threads the probe (and each worker's stage) ran with
    batch_size: int  # rows per micro-batch
    seq_len: int
    steps: int  # timed, after one warm-up step
    models: dict[str, Throughput]


class PlanRecord(Record):
    """plan.json."""

    config: ExperimentConfig
    stages: list[PlannedStage]
    flops_total: float  # every stage whose FLOPs are known
    flops_to_run: float  # of those, the stages still to run
    exact: bool  # every figure exact and known
    unknown: list[str]  # stages whose FLOPs are known after the data stage
    probe: Probe | None  # None: nothing to run
    workers: int
    wall_seconds: float | None  # the stages to run, on ``workers`` workers (an estimate)

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, self.model_dump(), sort_keys=False)
