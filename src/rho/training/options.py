"""The options of `rho train`: what to train on which windows (``ModelDataArguments``) and how
tokens or windows are selected (``SelectionArguments``, the selection half of
``rho.training.trainer.SelectiveTrainingArguments``, kept here free of transformers so that the
stages
that only check options import fast). Their field docs are the `--help` (HfArgumentParser)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rho.errors import UserError
from rho.selection.select import (
    ENTROPY_SCORES,
    REFERENCE_SCORES,
    SCOPES,
    SCORES,
    check_choice,
    check_ratio,
)

SELECTIONS = ("none", "token", "sample", "sample+token")
DEFAULT_SEQ_LEN = 256


def option(help: str, default: Any = dataclasses.MISSING, *, factory: Any = None, **metadata):
    """A field of an options dataclass (every command's, and the experiment's config): its
    `--help` text, its default (none: the option is required; ``factory``: a mutable default)
    and any other metadata key (argparse's, or those rho.commands.parser reads: positional,
    group, repeat, exactly, set_by, stages)."""
    meta = {"help": help, **metadata}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class SelectionArguments:
    """How tokens or windows are selected for the loss. ``SelectiveTrainingArguments`` holds
    these fields beside every TrainingArguments one; alone, this names a selection (the
    experiment's arms)."""

    selection: str = field(
        default="token",
        metadata={
            "help": "none: plain causal LM (baseline; reference training); token: SLM; sample: "
            "online RHO-LOSS (train on the best windows of a candidate batch); sample+token: both"
        },
    )
    ratio: float = field(default=0.6, metadata={"help": "fraction of tokens kept (paper: 0.6)"})
    score: str = field(
        default="excess",
        metadata={
            "help": "excess (learner - reference loss), learner, reference (lowest reference "
            "loss), random, reference-entropy (lowest reference entropy: the tokens the "
            "reference is surest of) or reference+entropy (rank average of reference loss and "
            "entropy); the entropy scores need a LossStore from `rho score --entropy`"
        },
    )
    scope: str = field(
        default="batch",
        metadata={"help": "batch: rank a micro-batch on all ranks together; sequence: each row"},
    )
    ratio_warmup_steps: int = field(
        default=0, metadata={"help": "steps over which the ratio falls linearly from 1.0"}
    )
    candidate_factor: int = field(
        default=4,
        metadata={
            "help": "sample selection: candidate windows drawn per trained window (forward-only; "
            "RHO-LOSS trains on 10%% of its candidates, i.e. 10)"
        },
    )

    def __post_init__(self):
        self.check_selection()

    def check_selection(self) -> None:
        check_choice(self.selection, SELECTIONS, "--selection")
        check_choice(self.score, SCORES, "--score")
        check_choice(self.scope, SCOPES, "--scope")
        check_ratio(self.ratio, "--ratio")
        if self.ratio_warmup_steps < 0:
            raise UserError("--ratio_warmup_steps must be >= 0")
        if self.candidate_factor < 1:
            raise UserError(f"--candidate_factor must be >= 1, got {self.candidate_factor}")
        if self.selects_windows and self.score in ENTROPY_SCORES:
            raise UserError(
                f"--score {self.score} ranks tokens, not windows: use it with --selection token "
                "(or rho prune --by for whole windows)"
            )

    def check_references(self, offline: bool, online: bool, entropy: bool) -> None:
        """The reference the score needs is there: losses (``offline``: a LossStore, or
        ``online``: a reference model) and, for the entropy scores, a LossStore that may hold
        the entropy (``entropy``; an online model gives losses only)."""
        if self.needs_reference and not (offline or online):
            raise UserError(
                f"--selection {self.selection} with --score {self.score} needs --ref_losses or "
                "--ref_model"
            )
        if self.needs_entropy and not entropy:
            raise UserError(
                f"--score {self.score} needs the reference's entropy: give --ref_losses a "
                "LossStore scored with `rho score --entropy` (an online --ref_model gives losses "
                "only)"
            )

    def selection_options(self) -> dict:
        """The selection fields alone (recorded in rho_options.json as "selection")."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SelectionArguments)}

    @property
    def selects_windows(self) -> bool:
        """Whole windows are selected from candidate batches (online RHO-LOSS)."""
        return self.selection in ("sample", "sample+token")

    @property
    def selects_tokens(self) -> bool:
        """Tokens are selected inside the trained windows (SLM)."""
        return self.selection in ("token", "sample+token")

    @property
    def needs_reference(self) -> bool:
        return self.selection != "none" and self.score in REFERENCE_SCORES

    @property
    def needs_entropy(self) -> bool:
        """The score ranks by the reference's entropy (a LossStore scored with --entropy)."""
        return self.selection != "none" and self.score in ENTROPY_SCORES

    def ratio_at(self, step: int) -> float:
        """The kept fraction at an optimizer step: 1.0 falling linearly to ``ratio``."""
        if not self.selects_tokens:
            return 1.0
        if self.ratio_warmup_steps == 0 or step >= self.ratio_warmup_steps:
            return self.ratio
        return 1.0 - (1.0 - self.ratio) * step / self.ratio_warmup_steps


@dataclass
class ModelDataArguments:
    """What to train and on which windows."""

    tokens: str = field(metadata={"help": "TokenStore of training windows"})
    model: str | None = field(
        default=None, metadata={"help": "AutoModelForCausalLM dir or hub name to continue from"}
    )
    preset: str | None = field(
        default=None, metadata={"help": "tiny Llama preset built from a config: tiny, 1m, 5m, ..."}
    )
    ref_losses: str | None = field(
        default=None, metadata={"help": "LossStore of the training tokens (offline reference)"}
    )
    ref_model: str | None = field(
        default=None, metadata={"help": "reference model dir for online reference losses"}
    )
    eval_tokens: str | None = field(
        default=None, metadata={"help": "held-out TokenStore evaluated every --eval_steps"}
    )
    seq_len: int | None = field(
        default=None,
        metadata={"help": f"window length (default: the LossStore's, else {DEFAULT_SEQ_LEN})"},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code"})

    def __post_init__(self):
        if self.seq_len is not None and self.seq_len < 2:
            raise UserError(f"--seq_len must be at least 2, got {self.seq_len}")


# --- Checks of options every command shares ---------------------------------------------------

# TrainingArguments fields that must be finite and >= 0 (NaN or inf would train on garbage), and
# those that must be at least 1 (0 would divide by zero inside the Trainer).
NON_NEGATIVE = ("learning_rate", "weight_decay", "adam_epsilon", "warmup_steps", "eval_delay")
AT_LEAST_ONE = (
    "gradient_accumulation_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
)


def check_training_arguments(args) -> None:
    """The numbers of a ``transformers.TrainingArguments`` that it accepts but cannot train
    with: a NaN anywhere, a negative or infinite learning rate, zero accumulation steps."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name, None)
        if isinstance(value, float) and math.isnan(value):
            raise UserError(f"--{f.name} is nan: give a number")
    for name in NON_NEGATIVE:
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not (0 <= value < math.inf):
            raise UserError(f"--{name} must be a finite number >= 0, got {value}")
    for name in AT_LEAST_ONE:
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(args, name, None)
        if isinstance(value, float) and not 0 <= value < 1:
            raise UserError(f"--{name} must be in [0, 1), got {value}")
    epochs, steps = getattr(args, "num_train_epochs", 1), getattr(args, "max_steps", -1)
    if steps <= 0 and not 0 < epochs < math.inf:
        raise UserError(f"--num_train_epochs must be a finite number > 0, got {epochs}")
