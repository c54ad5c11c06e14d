"""SelectiveTrainer: transformers.Trainer with the selective loss (SLM) and online RHO-LOSS,
configured by ``SelectiveTrainingArguments`` (TrainingArguments plus the selection options).

It overrides only what the method needs: the loss (``compute_loss``:
``rho.selection.loss.slm_loss`` on
logits or hidden states, by ``--loss_impl``, ``rho.selection.output_layer``), the step's normaliser
(``get_batch_samples`` counts, before the step, how many tokens the step will select on all ranks
and micro-batches), the choice of windows from candidate batches (``rho.training.candidates``), bf16
autocast, logs and saves. Everything else is the Trainer's; the compute counters are a callback
(``rho.training.meter``). docs/ARCHITECTURE.md has the semantics (normalisation, scopes, world
consistency, compute counters, debugging dumps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rho import distributed as dist
from rho.data.batches import NOT_MODEL_INPUTS
from rho.errors import UserError
from rho.io.files import remove_path
from rho.models import check_not_same_model, count_parameters
from rho.scoring.windows import IGNORE, to_model
from rho.selection import output_layer
from rho.selection.loss import STAT_KEYS, slm_loss, stats_from_sums
from rho.selection.select import KeepRule, check_choice, count_kept, n_keep, select_topk, unit_sizes
from rho.training.candidates import choose_windows
from rho.training.meter import ComputeMeter
from rho.training.options import SelectionArguments
from rho.training.run_options import LossImpl, selection_record
from rho.training.runs import (
    MetricsFileCallback,
    check_whole_checkpoint,
    drop_manifest,
    final_model_files,
    publish_checkpoint,
    read_counters,
    whole_checkpoints,
    write_manifest,
    write_run_files,
)

DUMP_ENV = "RHO_DUMP_SELECTIONS"  # a directory: every micro-batch's selection is saved there


@dataclass
class SelectiveTrainingArguments(SelectionArguments, TrainingArguments):
    """transformers.TrainingArguments with the selection options (``rho.training.options``) and
    rho's
    defaults where they differ from the Trainer's (like TRL's SFTConfig)."""

    # Batches carry ref_loss (and ref_entropy), which the model's forward does not take.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "must stay false: rho's batches carry columns beside the model's"},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "find_unused_parameters of DistributedDataParallel. rho's default is False: "
            "a causal LM uses every parameter in every step, and True (the Trainer's default) "
            "costs an extra pass over the autograd graph each step. Pass true for a model that "
            "leaves some parameters unused in a step (DDP then says so)"
        },
    )
    loss_impl: str = field(default="auto", metadata=output_layer.LOSS_IMPL_FIELD)

    def __post_init__(self):
        TrainingArguments.__post_init__(self)
        self.check_selection()
        check_choice(self.loss_impl, output_layer.LOSS_IMPLS, "--loss_impl")
        if self.remove_unused_columns:
            raise UserError(
                "--remove_unused_columns must be false: rho's batches carry reference losses "
                "that the model's forward does not take"
            )

    @property
    def train_batch_size(self) -> int:
        """What the Trainer's dataloader draws per micro-batch: with sample selection, the
        candidates (candidate_factor x the trained batch), of which the trainer keeps the best;
        an epoch is then one pass over the data as candidates."""
        factor = self.candidate_factor if self.selects_windows else 1
        return super().train_batch_size * factor

    @property
    def trained_batch_size(self) -> int:
        """Rows trained per micro-batch (TrainingArguments' own train_batch_size)."""
        return super().train_batch_size


class SelectiveTrainer(Trainer):
    """transformers.Trainer with the selective loss, configured by ``args``, a
    SelectiveTrainingArguments. ``ref_model`` gives online reference losses; otherwise batches
    carry ``ref_loss`` from a LossStore (see rho.data.batches). ``keep_rule`` decides how many
    tokens a
    selection keeps (default ``rho.selection.select.n_keep``): selection and the step normaliser
    both use
    it."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the whole step's selected count

    def __init__(self, model=None, args=None, *rest, ref_model=None, keep_rule=n_keep, **kw):
        args = SelectiveTrainingArguments() if args is None else args
        if not isinstance(args, SelectiveTrainingArguments):
            raise TypeError(
                f"SelectiveTrainer needs args=SelectiveTrainingArguments(...), got "
                f"{type(args).__name__}: its selection options and defaults "
                "(remove_unused_columns=False) are what the trainer relies on"
            )
        super().__init__(model, args, *rest, **kw)
        # compute_loss normalises by num_items_in_batch (the step's selected count) whatever the
        # model's forward takes. transformers 4.x reads this flag to decide whether
        # training_step divides the loss by the accumulation steps again; 5.x reads
        # loss_is_scaled_for_ga above.
        self.model_accepts_loss_kwargs = True
        self.ref_model = ref_model
        self.keep_rule: KeepRule = keep_rule
        self.rho_options = selection_record(
            self.args.selection_options()
        )  # rho.training.run_options
        has_offline = getattr(self.train_dataset, "losses", None) is not None
        has_entropy = getattr(self.train_dataset, "entropy", False)
        self.args.check_references(has_offline, ref_model is not None, has_entropy)
        if ref_model is not None:
            check_not_same_model(self.model, ref_model)
            ref_model.to(self.args.device).eval().requires_grad_(False)
        resolve = partial(output_layer.resolve_loss_impl, self.args.loss_impl)
        self.loss_impl, ref_impl = resolve(self.model), ref_model and resolve(ref_model)
        self.rho_options.loss_impl = LossImpl(
            asked=self.args.loss_impl, learner=self.loss_impl, reference=ref_impl
        )
        self._sums: torch.Tensor | None = None
        self._micro = (-1, 0)  # (global step, micro-batch index): seeds random scores, dumps
        n_ref = 0 if ref_model is None else count_parameters(ref_model)
        self.meter = ComputeMeter(count_parameters(self.model), n_ref)
        self._save_into: str | None = None  # where the checkpoint being saved is written
        self._writer_pid: int | None = None
        self.add_callback(MetricsFileCallback())
        self.add_callback(self.meter)

    # --- mixed precision --------------------------------------------------------------------

    def create_accelerator_and_postprocess(self):
        """bf16: autocast here, not in accelerate's model wrapper, which hands the outputs back
        as float32, a float32 copy of the whole (B, T, V) logits that token_losses exists to
        avoid. The online reference's forward, inside compute_loss, is autocast too."""
        super().create_accelerator_and_postprocess()
        self._autocast = bool(self.args.bf16 and self.accelerator.native_amp)
        if self._autocast:
            self.accelerator.native_amp = False

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        if not self._autocast:
            return super().autocast_smart_context_manager(cache_enabled)
        return torch.autocast(self.args.device.type, torch.bfloat16, cache_enabled=cache_enabled)

    # --- the step's batches and normaliser ----------------------------------------------------

    def _choose_windows(self, batch: dict, micro: int) -> tuple[dict, torch.Tensor]:
        chosen, scored, decided = choose_windows(
            batch,
            learner=self.model,
            ref_model=self.ref_model,
            selection=self.args,
            batch_size=self.args.trained_batch_size,
            autocast=self.autocast_smart_context_manager,
            seed=self.args.seed,
            step=self.state.global_step,
            micro=micro,
            loss_impl=self.args.loss_impl,
        )
        if os.environ.get(DUMP_ENV):
            name = f"micro{micro}-rank{dist.rank()}-candidates"
            self._dump(name, input_ids=batch["input_ids"], **decided)
        return chosen, scored

    def _valid(self, batch: dict) -> torch.Tensor:
        """Targets that may be selected (model alignment, without the last, target-less column)."""
        valid = to_model(batch["labels"], IGNORE)[:, :-1] != IGNORE
        if self.args.needs_reference and "ref_loss" in batch:
            valid = valid & ~torch.isnan(to_model(batch["ref_loss"], float("nan"))[:, :-1])
        if self.args.needs_entropy:  # as slm_loss's valid_mask: the counts must agree
            valid = valid & ~torch.isnan(to_model(batch["ref_entropy"], float("nan"))[:, :-1])
        return valid

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of the step (with sample selection, the best windows of
        each candidate batch) and, instead of its count of labels, the count on all ranks of the
        tokens they will select."""
        self.meter.start_step()
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        drawn = sum(b["input_ids"].shape[0] for b in batches)
        scored = torch.zeros(2, dtype=torch.float64)  # candidate tokens: learner, online reference
        if self.args.selects_windows:
            picked = [self._choose_windows(b, micro) for micro, b in enumerate(batches)]
            batches = [b for b, _ in picked]
            scored = sum(s for _, s in picked)
        ratio = self.args.ratio_at(self.state.global_step)
        scope = self.args.scope
        sizes = [unit_sizes(self._valid(b), scope) for b in batches]
        if scope == "batch":  # a micro-batch is one unit across ranks: sum its sizes first
            units = torch.cat(sizes)
        else:  # rows are units of their own: count here
            units = torch.stack([count_kept(s, ratio, self.keep_rule) for s in sizes]).sum()[None]
        # non-padding input tokens (prompt tokens of instruction data too: they cost compute)
        seen = sum(
            b["input_length"].sum() if "input_length" in b else (b["labels"] != IGNORE).sum()
            for b in batches
        )
        if self.ref_model is not None and not self.args.selects_windows:
            scored[1] = float(seen)  # compute_loss runs the online reference on them
        rows = sum(b["input_ids"].shape[0] for b in batches)
        extra = torch.tensor([seen, drawn, rows, *scored.tolist()], dtype=torch.float64)
        both = torch.cat([units.double().cpu(), extra]).to(self.args.device)
        counts = dist.all_reduce_sum(both).cpu()  # rho's one collective per step
        units, (seen, drawn, rows, learner_tokens, ref_tokens) = counts[:-5], counts[-5:].tolist()
        if scope == "batch":
            n_selected = count_kept(units, ratio, self.keep_rule)
        else:
            n_selected = units.sum()
        # else the Trainer counts them ("no" in transformers 5, False in 4.x)
        if self.args.include_num_input_tokens_seen in ("no", False):
            self.state.num_input_tokens_seen += int(seen)
        self.meter.count(
            candidate_windows=drawn,
            windows_trained=rows,
            tokens_trained=seen,
            candidate_tokens=learner_tokens,
            ref_tokens=ref_tokens,
        )
        return batches, n_selected.to(device=self.args.device, dtype=torch.float32)

    # --- the loss -----------------------------------------------------------------------------

    def _reference_losses(self, inputs: dict, targets: torch.Tensor) -> torch.Tensor | None:
        """Reference losses aligned with ``targets`` (model alignment), or None if not needed."""
        if not self.args.needs_reference:
            return None
        if "ref_loss" in inputs:
            return to_model(inputs["ref_loss"], float("nan"))
        ids = {"input_ids": inputs["input_ids"]}  # no gradient, the impl's output layer path
        return output_layer.model_token_losses(self.ref_model, ids, targets, self.args.loss_impl)

    def _world_select(self, scores, valid, ratio, scope):
        """Rank this micro-batch together with the same micro-batch on every other rank (scores
        of several keys, e.g. reference+entropy, travel whole: their ranks are taken after)."""
        keys = scores.float().reshape(*valid.shape, -1)
        both, mine = dist.gather_rows(torch.cat([keys, valid.float()[..., None]], dim=-1))
        gathered = both[..., :-1] if scores.dim() > valid.dim() else both[..., 0]
        selected = select_topk(gathered, both[..., -1].bool(), ratio, scope, self.keep_rule)
        return selected[mine]  # one gather

    def _next_micro(self) -> tuple[int, int]:
        step, micro = self._micro
        self._micro = (self.state.global_step, micro + 1 if step == self.state.global_step else 0)
        return self._micro

    def _generator(self) -> torch.Generator:
        """Random scores seeded by (seed, step, micro-batch, rank): reproducible on resume."""
        key = (self.args.seed, *self._micro, dist.rank())  # a tuple of ints hashes the same always
        return torch.Generator().manual_seed(hash(key) & 0x7FFFFFFF)

    def _dump(self, name: str, **arrays: torch.Tensor) -> None:
        (out := Path(os.environ[DUMP_ENV])).mkdir(parents=True, exist_ok=True)
        arrays = {k: v.cpu().numpy() for k, v in arrays.items()}
        np.savez(out / f"step{self.state.global_step:05d}-{name}.npz", **arrays)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        # Shift the labels, not the logits: the targets end in an ignored column, so the
        # (B, T, V) logits (or hidden states) are used whole (a slice would be a copy).
        targets = to_model(inputs["labels"], IGNORE)
        logits_needed = not model.training and self.compute_metrics is not None  # for metrics
        outputs, logits = output_layer.forward_outputs(
            model, model_inputs, self.loss_impl, logits_needed
        )
        if not model.training:  # evaluation: plain mean cross-entropy over every target
            loss = slm_loss(logits, targets, ratio=1.0, score="learner").loss
            return (loss, outputs) if return_outputs else loss

        self._next_micro()
        token_mode = self.args.selects_tokens
        needs_entropy = token_mode and self.args.needs_entropy
        world = dist.world_size()
        world_select = token_mode and self.args.scope == "batch" and world > 1
        local_select = partial(select_topk, keep=self.keep_rule)
        result = slm_loss(
            logits,
            targets,
            ref_loss=self._reference_losses(inputs, targets),
            ratio=self.args.ratio_at(self.state.global_step),
            score=self.args.score if token_mode else "learner",
            scope=self.args.scope,
            generator=self._generator() if self.args.score == "random" else None,
            # DDP averages gradients over ranks; scale so the sum over ranks is the step's mean.
            normalizer=None if num_items_in_batch is None else num_items_in_batch / world,
            select=self._world_select if world_select else local_select,
            # reference entropies come from the LossStore only
            ref_entropy=to_model(inputs["ref_entropy"], float("nan")) if needs_entropy else None,
        )
        if os.environ.get(DUMP_ENV):
            name = f"micro{self._micro[1]}-rank{dist.rank()}"
            self._dump(name, input_ids=inputs["input_ids"], selected=result.selected[:, :-1])
        sums = torch.stack([result.sums[k] for k in STAT_KEYS])
        self._sums = sums if self._sums is None else self._sums + sums
        return (result.loss, outputs) if return_outputs else result.loss

    # --- logs and checkpoints ---------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums is not None:  # a training log: add selection stats
            sums = dist.all_reduce_sum(self._sums)
            stats = stats_from_sums(dict(zip(STAT_KEYS, sums, strict=True)))
            for key in ("selected_fraction", "loss_all", "loss_selected", "loss_unselected"):
                logs[key] = stats[key]
            if self.args.needs_reference:
                logs["excess_mean"] = stats["excess_mean"]
            # global_step already counts the step just taken: log the ratio that step used
            logs["ratio"] = self.args.ratio_at(max(self.state.global_step - 1, 0))
            self._sums = None
        logs["tokens_seen"] = int(self.state.num_input_tokens_seen)
        logs.update(self.compute_logs())
        super().log(logs, start_time)

    def compute_logs(self) -> dict:
        """The run's cumulative compute so far (docs/ARCHITECTURE.md, "Compute")."""
        return self.meter.logs()

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The Trainer's; the compute counters restart, or continue from the checkpoint's. Only
        a whole checkpoint is resumed (``True``: the newest whole one)."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            found = whole_checkpoints(self.args.output_dir)
            if not found:
                raise UserError(f"{self.args.output_dir} holds no whole checkpoint to resume")
            checkpoint = str(found[-1][1])
        if checkpoint:
            check_whole_checkpoint(checkpoint)
        self.meter.reset(read_counters(checkpoint) if checkpoint else None)
        return super().train(checkpoint or None, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's, plus the run files; a final model (not a checkpoint's, which
        ``_save_checkpoint`` marks) gets its manifest once every file is written."""
        target = output_dir or self.args.output_dir
        if self.args.should_save and not _internal_call:
            drop_manifest(target)  # until the new model is whole, none is listed here
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            write_run_files(target, self.rho_options, self.meter.counters)
            if not _internal_call:
                write_manifest(target, self.state.global_step, final_model_files(Path(target)))

    # --- whole checkpoints: written in a scratch sibling, renamed into place -------------------
    # Trainer._save_checkpoint writes into os.path.join(self._get_output_dir(trial),
    # "checkpoint-N"); rho points that directory at a scratch sibling for the call, then marks the
    # checkpoint whole (rho.training.runs.write_manifest) and renames it into place. If
    # transformers stops
    # going through _get_output_dir, the save raises at once (and tests/test_nothing_lost.py fails).

    def _get_output_dir(self, trial) -> str:
        return self._save_into or super()._get_output_dir(trial)

    def _scratch_pid(self) -> int:
        """Rank 0's PID, the same on every rank: the scratch name they all write into, and the
        process whose death lets a later run remove it."""
        if self._writer_pid is None:
            pid = torch.tensor([os.getpid() if dist.rank() == 0 else 0], device=self.args.device)
            self._writer_pid = int(dist.all_reduce_sum(pid).item())
        return self._writer_pid

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        scratch = run_dir / f".{name}.tmp-{self._scratch_pid()}-save"
        if self.args.should_save:
            remove_path(scratch)
        dist.barrier()
        self._save_into = str(scratch)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._save_into = None
        dist.barrier()  # every rank's files (RNG states) are in
        if self.args.should_save:
            publish_checkpoint(scratch / name, run_dir / name, self.state, self.args)
        dist.barrier()
