"""`rho experiment`: every arm, seeds and baselines on your data (rho.experiment). Its options
are ExperimentConfig's fields and how the stages run (EngineOptions: workers, threads);
`--config FILE.yaml` (the shared parser's) sets them from a file. With `--compare OTHER_RUN` it
trains nothing: it compares the finished run in --out with another (rho.experiment.compare)."""

from __future__ import annotations

from dataclasses import dataclass

from rho.commands.parser import Command
from rho.experiment.compare import compare_runs
from rho.experiment.engine import EngineOptions
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


def main(config: ExperimentConfig, engine: EngineOptions, compare: CompareOptions) -> int:
    if compare.compare is not None:
        compare_runs(config.out, compare.compare)
    else:
        run_experiment(config, engine=engine)
    return 0


COMMAND = Command((ExperimentConfig, EngineOptions, CompareOptions), main)
