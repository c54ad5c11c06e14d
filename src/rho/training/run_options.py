"""rho_options.json, the record of what a `rho train` run trained: one typed model, written by
the run (rho.training.trainer, rho.training.train, through ``rho.training.runs.write_run_files``)
and read through the
same model by every reader (a resumed run's check, `rho analyze selection`).

Every field the writer always knows is required, so no reader supplies a default of its own.
The identity fields (``version`` 2) came later: a file written before them reads with them None,
"not recorded", and no run resumes from it (there is nothing to check the resume against).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from rho.errors import UserError
from rho.io.files import read_json
from rho.io.schema import Count, Hash, Name, Size, Strict, validate
from rho.selection.select import SCOPES, SCORES
from rho.training.options import SELECTIONS

OPTIONS_FILE = "rho_options.json"
VERSION = 2  # 2: the identity fields (tokens_hash, ref_losses_hash, architecture)
# Config entries that say how a model was saved or run, not what it is.
NOT_ARCHITECTURE = frozenset(
    {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache", "architectures"}
)


class SelectionOptions(Strict):
    """The fields of rho.training.options.SelectionArguments."""

    selection: Literal[SELECTIONS]
    ratio: Annotated[float, Field(gt=0, le=1)]
    score: Literal[SCORES]
    scope: Literal[SCOPES]
    ratio_warmup_steps: Count
    candidate_factor: Annotated[int, Field(ge=1, le=1 << 20)]


class DataOptions(Strict):
    """The fields of rho.training.options.ModelDataArguments."""

    tokens: Name
    model: Name | None
    preset: Name | None
    ref_losses: Name | None
    ref_model: Name | None
    eval_tokens: Name | None
    seq_len: Size | None
    trust_remote_code: bool


class DistributedFacts(Strict):
    world_size: Annotated[int, Field(ge=1, le=1 << 20)]
    wrapper: Name
    find_unused_parameters: bool | None


class LossImpl(Strict):
    """How the per-token losses were computed (rho.selection.output_layer): the --loss_impl asked
    for and
    what it resolved to for the learner and the online reference (None without one)."""

    asked: Name
    learner: Name
    reference: Name | None = None


class RunOptions(Strict):
    """rho_options.json. ``data`` and the identity fields are None for a SelectiveTrainer used
    from Python (only its selection is known) and, the identity fields, in a version 1 file;
    ``distributed`` is known once the run has trained."""

    version: Literal[1, 2] = 1  # a file without a version predates the identity fields
    selection: SelectionOptions
    data: DataOptions | None = None
    seq_len: Size | None = None
    tokens_hash: Hash | None = None  # the TokenStore's content_hash
    ref_losses_hash: Hash | None = None  # the LossStore's loss_hash, where the run reads it
    architecture: dict[str, Any] | None = None  # the model's config (see architecture)
    distributed: DistributedFacts | None = None
    loss_impl: LossImpl | None = None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def selection_record(selection: dict) -> RunOptions:
    """The record of a SelectiveTrainer made from Python: its selection only."""
    return RunOptions(version=VERSION, selection=validate(SelectionOptions, selection, "selection"))


def architecture(model) -> dict:
    """A model's architecture as rho_options.json records it (its config, as JSON, without the
    entries that say how it was saved or run)."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    return {k: v for k, v in config.items() if k not in NOT_ARCHITECTURE}


def read_run_options(path: str | Path) -> RunOptions:
    """A rho_options.json, validated: a damaged one is a one-line UserError."""
    return validate(RunOptions, read_json(path), f"{path} is damaged")


def check_continues(checkpoint: str | Path, now: RunOptions) -> None:
    """A resumed run must train what its checkpoint trained: the same tokens, reference losses,
    selection, window length and model architecture. Else a one-line UserError naming the
    first difference."""
    then = read_run_options(Path(checkpoint) / OPTIONS_FILE)
    start_afresh = "(start afresh with --overwrite, or resume with the run's own options)"
    if then.tokens_hash is None or then.data is None:
        raise UserError(
            f"cannot resume from {checkpoint}: its {OPTIONS_FILE} does not record what it "
            f"trained on (written by an older rho, or from Python) {start_afresh}"
        )
    difference = first_difference(then, now)
    if difference:
        raise UserError(f"cannot resume from {checkpoint}: {difference} {start_afresh}")


def first_difference(then: RunOptions, now: RunOptions) -> str | None:
    """What ``now`` trains differently from ``then``, in a few words (None: the same)."""
    if now.tokens_hash != then.tokens_hash:
        return (
            f"--tokens {now.data.tokens} holds other tokens than the checkpoint trained on "
            f"({then.data.tokens})"
        )
    for name, value in now.selection:
        old = getattr(then.selection, name)
        if value != old:
            return f"--{name} is {value}, the checkpoint trained with {old}"
    if now.seq_len != then.seq_len:
        return f"--seq_len is {now.seq_len}, the checkpoint trained with {then.seq_len}"
    if now.ref_losses_hash != then.ref_losses_hash:
        return (
            f"--ref_losses {now.data.ref_losses} is not the LossStore the checkpoint trained "
            f"with ({then.data.ref_losses})"
        )
    old, new = then.architecture or {}, now.architecture or {}
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            model = f"--model {now.data.model}" if now.data.model else f"--preset {now.data.preset}"
            return (
                f"{model} is another model than the checkpoint's ({key} is "
                f"{new.get(key)!r}, the checkpoint's {old.get(key)!r})"
            )
    return None
