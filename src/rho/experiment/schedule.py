"""`rho experiment`'s schedule: the transformers.TrainingArguments it derives from its own
options (``OWNED``, set in every run by ``owned_arguments``), and its ``training`` option (every
other TrainingArguments field), checked before any work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from rho import distributed as dist
from rho.errors import UserError

MAX_TRAINING_CHARS = 1 << 16  # the --training JSON (a few options)
# TrainingArguments with side effects rho does not support: pushing to the Hugging Face Hub.
UNSUPPORTED_PREFIXES = ("push_to_hub", "hub_")


@dataclass(frozen=True)
class Run:
    """What one training run's owned arguments are derived from."""

    directory: Path
    cfg: Any  # the stage's view of the config
    steps: int
    seed: int
    lr: float
    save: bool

    @property
    def every(self) -> int:  # steps between evaluations
        return max(1, self.steps // self.cfg.evals)

    @property
    def accumulation(self) -> int:
        return self.cfg.training.get("gradient_accumulation_steps", 1)

    @property
    def micro_batch(self) -> int:
        """A process's rows per micro-batch: the step's windows over the accumulation steps and
        the processes (under torchrun the ranks' micro-batches make up the global one)."""
        return self.cfg.batch_size // (self.accumulation * dist.world_size())


Value = Callable[[Run], Any] | None  # None: not set (left at the TrainingArguments default)
# field -> (the experiment's option that sets it, its value in a run)
OWNED: dict[str, tuple[str, Value]] = {
    "output_dir": ("--out", lambda r: str(r.directory)),
    "max_steps": ("--train_tokens", lambda r: r.steps),
    "num_train_epochs": ("--train_tokens", None),
    # a step is always --batch_size windows: accumulation and processes split it
    "per_device_train_batch_size": ("--batch_size", lambda r: r.micro_batch),
    "per_device_eval_batch_size": ("--batch_size", lambda r: r.cfg.batch_size),
    "learning_rate": ("--learning_rate", lambda r: r.lr),
    "seed": ("--seeds", lambda r: r.seed),
    "data_seed": ("--seeds", lambda r: r.seed),
    "eval_strategy": ("--evals", lambda r: "steps"),
    "eval_steps": ("--evals", lambda r: r.every),
    # the starting point of every curve, evaluated inside train(): an evaluate() before it
    # leaves accelerate's model marked prepared, and train() then runs it without DDP
    "eval_on_start": ("--evals", lambda r: True),
    "save_strategy": ("(the experiment)", lambda r: "steps" if r.save else "no"),
    "save_steps": ("--evals", lambda r: r.every),
    "logging_steps": ("--evals", lambda r: max(1, r.every // 2)),
}


def owned_arguments(directory: Path, cfg, steps: int, seed: int, lr: float, save: bool) -> dict:
    """The TrainingArguments of one run that the experiment's own options set."""
    run = Run(directory, cfg, steps, seed, lr, save)
    return {name: value(run) for name, (_, value) in OWNED.items() if value is not None}


def training_options(value: dict | str | None) -> dict:
    """``--training`` as a mapping of TrainingArguments fields (JSON on the command line, parsed
    bounded), each value checked strictly against its field's type and choices: an unknown
    field, one the experiment sets from its own options, or one rho does not support (pushing
    to the Hub) is one line."""
    from rho.io.schema import check_fields, parse_json

    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if len(value) > MAX_TRAINING_CHARS:
            raise UserError(f"--training is too long ({len(value):,} characters)")
        value = parse_json(value, "--training is not JSON")
    if not isinstance(value, dict):
        raise UserError("--training must be a mapping of TrainingArguments options")
    for name in value:
        if name in OWNED:
            raise UserError(f"training: {name} is set by the experiment: use {OWNED[name][0]}")
        if name not in training_fields():
            raise UserError(f"training: {name!r} is not a transformers.TrainingArguments option")
        if name.startswith(UNSUPPORTED_PREFIXES):
            raise UserError(f"training: {name}: rho experiment does not push to the Hub")
    return check_fields(training_type(), value, "training")


# rho's own training option that every run may take (the selection is the arm's)
RHO_TRAINING_OPTIONS = frozenset({"loss_impl"})


@cache
def training_type() -> type:
    from rho.training.trainer import SelectiveTrainingArguments

    return SelectiveTrainingArguments


@cache
def training_fields() -> frozenset[str]:
    from transformers import TrainingArguments

    return frozenset(f.name for f in fields(TrainingArguments) if f.init) | RHO_TRAINING_OPTIONS
