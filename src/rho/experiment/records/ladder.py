"""The model-size ladder's records (rho.experiment.ladder): each size's run, the rule that
scaled its budgets, and per held-out axis the losses, rankings and the agreement of the
rankings between sizes. A ladder's results.json holds one ``LadderResults``."""

from __future__ import annotations

from pathlib import Path

from rho.errors import UserError
from rho.experiment.records.base import Record
from rho.experiment.records.verdict import Spread
from rho.io.files import read_json, write_json_atomic
from rho.io.schema import validate

LADDER_SCHEMA_VERSION = 1


class Rule(Record):
    """How every size's budgets follow from its parameter count (the same at every size)."""

    tokens_per_param: float
    arm_share: float
    text: str


class Rung(Record):
    """One model size: its base, its parameters (the rule's N) and its scaled budgets; its
    whole race is a `rho experiment` run in ``run``."""

    name: str
    base: str
    n_params: int
    base_tokens: int  # 0: a model base (not pretrained here)
    train_tokens: int
    ref_tokens: int
    curated_tokens: int
    run: str  # the size's run directory, relative to the ladder's
    seconds: float | None = None  # the size's stages' seconds, summed (None: not run yet)


class Agreement(Record):
    """Two sizes' decisions on every pair of arms both ran. A pair's decision at a size is a
    tie when |mean difference| <= the pooled sample std of the two arms' seeds, else the order
    of their means; it agrees when both sizes decide the same (the same order, or a tie at
    both). ``agreement`` = agreeing pairs / pairs; ``tau``: Kendall's tau-b of the two sizes'
    mean losses (scipy.stats.kendalltau) and its p-value, None under 2 arms or a constant side."""

    smaller: str
    larger: str
    pairs: int
    same_order: int
    opposite_order: int
    tied_both: int
    tied_one: int
    agreement: float | None
    tau: float | None
    tau_p: float | None


class AxisLadder(Record):
    """One held-out axis over every size (size names as in ``Ladder.rungs``)."""

    losses: dict[str, dict[str, Spread]]  # size -> arm -> test loss over seeds
    ratios: dict[str, dict[str, float | None]]  # size -> arm -> one-off FLOPs ratio (mean)
    rankings: dict[str, list[str]]  # size -> arms, lowest mean test loss first
    adjacent: list[Agreement]  # each size against the next larger one
    to_largest: list[Agreement]  # each smaller size against the largest


class Ladder(Record):
    rule: Rule
    rungs: list[Rung]
    target_axis: str  # the axis the one-off FLOPs ratios are to
    axes: dict[str, AxisLadder]


class LadderResults(Record):
    """A ladder's results.json."""

    schema_version: int = LADDER_SCHEMA_VERSION
    ladder: Ladder

    def write(self, path: Path) -> Path:
        return write_json_atomic(path, self.model_dump(), sort_keys=False)

    @classmethod
    def read(cls, path: str | Path) -> LadderResults:
        data = read_json(path)
        if data.get("schema_version") != LADDER_SCHEMA_VERSION:
            raise UserError(
                f"{path}: not a ladder's results of schema version {LADDER_SCHEMA_VERSION}"
            )
        return validate(cls, data, str(path))
