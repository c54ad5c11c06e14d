"""`rho train`: plain causal LM or Selective Language Modeling on transformers.Trainer.

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

Debugging: with ``RHO_DUMP_SELECTIONS=DIR`` in the environment, every training micro-batch writes
``DIR/step{S}-micro{M}-rank{R}.npz`` holding its ``input_ids`` and the ``selected`` mask (aligned
with ``input_ids[:, 1:]``); the tests use it to compare selections across process counts.
"""

from __future__ import annotations

import json
import os
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
)

SELECTIONS = ("none", "token")
OPTIONS_FILE = "rho_options.json"
METRICS_FILE = "metrics.jsonl"
DUMP_ENV = "RHO_DUMP_SELECTIONS"


@dataclass
class SelectionArguments:
    """How tokens are selected for the loss."""

    selection: str = field(
        default="token",
        metadata={"help": "none: plain causal LM (baseline; reference training); token: SLM"},
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

    @property
    def needs_reference(self) -> bool:
        return self.selection == "token" and self.score in ("excess", "reference")

    def ratio_at(self, step: int) -> float:
        """The kept fraction at an optimizer step: 1.0 falling linearly to ``ratio``."""
        if self.selection == "none":
            return 1.0
        if self.ratio_warmup_steps == 0 or step >= self.ratio_warmup_steps:
            return self.ratio
        return 1.0 - (1.0 - self.ratio) * step / self.ratio_warmup_steps


class MetricsFileCallback(TrainerCallback):
    """Append every log (training and evaluation) to output_dir/metrics.jsonl on rank 0."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(args.output_dir) / METRICS_FILE, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


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
        self.add_callback(MetricsFileCallback())

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

    # --- the step's normaliser --------------------------------------------------------------

    def _valid(self, batch: dict) -> torch.Tensor:
        valid = batch["labels"][:, 1:] != -100
        if self.selection.needs_reference and "ref_loss" in batch:
            valid = valid & ~torch.isnan(batch["ref_loss"][:, 1:])
        return valid

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the step's micro-batches and count, on all ranks, the tokens they will select."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        ratio = self.selection.ratio_at(self.state.global_step)
        valid = [self._valid(b) for b in batches]
        per_row = sum(n_keep(ratio, v.sum(-1)).sum() for v in valid)
        seen = sum((b["labels"] != -100).sum() for b in batches)  # non-padding input tokens
        local = torch.stack([*(v.sum() for v in valid), per_row, seen]).double()
        counts = dist.all_reduce_sum(local.to(self.args.device)).cpu()  # one collective per step
        per_batch = counts[:-2]
        if self.selection.scope == "batch":
            n_selected = n_keep(ratio, per_batch.long()).sum()
        else:
            n_selected = counts[-2]
        if self.args.include_num_input_tokens_seen == "no":  # else the Trainer counts them
            self.state.num_input_tokens_seen += int(counts[-1])
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

    def _dump_selection(self, input_ids: torch.Tensor, selected: torch.Tensor) -> None:
        import numpy as np

        out = Path(os.environ[DUMP_ENV])
        out.mkdir(parents=True, exist_ok=True)
        step, micro = self._micro
        np.savez(
            out / f"step{step:05d}-micro{micro}-rank{dist.rank()}.npz",
            input_ids=input_ids.cpu().numpy(),
            selected=selected.cpu().numpy(),
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
        token_mode = self.selection.selection == "token"
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
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            with open(Path(output_dir) / OPTIONS_FILE, "w") as f:
                json.dump(self.rho_options, f, indent=2, sort_keys=True)


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
            f"--selection token with --score {selection.score} needs --ref_losses or --ref_model"
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
