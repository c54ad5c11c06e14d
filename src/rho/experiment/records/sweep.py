"""`rho sweep`'s records: one run's sweep_result.json and the sweep's settings (sweep.json)."""

from __future__ import annotations

from typing import Any

from rho.experiment.records.base import Record


class SweepRun(Record):
    """One ratio's run (its sweep_result.json): a finished run is reused from it."""

    ratio: float
    eval_loss: float | None  # NaN when the run logged no evaluation
    final_train_loss: float
    max_steps: int
    seed: int
    seconds: float
    tokens_seen: int
    run_dir: str


class SweepSettings(Record):
    """What every run of the sweep shared."""

    tokens: str
    ref_losses: str
    eval_tokens: str
    preset: str | None
    model: str | None
    max_steps: int
    seed: int
    score: str
    training_args: dict[str, Any]

    def described(self) -> str:
        return f"model {self.model}" if self.model else f"preset {self.preset}"
