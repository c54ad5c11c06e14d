"""`rho sweep`: short SLM trainings at several selection ratios (rho.experiment.sweep)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rho.analysis.common import check_positive, print_files
from rho.commands.parser import Command
from rho.errors import UserError
from rho.experiment.sweep import run_sweep, training_defaults
from rho.selection.select import SCORES, check_ratio
from rho.training.options import option
from rho.training.trainer import SelectiveTrainingArguments


@dataclass
class SweepOptions:
    """Short SLM trainings at several selection ratios on the same data, seed and budget;
    held-out loss against ratio (Fig. 9). Every transformers.TrainingArguments option works too
    (e.g. --learning_rate 1e-3 --use_cpu), but output_dir, max_steps and seed: the sweep sets
    each run's."""

    ratios: list[float] = option("kept fractions")
    tokens: str = option("training TokenStore")
    ref_losses: str = option("LossStore of the training tokens")
    eval_tokens: str = option("held-out TokenStore")
    out: str = option("output directory")
    max_steps: int = option("optimizer steps per run")
    preset: str | None = option("model preset (default: tiny)", None)
    model: str | None = option("model dir to continue from", None)
    seed: int = option("seed of every run", 0)
    score: str = option("token score", "excess", choices=SCORES)
    seq_len: int | None = option("(default: the LossStore's)", None)
    overwrite: bool = option("rerun ratios already done", False)

    def __post_init__(self):
        if self.preset and self.model:
            raise UserError("give one of --preset and --model, not both")
        check_positive("--max-steps", self.max_steps)
        for r in self.ratios:
            check_ratio(r, "--ratios")


@dataclass
class SweepTrainingArguments(SelectiveTrainingArguments):
    """`rho train`'s TrainingArguments, but for the fields the sweep sets in every run."""

    output_dir: str | None = field(
        default=None, metadata={"set_by": "the sweep: use --out (each run is OUT/runs/ratio-R)"}
    )
    max_steps: int = field(default=-1, metadata={"set_by": "the sweep's --max_steps"})
    seed: int = field(default=42, metadata={"set_by": "the sweep's --seed"})
    selection: str = field(default="token", metadata={"set_by": "the sweep (SLM in every run)"})
    ratio: float = field(default=0.6, metadata={"set_by": "the sweep's --ratios"})
    score: str = field(default="excess", metadata={"set_by": "the sweep's --score"})


def defaults(given) -> dict:
    """Every run's TrainingArguments under the user's: no reports or checkpoints, and about
    20 loss records a run."""
    return training_defaults(given.max_steps or 1)


def main(options: SweepOptions, training: SweepTrainingArguments) -> int:
    result = run_sweep(
        options.ratios,
        tokens=options.tokens,
        ref_losses=options.ref_losses,
        eval_tokens=options.eval_tokens,
        out=Path(options.out),
        preset=options.preset if options.model else (options.preset or "tiny"),
        model=options.model,
        max_steps=options.max_steps,
        seed=options.seed,
        score=options.score,
        seq_len=options.seq_len,
        training=training,
        overwrite=options.overwrite,
    )
    print("rho sweep:")
    print(result["markdown_table"])
    best = result["summary"]["best_ratio"]
    if best is not None:
        print(f"best ratio {best:g} (held-out loss {result['summary']['best_eval_loss']:.4f})")
    print_files(result["files"])
    return 0


COMMAND = Command((SweepOptions, SweepTrainingArguments), main, defaults=defaults)
