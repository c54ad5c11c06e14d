"""`rho train`: plain causal LM, Selective Language Modeling and online RHO-LOSS (Trainer).

``SelectiveTrainer`` overrides only what the method needs: the loss (``compute_loss`` calls
``rho.loss.slm_loss``), the step's normaliser (``get_batch_samples`` counts, before the step,
how many tokens it will select on all ranks and micro-batches), and logging. Everything else,
including every ``TrainingArguments`` flag, distributed training and checkpoints, is the
Trainer's own.

Normalisation: each optimizer step's gradient is that of the mean loss over all the tokens
selected in the step, whatever the gradient-accumulation steps and ranks.

Scope "batch" ranks the tokens of one micro-batch on all data-parallel ranks together
(per_device_train_batch_size × world_size rows), so the selection does not depend on how many
processes share that batch. Gradient-accumulation micro-batches are ranked separately: with
accumulation, "batch" selections match a run whose per-device batch is the micro-batch, not the
whole step. Scope "sequence" ranks each row alone and is invariant to both.

Sample selection (online RHO-LOSS, ``--selection sample`` and ``sample+token``): the train
dataloader yields *candidate* batches of ``candidate_factor`` × per_device_train_batch_size
windows. Before the step, ``get_batch_samples`` runs the learner forward on them without gradient
(``inference_mode``, under the training autocast), scores each window by its mean reducible loss
over its valid tokens (learner − reference with ``--score excess``, the paper's; ``learner``,
``reference`` and ``random`` are controls), keeps the best per_device_train_batch_size windows
and replaces the candidate batch by them; the normaliser is then counted as for any batch.
``sample`` trains on every token of the kept windows, ``sample+token`` selects ``--ratio`` of
their tokens as ``token`` does. World consistency: the candidates of all ranks are ranked
together (rank 0's rows, then rank 1's, ...); the top world_size × B of them, in that candidate
order, are dealt in contiguous shares of B rows, rank r training on the r-th share (rows move
between ranks when needed), so the trained windows do not depend on the number of processes for
the same global candidate batch. Gradient-accumulation micro-batches are ranked separately.
An *epoch* is one pass over the windows as candidates: each window is a candidate once per epoch
and about 1 / candidate_factor of them are trained on, so ``--num_train_epochs 1`` takes
1 / candidate_factor of the optimizer steps of plain training; ``--max_steps`` counts optimizer
steps as always (more candidates than the dataset holds simply start a new epoch). The last
candidate batch of an epoch may be short (unless ``--dataloader_drop_last``): it still trains on
up to the batch size of its windows, with less choice.

Compute, logged with every record of ``metrics.jsonl`` (cumulative, all ranks): ``tokens_seen``
= the non-padding tokens *trained on* (not the candidates); ``candidate_windows`` (windows drawn
from the data: equal to ``windows_trained`` without sample selection) and ``windows_trained``;
``flops_train`` = 6·N·tokens trained, ``flops_candidates`` = 2·N·candidate tokens (forward-only
scoring), ``flops_ref_online`` = 2·N_ref·tokens the online reference scored, with N from
``rho.models.count_parameters``; ``train_seconds``: wall time inside optimizer steps (data,
candidate scoring, forward, backward, optimizer), evaluation and checkpoints excluded. They are
saved in each checkpoint (``rho_compute.json``) and restored on resume.

Debugging: with ``RHO_DUMP_SELECTIONS=DIR`` in the environment, every training micro-batch writes
``DIR/step{S}-micro{M}-rank{R}.npz`` holding its ``input_ids`` and the ``selected`` mask (aligned
with ``input_ids[:, 1:]``); the tests use it to compare selections across process counts. Sample
selection also writes ``step{S}-micro{M}-rank{R}-candidates.npz``: the rank's candidate
``input_ids``, the global ``scores`` and the ``chosen`` global candidate rows.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from rho import distributed as dist
from rho.errors import UserError
from rho.loss import (
    SCOPES,
    SCORES,
    STAT_KEYS,
    n_keep,
    select_topk,
    selective_mean,
    slm_loss,
    stats_from_sums,
    token_losses,
    token_scores,
    valid_mask,
)

SELECTIONS = ("none", "token", "sample", "sample+token")
OPTIONS_FILE = "rho_options.json"
METRICS_FILE = "metrics.jsonl"
COMPUTE_FILE = "rho_compute.json"
DUMP_ENV = "RHO_DUMP_SELECTIONS"
# Cumulative counters (all ranks) behind the compute logs; saved with checkpoints.
COUNTERS = (
    "candidate_windows",
    "windows_trained",
    "tokens_trained",
    "candidate_tokens",
    "ref_tokens",
    "train_seconds",
)


@dataclass
class SelectionArguments:
    """How tokens are selected for the loss."""

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
        metadata={"help": "excess (learner - reference), learner, reference or random"},
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
        if self.selection not in SELECTIONS:
            raise UserError(f"--selection must be one of {', '.join(SELECTIONS)}")
        if self.score not in SCORES:
            raise UserError(f"--score must be one of {', '.join(SCORES)}")
        if self.scope not in SCOPES:
            raise UserError(f"--scope must be one of {', '.join(SCOPES)}")
        if not 0.0 < self.ratio <= 1.0:
            raise UserError(f"--ratio must be in (0, 1], got {self.ratio}")
        if self.ratio_warmup_steps < 0:
            raise UserError("--ratio_warmup_steps must be >= 0")
        if self.candidate_factor < 1:
            raise UserError(f"--candidate_factor must be >= 1, got {self.candidate_factor}")

    @property
    def samples(self) -> bool:
        """Whole windows are selected from candidate batches (online RHO-LOSS)."""
        return self.selection in ("sample", "sample+token")

    @property
    def tokens(self) -> bool:
        """Tokens are selected inside the trained windows (SLM)."""
        return self.selection in ("token", "sample+token")

    @property
    def needs_reference(self) -> bool:
        return self.selection != "none" and self.score in ("excess", "reference")

    def ratio_at(self, step: int) -> float:
        """The kept fraction at an optimizer step: 1.0 falling linearly to ``ratio``."""
        if not self.tokens:
            return 1.0
        if self.ratio_warmup_steps == 0 or step >= self.ratio_warmup_steps:
            return self.ratio
        return 1.0 - (1.0 - self.ratio) * step / self.ratio_warmup_steps


# --- Sample selection: pure functions ------------------------------------------------------------


def window_scores(
    learner_loss: torch.Tensor | None,
    targets: torch.Tensor,
    ref_loss: torch.Tensor | None = None,
    score: str = "excess",
    ignore_index: int = -100,
) -> torch.Tensor:
    """One score per window (row), higher = trained first: the mean over the row's valid targets
    of the token score, so ``excess`` gives the mean reducible loss (learner − reference) of
    RHO-LOSS. Aligned like ``rho.loss.slm_loss``'s inputs; ignored targets and positions without
    a reference (NaN) are left out of the mean; a row without any valid target scores NaN.
    ``random`` is not a per-window statistic: draw it over the global candidates instead."""
    if score == "random":
        raise ValueError("random window scores are drawn per candidate, not computed")
    uses_ref = score in ("excess", "reference")
    valid = valid_mask(targets, ref_loss if uses_ref else None, ignore_index)
    if learner_loss is None:  # "reference" needs no learner forward
        learner_loss = torch.zeros(targets.shape, device=targets.device)
    tokens = token_scores(score, learner_loss, ref_loss)
    n = valid.sum(-1)
    total = torch.where(valid, tokens, 0.0).sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), float("nan"))


def top_windows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices of the ``k`` best windows, returned in row order: highest score first, NaN
    last, ties by position (a stable sort), so the choice is deterministic."""
    if not 0 <= k <= scores.shape[0]:
        raise ValueError(f"cannot choose {k} of {scores.shape[0]} windows")
    nan = torch.isnan(scores)
    order = torch.argsort(torch.where(nan, -math.inf, scores.float()), descending=True, stable=True)
    order = order[torch.argsort(nan[order].to(torch.uint8), stable=True)]  # NaN after -inf too
    return order[:k].sort().values


class MetricsFileCallback(TrainerCallback):
    """Append every log (training and evaluation) to output_dir/metrics.jsonl on rank 0."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class _StepClock(TrainerCallback):
    """Adds each optimizer step's wall time (from fetching its batches to the optimizer step) to
    the trainer's ``train_seconds``; evaluation and checkpoints fall outside."""

    def __init__(self, trainer: SelectiveTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        started = self.trainer._step_started
        if started is not None:
            self.trainer._counters["train_seconds"] += time.perf_counter() - started
            self.trainer._step_started = None


def check_not_same_model(model, ref_model) -> None:
    """A public port's bug: the 'reference' was the training model itself, so excess ≈ 0."""
    if ref_model is model:
        raise UserError("the reference model is the training model itself: excess loss would be 0")
    learner = {p.data_ptr() for p in model.parameters()}
    if any(p.data_ptr() in learner for p in ref_model.parameters()):
        raise UserError("the reference model shares weights with the training model")
    from rho.models import model_fingerprint

    if model_fingerprint(ref_model) == model_fingerprint(model):
        raise UserError(
            "the reference model has the same weights as the training model: excess loss would "
            "be 0 (train the reference on curated data first)"
        )


class SelectiveTrainer(Trainer):
    """transformers.Trainer with the selective loss. ``ref_model`` gives online reference losses;
    otherwise batches carry ``ref_loss`` from a LossStore (see rho.data)."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the whole step's selected count

    def __init__(self, *args, selection: SelectionArguments | None = None, ref_model=None, **kw):
        super().__init__(*args, **kw)
        self.selection = selection or SelectionArguments()
        self.ref_model = ref_model
        self.rho_options: dict = {"selection": asdict(self.selection)}
        has_offline = getattr(self.train_dataset, "losses", None) is not None
        if self.selection.needs_reference and ref_model is None and not has_offline:
            raise UserError(
                f"score {self.selection.score!r} needs reference losses: give --ref_losses "
                "(a LossStore) or --ref_model (online)"
            )
        if ref_model is not None:
            check_not_same_model(self.model, ref_model)
            ref_model.to(self.args.device).eval().requires_grad_(False)
        self._sums: torch.Tensor | None = None
        self._micro = (-1, 0)  # (global step, micro-batch index): seeds random scores, dumps
        from rho.models import count_parameters

        self._n_params = count_parameters(self.model)
        self._n_ref_params = 0 if ref_model is None else count_parameters(ref_model)
        self._counters: dict = {**dict.fromkeys(COUNTERS, 0), "train_seconds": 0.0}
        self._step_started: float | None = None
        self.add_callback(MetricsFileCallback())
        self.add_callback(_StepClock(self))

    # Batches carry ref_loss, which the model's forward does not take: keep every column.
    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

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

    # --- candidate batches (sample selection) -----------------------------------------------

    def get_train_dataloader(self):
        """Sample selection: every batch holds candidate_factor × the batch size candidates, of
        which ``get_batch_samples`` keeps the batch size (so an epoch is a pass of candidates)."""
        if not self.selection.samples:
            return super().get_train_dataloader()
        size = self._train_batch_size
        self._train_batch_size = size * self.selection.candidate_factor
        try:
            return super().get_train_dataloader()
        finally:
            self._train_batch_size = size

    def _forward_losses(self, model, batch: dict, targets: torch.Tensor) -> torch.Tensor:
        """Per-target losses of ``model`` on ``batch``: forward only, in eval mode, under the
        training autocast, in chunks of the training micro-batch size (so no more memory than a
        training forward)."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "ref_loss")}
        chunk, parts = max(1, self._train_batch_size), []
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), self.autocast_smart_context_manager():
                for i in range(0, targets.shape[0], chunk):
                    rows = {k: v[i : i + chunk] for k, v in inputs.items()}
                    logits = model(**rows, use_cache=False).logits
                    parts.append(token_losses(logits, targets[i : i + chunk]))
        finally:
            model.train(was_training)
        return torch.cat(parts).clone()  # a normal tensor again, outside inference mode

    def _select_windows(self, batch: dict, micro: int) -> tuple[dict, torch.Tensor]:
        """This rank's share of the best windows of the global candidate batch (the rule is in the
        module docstring), and how many candidate tokens the learner and the online reference
        scored (forward-only)."""
        score, labels = self.selection.score, batch["labels"]
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        n_tokens = float((labels != -100).sum())
        scored = torch.zeros(2, dtype=torch.float64)
        if self.ref_model is not None and self.selection.needs_reference:
            ref = self._forward_losses(self.ref_model, batch, targets)
            # stored like a LossStore's windows (loss of input_ids[t]), so it travels with the rows
            ref = F.pad(ref[:, :-1], (1, 0), value=float("nan"))
            batch = {**batch, "ref_loss": torch.where(labels == -100, float("nan"), ref)}
            scored[1] = n_tokens
        ref_loss = None
        if "ref_loss" in batch:
            ref_loss = F.pad(batch["ref_loss"][:, 1:], (0, 1), value=float("nan"))
        learner = None
        if score in ("excess", "learner"):
            learner = self._forward_losses(self.model, batch, targets)
            scored[0] = n_tokens
        if score == "random":  # drawn for the global candidates: the same for any world size
            local = torch.zeros(targets.shape[0], device=targets.device)
        else:
            local = window_scores(learner, targets, ref_loss, score)
        scores, _ = dist.gather_rows(local)
        if score == "random":
            key = (self.args.seed, self.state.global_step, micro)
            draw = torch.Generator().manual_seed(hash(key) & 0x7FFFFFFF)
            scores = torch.rand(scores.shape[0], generator=draw).to(scores.device)
        world, rank = dist.world_size(), dist.rank()
        share = min(self._train_batch_size, scores.shape[0] // world)
        chosen = top_windows(scores, share * world)
        mine = chosen[rank * share : (rank + 1) * share]
        if os.environ.get(DUMP_ENV):
            name = f"micro{micro}-rank{rank}-candidates"
            self._dump(name, input_ids=batch["input_ids"], scores=scores, chosen=chosen)
        if world > 1:  # the share may hold other ranks' candidates
            batch = {k: dist.gather_rows(v)[0] for k, v in batch.items()}
        return {k: v[mine] for k, v in batch.items()}, scored

    # --- the step's normaliser --------------------------------------------------------------

    def _valid(self, batch: dict) -> torch.Tensor:
        valid = batch["labels"][:, 1:] != -100
        if self.selection.needs_reference and "ref_loss" in batch:
            valid = valid & ~torch.isnan(batch["ref_loss"][:, 1:])
        return valid

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the step's micro-batches (with sample selection, keep the best windows of each
        candidate batch) and count, on all ranks, the tokens they will select."""
        self._step_started = time.perf_counter()
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        drawn = sum(b["input_ids"].shape[0] for b in batches)
        scored = torch.zeros(2, dtype=torch.float64)  # candidate tokens: learner, online reference
        if self.selection.samples:
            picked = [self._select_windows(b, micro) for micro, b in enumerate(batches)]
            batches = [b for b, _ in picked]
            scored = sum(s for _, s in picked)
        ratio = self.selection.ratio_at(self.state.global_step)
        valid = [self._valid(b) for b in batches]
        per_row = sum(n_keep(ratio, v.sum(-1)).sum() for v in valid)
        seen = sum((b["labels"] != -100).sum() for b in batches)  # non-padding input tokens
        if self.ref_model is not None and not self.selection.samples:  # compute_loss runs it
            scored[1] = float(seen)
        rows = sum(b["input_ids"].shape[0] for b in batches)
        local = torch.stack([*(v.sum() for v in valid), per_row, seen]).double()
        extra = torch.tensor([drawn, rows, *scored.tolist()], dtype=torch.float64)
        both = torch.cat([local.to(self.args.device), extra.to(self.args.device)])
        counts = dist.all_reduce_sum(both).cpu()  # one collective per step
        counts, (drawn, rows, learner_tokens, ref_tokens) = counts[:-4], counts[-4:].tolist()
        per_batch = counts[:-2]
        if self.selection.scope == "batch":
            n_selected = n_keep(ratio, per_batch.long()).sum()
        else:
            n_selected = counts[-2]
        if self.args.include_num_input_tokens_seen == "no":  # else the Trainer counts them
            self.state.num_input_tokens_seen += int(counts[-1])
        for key, value in (
            ("candidate_windows", drawn),
            ("windows_trained", rows),
            ("tokens_trained", counts[-1]),
            ("candidate_tokens", learner_tokens),
            ("ref_tokens", ref_tokens),
        ):
            self._counters[key] += int(value)
        return batches, n_selected.to(device=self.args.device, dtype=torch.float32)

    # --- the loss -----------------------------------------------------------------------------

    def _reference_losses(self, inputs: dict, targets: torch.Tensor) -> torch.Tensor | None:
        if not self.selection.needs_reference:
            return None
        if "ref_loss" in inputs:  # aligned with the targets like them: shifted, NaN-padded
            return F.pad(inputs["ref_loss"][:, 1:], (0, 1), value=float("nan"))
        with torch.inference_mode():
            # use_cache=False: no key/value cache to build for a single scoring pass
            logits = self.ref_model(input_ids=inputs["input_ids"], use_cache=False).logits
            ref = token_losses(logits, targets)
        return ref.clone()  # a normal tensor again, outside inference mode

    def _world_select(self, scores, valid, ratio, scope):
        """Rank this micro-batch together with the same micro-batch on every other rank."""
        both, mine = dist.gather_rows(torch.stack([scores.float(), valid.float()], dim=-1))
        return select_topk(both[..., 0], both[..., 1].bool(), ratio, scope)[mine]  # one gather

    def _next_micro(self) -> tuple[int, int]:
        step, micro = self._micro
        self._micro = (self.state.global_step, micro + 1 if step == self.state.global_step else 0)
        return self._micro

    def _generator(self) -> torch.Generator:
        """Random scores seeded by (seed, step, micro-batch, rank): reproducible on resume."""
        key = (self.args.seed, *self._micro, dist.rank())  # a tuple of ints hashes the same always
        return torch.Generator().manual_seed(hash(key) & 0x7FFFFFFF)

    def _dump(self, name: str, **arrays: torch.Tensor) -> None:
        import numpy as np

        out = Path(os.environ[DUMP_ENV])
        out.mkdir(parents=True, exist_ok=True)
        step = self.state.global_step
        np.savez(
            out / f"step{step:05d}-{name}.npz", **{k: v.cpu().numpy() for k, v in arrays.items()}
        )

    def _dump_selection(self, input_ids: torch.Tensor, selected: torch.Tensor) -> None:
        self._dump(
            f"micro{self._micro[1]}-rank{dist.rank()}", input_ids=input_ids, selected=selected
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "ref_loss")}
        outputs = model(**model_inputs)
        # logits[:, t] predicts labels[:, t + 1]. Shift the labels, not the logits: the targets
        # end in an ignored column, so the (B, T, V) logits are used whole (slicing them would
        # copy them in forward and backward, ~10% of a small model's step).
        logits, targets = outputs.logits, F.pad(labels[:, 1:], (0, 1), value=-100)
        if not model.training:  # evaluation: plain mean cross-entropy over every target
            loss = selective_mean(token_losses(logits, targets), targets != -100)
            return (loss, outputs) if return_outputs else loss

        self._next_micro()
        token_mode = self.selection.tokens
        world = dist.world_size()
        batch_scope = self.selection.scope == "batch" and world > 1
        result = slm_loss(
            logits,
            targets,
            ref_loss=self._reference_losses(inputs, targets),
            ratio=self.selection.ratio_at(self.state.global_step),
            score=self.selection.score if token_mode else "learner",
            scope=self.selection.scope,
            generator=self._generator() if self.selection.score == "random" else None,
            # DDP averages gradients over ranks; scale so the sum over ranks is the step's mean.
            normalizer=None if num_items_in_batch is None else num_items_in_batch / world,
            select=self._world_select if token_mode and batch_scope else None,
        )
        if os.environ.get(DUMP_ENV):
            self._dump_selection(inputs["input_ids"], result.selected[:, :-1])
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
            if self.selection.needs_reference:
                logs["excess_mean"] = stats["excess_mean"]
            # global_step already counts the step just taken: log the ratio that step used
            logs["ratio"] = self.selection.ratio_at(max(self.state.global_step - 1, 0))
            self._sums = None
        logs["tokens_seen"] = int(self.state.num_input_tokens_seen)
        logs.update(self.compute_logs())
        super().log(logs, start_time)

    def compute_logs(self) -> dict:
        """The run's cumulative compute so far (see the module docstring)."""
        c = self._counters
        return {
            "candidate_windows": c["candidate_windows"],
            "windows_trained": c["windows_trained"],
            "flops_train": 6 * self._n_params * c["tokens_trained"],
            "flops_candidates": 2 * self._n_params * c["candidate_tokens"],
            "flops_ref_online": 2 * self._n_ref_params * c["ref_tokens"],
            "train_seconds": round(c["train_seconds"], 3),
        }

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """The Trainer's; the compute counters restart, or continue from the checkpoint's."""
        self._counters = {**dict.fromkeys(COUNTERS, 0), "train_seconds": 0.0}
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint and (Path(checkpoint) / COMPUTE_FILE).exists():
            self._counters.update(json.loads((Path(checkpoint) / COMPUTE_FILE).read_text()))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            with open(Path(output_dir) / OPTIONS_FILE, "w") as f:
                json.dump(self.rho_options, f, indent=2, sort_keys=True)
            with open(Path(output_dir) / COMPUTE_FILE, "w") as f:
                json.dump(self._counters, f, indent=2)


# --- The stage: `rho train` -------------------------------------------------------------------


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
        default=None, metadata={"help": "window length (default: the LossStore's, else 256)"}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code"})


def build_trainer(
    data: ModelDataArguments, selection: SelectionArguments, args: TrainingArguments
) -> SelectiveTrainer:
    """Open the stores, build or load the models, check they fit together, make the trainer."""
    from rho.data import WindowCollator, WindowDataset
    from rho.models import build_model, check_vocab, load_model
    from rho.store import LossStore, TokenStore

    if (data.model is None) == (data.preset is None):
        raise UserError("give exactly one of --model and --preset")
    tokens = TokenStore(data.tokens)
    losses = LossStore(data.ref_losses) if data.ref_losses else None
    seq_len = data.seq_len or (losses.seq_len if losses else 256)
    if data.ref_losses and data.ref_model:
        raise UserError("give one of --ref_losses (offline) and --ref_model (online), not both")
    if selection.needs_reference and losses is None and data.ref_model is None:
        raise UserError(
            f"--selection {selection.selection} with --score {selection.score} needs "
            "--ref_losses or --ref_model"
        )
    train_set = WindowDataset(tokens, seq_len, losses if selection.needs_reference else None)
    eval_set = None
    if data.eval_tokens:
        eval_store = TokenStore(data.eval_tokens)
        if eval_store.meta.get("tokenizer_hash") != tokens.meta.get("tokenizer_hash"):
            raise UserError(f"{data.eval_tokens} was tokenized with another tokenizer")
        eval_set = WindowDataset(eval_store, seq_len)

    tokenizer = tokens.tokenizer()
    if data.model:
        model = load_model(data.model, trust_remote_code=data.trust_remote_code)
    else:
        model = build_model(data.preset, tokens.vocab_size, seed=args.seed, max_positions=seq_len)
    check_vocab(model, tokens.vocab_size, "the training model")
    ref_model = None
    if data.ref_model and selection.needs_reference and losses is None:
        ref_model = load_model(data.ref_model, trust_remote_code=data.trust_remote_code)
        check_vocab(ref_model, tokens.vocab_size, "the reference model")
        check_same_vocabulary(data.ref_model, tokenizer)

    trainer = SelectiveTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=WindowCollator(seq_len, pad_id=tokens.eos_id),
        processing_class=tokenizer,
        selection=selection,
        ref_model=ref_model,
    )
    trainer.rho_options.update(data=asdict(data), seq_len=seq_len)
    return trainer


def check_same_vocabulary(ref_dir: str, tokenizer) -> None:
    """An online reference saved with its tokenizer must use the training vocabulary."""
    path = Path(ref_dir)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the reference model {ref_dir} uses another tokenizer's vocabulary")


def train(data: ModelDataArguments, selection: SelectionArguments, args: TrainingArguments):
    """Train, save the final model (with tokenizer and rho options) to output_dir, return the
    trainer."""
    trainer = build_trainer(data, selection, args)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    return trainer


def cli(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelDataArguments, SelectionArguments, TrainingArguments))
    parser.prog = "rho train"
    wants_help = "-h" in argv or "--help" in argv
    if not wants_help and not any(a.startswith(("--output_dir", "--output-dir")) for a in argv):
        raise UserError("--output_dir is required (where checkpoints and metrics go)")
    data, selection, args = parser.parse_args_into_dataclasses(args=argv)
    if args.resume_from_checkpoint and not os.path.isdir(args.resume_from_checkpoint):
        raise UserError(f"checkpoint {args.resume_from_checkpoint} does not exist")
    trainer = train(data, selection, args)
    if trainer.is_world_process_zero():
        print(f"rho train: model, tokenizer and {METRICS_FILE} in {args.output_dir}")
    return 0
