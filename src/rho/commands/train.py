"""`rho train`: CLM / SLM training on transformers.Trainer (rho.training.train)."""

from __future__ import annotations

from rho import distributed as dist
from rho.commands.parser import Command
from rho.training.options import ModelDataArguments
from rho.training.runs import METRICS_FILE
from rho.training.train import RunDirArguments, run_training
from rho.training.trainer import SelectiveTrainingArguments

# The dataclasses `rho train` parses, in the order main takes them: every
# transformers.TrainingArguments flag works, beside the selection options.
OPTIONS = (ModelDataArguments, RunDirArguments, SelectiveTrainingArguments)


def main(data, run, args) -> int:
    with dist.process_group_closed():
        trainer = run_training(data, args, run)
        if trainer.is_world_process_zero():
            print(f"rho train: model, tokenizer and {METRICS_FILE} in {args.output_dir}")
    return 0


# output_dir: where checkpoints and metrics go (TrainingArguments would default it)
COMMAND = Command(OPTIONS, main, required=("output_dir",))
