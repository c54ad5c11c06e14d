"""One training run of `rho experiment` through the real `rho train` code: a fixed schedule,
validation loss on every axis along the way (one compact console line per evaluation, a
progress bar for the steps, the Trainer's own logs in the run's metrics.jsonl), then the final
loss of the saved model on the whole validation and test sets of every axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Subset
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from rho import distributed as dist
from rho.data.batches import WindowDataset
from rho.errors import UserError
from rho.evaluation.heldout import evaluate_store
from rho.experiment.prepare import SPLITS
from rho.experiment.records import Curve, Data, Final, Trained
from rho.experiment.schedule import owned_arguments
from rho.io.files import one_line
from rho.io.store import TokenStore
from rho.models import PRESETS, count_parameters
from rho.training.options import ModelDataArguments, SelectionArguments
from rho.training.runs import eval_records
from rho.training.train import build_trainer
from rho.training.trainer import SelectiveTrainingArguments


class ConsoleLines(TrainerCallback):
    """A bar over the optimizer steps and one line per evaluation (all axes on one line)."""

    def __init__(self, label: str, axes: list[str], steps: int):
        self.label, self.axes, self.steps = label, axes, steps
        self.bar: tqdm | None = None
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=self.steps, desc=self.label, unit="step", leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        for axis in self.axes:
            if metrics and f"eval_{axis}_loss" in metrics:
                self.pending[axis] = metrics[f"eval_{axis}_loss"]
        if len(self.pending) == len(self.axes):
            losses = "  ".join(f"{axis} {self.pending[axis]:.4f}" for axis in self.axes)
            tokens = state.num_input_tokens_seen / 1e6
            tqdm.write(
                f"  {self.label:<22} step {state.global_step:>5}  {tokens:6.2f}M tok  {losses}"
            )
            self.pending = {}


class EvaluateAtEnd(TrainerCallback):
    """Evaluate after the last step too, so every curve ends at the final model."""

    def on_step_end(self, args, state, control, **kwargs):
        if (
            state.global_step == state.max_steps
            and args.eval_steps
            and state.global_step % int(args.eval_steps)
        ):
            control.should_evaluate = True


def training_arguments(
    directory: Path,
    cfg,
    steps: int,
    seed: int,
    lr: float,
    save: bool,
    selection: SelectionArguments | None = None,
) -> SelectiveTrainingArguments:
    """The schedule every arm shares: cosine with 5% warmup, AdamW (β2 0.95, wd 0.1), the arm's
    own selection (default: none), then the config's ``training`` options on top (bf16 on a
    GPU, gradient accumulation, ...). A step is always ``batch_size`` windows: accumulation
    splits it into smaller micro-batches."""
    schedule = dict(
        **(selection or SelectionArguments(selection="none")).selection_options(),
        **owned_arguments(directory, cfg, steps, seed, lr, save),
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        log_level="error",
        dataloader_num_workers=0,
    )
    try:
        return SelectiveTrainingArguments(**(schedule | cfg.training))
    except ValueError as err:  # e.g. bf16 where the device has none
        raise UserError(f"training: {one_line(err, 300)}") from None


def validation_sample(store: str, seq_len: int, windows: int) -> Subset:
    """A fixed sample of ``windows`` windows spread evenly over a validation store (the first
    windows alone would be a few documents, not the set); 0: every window."""
    dataset = WindowDataset(TokenStore(store), seq_len)
    n = len(dataset)
    windows = n if windows == 0 else min(windows, n)
    picked = np.unique(np.linspace(0, n - 1, windows).round().astype(int))
    return Subset(dataset, picked.tolist())


def train_run(
    directory: Path,
    cfg,
    data: Data,
    *,
    label: str,
    init: str,
    tokens: str,
    selection: SelectionArguments,
    steps: int,
    seed: int,
    lr: float,
    ref_losses: str | None = None,
    save_checkpoints: bool = False,
) -> Trained:
    """Train from ``init`` (a preset or a model directory) on ``tokens``; returns the run's
    record: curve, final validation and test loss per axis, what it trained (steps, warm-up,
    tokens, windows read), FLOPs, seconds. ``cfg`` is the stage's view of the config (the
    schedule fields); ``data`` the data stage's record (the held-out stores). Under torchrun
    every rank trains its share of each step's ``batch_size`` windows (DDP), and every rank
    returns the record."""
    preset = init in PRESETS
    options = ModelDataArguments(
        tokens=tokens,
        model=None if preset else init,
        preset=init if preset else None,
        ref_losses=ref_losses if selection.needs_reference else None,
        eval_tokens=data.split(data.axes[0], "validation"),  # replaced by all axes below
        seq_len=cfg.seq_len,
    )
    run = directory / "run"
    args = training_arguments(run, cfg, steps, seed, lr, save_checkpoints, selection)
    trainer = build_trainer(options, args)
    trainer.eval_dataset = {
        axis: validation_sample(data.split(axis, "validation"), cfg.seq_len, cfg.eval_windows)
        for axis in data.axes
    }
    trainer.remove_callback(PrinterCallback)  # raw log dicts go to metrics.jsonl, not the console
    trainer.add_callback(ConsoleLines(label, data.axes, steps))
    trainer.add_callback(EvaluateAtEnd())
    trainer.train()
    trainer.save_model()
    trained = trained_counts(trainer, args)
    del trainer
    # Under torchrun rank 0 saved the model and logged the curve: it reads both, once.
    final, points = dist.from_rank0(lambda: (final_losses(run, cfg, data), curve(run, data.axes)))
    return Trained(run=str(run), final=final, curve=points, **trained)


def trained_counts(trainer, args) -> dict:
    """What a finished trainer trained: steps, warm-up, tokens, windows, FLOPs, seconds."""
    compute = Logged.model_validate(trainer.compute_logs())
    return dict(
        train_tokens=int(trainer.state.num_input_tokens_seen),
        steps=int(trainer.state.global_step),
        warmup_steps=int(args.warmup_steps),
        # RHO-LOSS reads (forwards) candidate windows beyond those it trains on.
        windows_read=compute.candidate_windows or compute.windows_trained,
        windows_trained=compute.windows_trained,
        sample_windows={axis: len(sample) for axis, sample in trainer.eval_dataset.items()},
        flops_train=compute.flops,
        seconds_train=compute.train_seconds,
        n_params=count_parameters(trainer.model),
    )


class Logged(BaseModel):
    """The compute rho's trainer logs (rho.training.meter: its ``compute_logs`` and each record of a
    run's metrics.jsonl), as far as the experiment reads it."""

    model_config = ConfigDict(extra="ignore")
    flops_train: float
    flops_candidates: float
    flops_ref_online: float
    train_seconds: float
    candidate_windows: int = 0
    windows_trained: int = 0
    tokens_seen: int = 0

    @property
    def flops(self) -> float:
        """Training FLOPs, candidate forwards and an online reference included."""
        return self.flops_train + self.flops_candidates + self.flops_ref_online


def final_losses(run: Path, cfg, data: Data) -> Final:
    """The saved model's loss on the whole validation and test sets of every axis."""

    def loss(axis: str, split: str) -> float:
        result = evaluate_store(
            run, data.split(axis, split), cfg.seq_len, cfg.batch_size, progress=False
        )
        return result["overall"]["loss"]

    return Final(**{split: {axis: loss(axis, split) for axis in data.axes} for split in SPLITS})


def curve(run: Path, axes: list[str]) -> Curve:
    """Validation loss per axis at each evaluation, with the trained tokens, FLOPs (candidate
    forwards and an online reference included) and training seconds at that point."""
    records = eval_records(run, f"eval_{axes[0]}_loss")
    points = [Logged.model_validate(r) for r in records]
    tokens = [p.tokens_seen for p in points]
    losses = {}
    for axis in axes:
        key = f"eval_{axis}_loss"
        by_tokens = {Logged.model_validate(r).tokens_seen: r[key] for r in eval_records(run, key)}
        losses[axis] = [by_tokens.get(t) for t in tokens]
    return Curve(
        tokens=tokens,
        flops=[p.flops for p in points],
        seconds=[p.train_seconds for p in points],
        losses=losses,
    )
