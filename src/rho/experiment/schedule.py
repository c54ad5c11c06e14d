"""`rho experiment`'s ``training`` option: transformers.TrainingArguments for every training
run, checked before any work. The experiment's own flags set the schedule's fields."""

from __future__ import annotations

import json
from dataclasses import fields

from rho.errors import UserError

# TrainingArguments the experiment derives from its own options: set them by those flags.
SCHEDULE_OWNED = {
    "output_dir": "--out", "max_steps": "--train_tokens", "num_train_epochs": "--train_tokens",
    "per_device_train_batch_size": "--batch_size", "per_device_eval_batch_size": "--batch_size",
    "learning_rate": "--learning_rate", "seed": "--seeds", "data_seed": "--seeds",
    "eval_strategy": "--evals", "eval_steps": "--evals", "save_strategy": "(the experiment)",
    "save_steps": "--evals", "logging_steps": "--evals",
}  # fmt: skip


def training_options(value: dict | str | None) -> dict:
    """``--training`` as a mapping of TrainingArguments fields (JSON on the command line): an
    unknown field, or one the experiment sets from its own options, is one line."""
    from transformers import TrainingArguments

    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            msg = f"--training is not JSON ({err.msg}): write '{{\"bf16\": true}}'"
            raise UserError(msg) from None
    if not isinstance(value, dict):
        raise UserError("--training must be a mapping of TrainingArguments options")
    known = {f.name for f in fields(TrainingArguments)}
    for name in value:
        if name in SCHEDULE_OWNED:
            raise UserError(
                f"training: {name} is set by the experiment: use {SCHEDULE_OWNED[name]}"
            )
        if name not in known:
            raise UserError(f"training: {name!r} is not a transformers.TrainingArguments option")
    return dict(value)
