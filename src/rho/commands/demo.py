"""`rho demo`: `rho experiment` with the shipped config on the shipped demo data
(rho.experiment.demo)."""

from __future__ import annotations

from dataclasses import dataclass

from rho.commands.parser import Command
from rho.experiment.demo import SETTINGS, demo_defaults, run_demo
from rho.experiment.engine import EngineOptions
from rho.experiment.ladder import LadderOptions
from rho.experiment.settings import ExperimentConfig
from rho.training.options import option


@dataclass
class DemoOptions:
    """The demo's scale and setting; every `rho experiment` option works too, over the
    demo's config."""

    quick: bool = option("smoke-test scale", False)
    setting: str = option(
        "paper: demo.yaml; scarce: the curated data 1/20 of each arm's budget, and a math-corpus "
        "axis (scarce.yaml); ladder: the race at three model sizes, 300k, 1m and 5m (ladder.yaml; "
        "--quick: tiny and 300k)",
        "paper",
        choices=SETTINGS,
    )


# Two one-thread stages at once beat one two-thread stage on the demo's small models (the
# README's measurement); --workers overrides it.
DEMO_WORKERS = 2


def defaults(given) -> dict:
    """The demo's config for its scale and setting, under `--config` and the flags."""
    return demo_defaults(given.quick, given.setting) | {"out": "rho-demo", "workers": DEMO_WORKERS}


def main(
    demo: DemoOptions, config: ExperimentConfig, engine: EngineOptions, ladder: LadderOptions
) -> int:
    run_demo(config, quick=demo.quick, setting=demo.setting, engine=engine, ladder=ladder)
    return 0


COMMAND = Command(
    (DemoOptions, ExperimentConfig, EngineOptions, LadderOptions), main, defaults=defaults
)
