"""`rho experiment`: every arm, seeds and baselines on your data (rho.experiment); with
`--bases`, the whole race at several model sizes (rho.experiment.ladder). Its options are
ExperimentConfig's fields, how the stages run (EngineOptions: workers, threads) and the
ladder's (LadderOptions); `--config FILE.yaml` (the shared parser's) sets them from a file.
With `--compare OTHER_RUN` it trains nothing: it compares the finished run in --out with another
(rho.experiment.compare)."""

from __future__ import annotations

from dataclasses import dataclass

from rho.commands.parser import Command
from rho.experiment.compare import compare_runs
from rho.experiment.engine import EngineOptions
from rho.experiment.ladder import LadderOptions, run_ladder
from rho.experiment.runner import run_experiment
from rho.experiment.settings import ExperimentConfig
from rho.training.options import option


@dataclass
class CompareOptions:
    compare: str | None = option(
        "another finished run (its directory or results.json): train nothing, and print --out's "
        "test losses beside it per arm and axis, with the difference and whether it is inside "
        "the seed spread",
        None,
        metavar="OTHER_RUN",
        group="comparing two runs",
    )


def main(
    config: ExperimentConfig,
    engine: EngineOptions,
    ladder: LadderOptions,
    compare: CompareOptions,
) -> int:
    if compare.compare is not None:
        compare_runs(config.out, compare.compare)
    elif ladder.bases:
        run_ladder(config, ladder, engine=engine)
    else:
        run_experiment(config, engine=engine)
    return 0


COMMAND = Command((ExperimentConfig, EngineOptions, LadderOptions, CompareOptions), main)
