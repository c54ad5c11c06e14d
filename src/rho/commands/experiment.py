"""`rho experiment`: every arm, seeds and baselines on your data (rho.experiment). Its options
are ExperimentConfig's fields and how the stages run (EngineOptions: workers, threads);
`--config FILE.yaml` (the shared parser's) sets them from a file."""

from __future__ import annotations

from rho.commands.parser import Command
from rho.experiment.engine import EngineOptions
from rho.experiment.runner import run_experiment
from rho.experiment.settings import ExperimentConfig


def main(config: ExperimentConfig, engine: EngineOptions) -> int:
    run_experiment(config, engine=engine)
    return 0


COMMAND = Command((ExperimentConfig, EngineOptions), main)
