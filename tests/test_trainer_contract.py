"""What SelectiveTrainer relies on in transformers, checked on every supported release (CI runs
these at the newest and at the minimum versions): the Trainer methods it overrides, its
arguments class, gradient accumulation for any model, checkpoint rotation."""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SEQ, targs, train_logs
from torch.utils.data import Subset
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from rho.data.batches import WindowCollator, WindowDataset
from rho.errors import UserError
from rho.io.store import LossStore, TokenStore
from rho.models import build_model
from rho.training.options import ModelDataArguments, SelectionArguments
from rho.training.runs import _rotate_checkpoints
from rho.training.train import RunDirArguments
from rho.training.trainer import SelectiveTrainer, SelectiveTrainingArguments

# The private Trainer methods SelectiveTrainer overrides, and why: whole checkpoints are written
# into a scratch directory (_get_output_dir) and renamed into place (_save_checkpoint). Every
# other override is a public method. A new private override must be added here, with its reason.
PRIVATE_OVERRIDES = {"_get_output_dir", "_save_checkpoint"}


def overrides() -> dict[str, object]:
    return {
        name: member
        for name, member in vars(SelectiveTrainer).items()
        if callable(member) and not name.startswith("__") and hasattr(Trainer, name)
    }


def test_private_overrides_are_the_known_ones():
    private = {name for name in overrides() if name.startswith("_")}
    assert private == PRIVATE_OVERRIDES, (
        f"SelectiveTrainer overrides private Trainer methods {sorted(private)}; expected "
        f"{sorted(PRIVATE_OVERRIDES)}: name each one's reason in PRIVATE_OVERRIDES"
    )


@pytest.mark.parametrize("name", sorted(overrides()))
def test_every_override_matches_the_trainers_signature(name):
    """A transformers release that renames a method or its parameters fails here, by name,
    instead of silently calling the Trainer's own version or passing arguments astray. The
    parameters an override names (not its *args, **kwargs) must lead the Trainer's."""
    import transformers

    named = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ours = [
        p.name
        for p in inspect.signature(getattr(SelectiveTrainer, name)).parameters.values()
        if p.kind not in named
    ]
    theirs = list(inspect.signature(getattr(Trainer, name)).parameters)
    assert ours == theirs[: len(ours)], (
        f"transformers {transformers.__version__} changed Trainer.{name}{theirs}; "
        f"rho.training.trainer.SelectiveTrainer.{name}{ours} must follow it"
    )


def test_the_checkpoint_hooks_still_meet():
    """_save_checkpoint must find its directory through _get_output_dir: rho points that at a
    scratch directory to write a checkpoint whole (rho.training.runs.publish_checkpoint)."""
    import transformers

    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self._get_output_dir(" in source, (
        f"transformers {transformers.__version__}: Trainer._save_checkpoint no longer calls "
        "_get_output_dir; rho.trainer's whole-checkpoint save must follow"
    )


# --- SelectiveTrainingArguments -----------------------------------------------------------------


def test_selection_fields_do_not_shadow_training_arguments():
    """A TrainingArguments field or method of the same name would be silently replaced."""
    ours = {f.name for f in dataclasses.fields(SelectionArguments)}
    ours |= {n for n in vars(SelectionArguments) if not n.startswith("_")}
    clash = ours & (
        {f.name for f in dataclasses.fields(TrainingArguments)} | set(dir(TrainingArguments))
    )
    assert not clash, f"transformers now has {sorted(clash)}: rename rho's selection options"


def test_defaults_and_checks(tmp_path):
    args = SelectiveTrainingArguments(output_dir=str(tmp_path))
    assert args.remove_unused_columns is False and args.ddp_find_unused_parameters is False
    assert (args.selection, args.ratio, args.score, args.scope) == ("token", 0.6, "excess", "batch")
    assert args.selection_options() == dataclasses.asdict(SelectionArguments())
    with pytest.raises(UserError, match="remove_unused_columns"):
        SelectiveTrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True)
    sample = SelectiveTrainingArguments(
        output_dir=str(tmp_path), selection="sample", candidate_factor=3, use_cpu=True
    )
    assert (sample.train_batch_size, sample.trained_batch_size) == (24, 8)  # 8: per device


def test_a_plain_training_arguments_is_refused(stores, tmp_path):  # noqa: F811
    model = build_model("tiny", stores.vocab, seed=0)
    with pytest.raises(TypeError, match="SelectiveTrainingArguments"):
        SelectiveTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path)))


def test_rho_train_flags_parse_as_before():
    parser = HfArgumentParser((ModelDataArguments, SelectiveTrainingArguments, RunDirArguments))
    argv = ["--tokens", "t", "--preset", "tiny", "--output_dir", "o", "--use_cpu"]
    argv += ["--ratio", "0.4", "--selection", "sample+token", "--score", "learner"]
    argv += ["--scope", "sequence", "--ratio_warmup_steps", "3", "--candidate_factor", "2"]
    argv += ["--overwrite", "--gradient_accumulation_steps", "2"]
    data, args, run = parser.parse_args_into_dataclasses(args=argv)
    assert data.tokens == "t" and run.overwrite and args.gradient_accumulation_steps == 2
    assert args.selection_options() == {
        "selection": "sample+token",
        "ratio": 0.4,
        "score": "learner",
        "scope": "sequence",
        "ratio_warmup_steps": 3,
        "candidate_factor": 2,
    }


# --- Gradient accumulation: one optimizer step equals one big batch ------------------------------


class NamedArguments(torch.nn.Module):
    """A causal LM behind a forward that names its arguments (no ``**kwargs``): the Trainer
    then takes the model for one that cannot normalise its loss by ``num_items_in_batch``, and
    transformers 4.x divided SelectiveTrainer's (already normalised) loss by the accumulation
    steps once more."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, labels=None):
        return self.lm(input_ids=input_ids)


class GradAtStep(TrainerCallback):
    """The accumulated gradient just before the optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def one_step(stores, out: Path, forward: str, micro: int, steps: int, selection: dict):  # noqa: F811
    """One SGD step (lr 1: the update is the gradient) on the same 4 windows, as ``steps``
    micro-batches of ``micro`` rows."""
    lm = build_model("tiny", stores.vocab, seed=0, max_positions=SEQ)
    model = NamedArguments(lm) if forward == "named" else lm
    data = WindowDataset(TokenStore(stores.tokens), SEQ, LossStore(stores.losses))
    args = targs(
        out,
        **selection,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=steps,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
    )
    trainer = SelectiveTrainer(
        model=model, args=args, train_dataset=data, data_collator=WindowCollator(SEQ)
    )
    trainer.train_dataset = Subset(data, range(4))  # after the trainer's check of its losses
    capture = GradAtStep()
    trainer.add_callback(capture)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    update = {n: before[n] - p.detach() for n, p in model.named_parameters()}
    return capture.grads, update, train_logs(out)[0]["loss"], trainer


# Selections whose tokens do not depend on how the step is cut into micro-batches. SLM with
# scope=batch and a ratio below 1 ranks each micro-batch's tokens apart (docs/ARCHITECTURE.md):
# 2 x 2 rows then keep other tokens than 4 rows ranked together, so no equality is expected;
# the step's normaliser for that case is tested by hand in test_trainer.py.
SELECTIONS = {
    "none": {"selection": "none"},
    "token-sequence": {"selection": "token", "scope": "sequence", "ratio": 0.6},
    "token-batch-all": {"selection": "token", "scope": "batch", "ratio": 1.0},
}


@pytest.mark.parametrize("forward", ["named", "kwargs"])
@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_accumulated_step_equals_one_big_batch(stores, tmp_path, forward, selection):  # noqa: F811
    grads_one, update_one, loss_one, _ = one_step(
        stores, tmp_path / "one", forward, 4, 1, SELECTIONS[selection]
    )
    grads_acc, update_acc, loss_acc, trainer = one_step(
        stores, tmp_path / "acc", forward, 2, 2, SELECTIONS[selection]
    )
    params = inspect.signature(trainer.model.forward).parameters.values()
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    assert takes_kwargs == (forward == "kwargs")  # the case this test is about
    assert grads_one.keys() == grads_acc.keys()
    for name in grads_one:
        torch.testing.assert_close(grads_acc[name], grads_one[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(update_acc[name], update_one[name], rtol=1e-4, atol=1e-7)
        assert update_one[name].abs().max() > 0, f"{name} did not move"
    assert loss_acc == pytest.approx(loss_one, rel=1e-5)  # the logged loss: the step's mean


# --- Checkpoint rotation on transformers without a public rotate_checkpoints ----------------------


def checkpoint_dirs(root: Path, steps: list[int], mtimes: list[float]) -> None:
    shutil.rmtree(root, ignore_errors=True)
    for step, mtime in zip(steps, mtimes, strict=True):
        path = root / f"checkpoint-{step}"
        path.mkdir(parents=True)
        os.utime(path, (mtime, mtime))


@pytest.mark.parametrize(
    "steps, mtimes, limit, best, kept",
    [
        ([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], 2, 2, {2, 5}),
        ([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], 2, None, {4, 5}),
        ([3, 6, 4, 5], [10, 20, 30, 40], 2, None, {4, 5}),  # resumed earlier: by mtime
        ([3, 6, 4, 5], [10, 10.1, 10.2, 10.3], 2, None, {5, 6}),  # mtimes too close: by step
        ([1, 2, 3], [10, 20, 30], 1, 1, {1, 3}),  # the newest and the best both stay
        ([1, 2, 3], [10, 20, 30], None, None, {1, 2, 3}),
    ],
)
def test_rotation_keeps_the_newest_and_the_best(tmp_path, steps, mtimes, limit, best, kept):
    from transformers import trainer_utils

    functions = [_rotate_checkpoints]
    if hasattr(trainer_utils, "rotate_checkpoints"):  # transformers 5: rho's copy must agree
        functions.append(trainer_utils.rotate_checkpoints)
    for rotate in functions:
        checkpoint_dirs(tmp_path, steps, mtimes)
        best_dir = str(tmp_path / f"checkpoint-{best}") if best else None
        rotate(
            output_dir=str(tmp_path),
            save_total_limit=limit,
            best_model_checkpoint=best_dir,
            use_mtime=True,
        )
        left = {int(p.name.split("-")[1]) for p in tmp_path.iterdir()}
        assert left == kept, rotate.__module__
