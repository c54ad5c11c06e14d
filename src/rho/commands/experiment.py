"""`rho experiment`: every arm, seeds and baselines on your data (rho.experiment); with
`--bases`, the whole race at several model sizes (rho.experiment.ladder). Its options are
ExperimentConfig's and LadderOptions' fields; `--config FILE.yaml` (the shared parser's) sets
them from a file."""

from __future__ import annotations

from rho.commands.parser import Command
from rho.experiment.ladder import LadderOptions, run_ladder
from rho.experiment.runner import run_experiment
from rho.experiment.settings import ExperimentConfig


def main(config: ExperimentConfig, ladder: LadderOptions) -> int:
    if ladder.bases:
        run_ladder(config, ladder)
    else:
        run_experiment(config)
    return 0


COMMAND = Command((ExperimentConfig, LadderOptions), main)
