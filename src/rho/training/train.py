"""`rho train`: open the stores, build or load the models, check that everything fits together,
and run a SelectiveTrainer (plain CLM, SLM, online RHO-LOSS) into a run directory
(rho.training.runs)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from rho import distributed as dist
from rho.data.batches import WindowCollator, WindowDataset
from rho.errors import UserError
from rho.io.files import check_not_input, output_lock
from rho.io.schema import validate
from rho.io.store import LossStore, TokenStore
from rho.models import build_model, load_model
from rho.scoring.loss_writer import check_finite_share
from rho.scoring.windows import check_positions
from rho.training.options import DEFAULT_SEQ_LEN, ModelDataArguments
from rho.training.run_options import (
    VERSION,
    DataOptions,
    DistributedFacts,
    RunOptions,
    architecture,
    check_continues,
)
from rho.training.runs import prepare_run_dir
from rho.training.trainer import SelectiveTrainer, SelectiveTrainingArguments


@dataclass
class RunDirArguments:
    """What `rho train` may do to an existing --output_dir, and to an incomplete model."""

    overwrite: bool = field(
        default=False,
        metadata={"help": "replace a run directory rho made (never any other directory)"},
    )
    allow_missing_weights: bool = field(
        default=False,
        metadata={"help": "train a --model / --ref_model whose files lack some weights"},
    )


def check_same_vocabulary(ref_dir: str, tokenizer) -> None:
    """An online reference saved with its tokenizer must use the training vocabulary."""
    path = Path(ref_dir)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return
    if AutoTokenizer.from_pretrained(path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"the reference model {ref_dir} uses another tokenizer's vocabulary")


def check_output_dir(data: ModelDataArguments, output_dir: str) -> None:
    """The run directory may not be, hold or sit inside any input store or model."""
    check_not_input(output_dir, model_inputs(data), "--output_dir")
    if Path(output_dir).is_file():
        raise UserError(f"--output_dir {output_dir} is a file, not a directory")


def check_sharding(args: SelectiveTrainingArguments) -> None:
    """--fsdp where accelerate cannot shard is refused: accelerate turns FSDP on only for GPUs
    and other accelerators, so on the CPU the run would silently train as plain DDP."""
    if args.fsdp and args.device.type in ("cpu", "mps"):
        raise UserError(
            f"--fsdp cannot shard on {args.device.type}: accelerate applies FSDP only on GPUs "
            "(and other accelerators), so this run would train as plain DDP with every "
            "parameter on every rank; drop --fsdp"
        )


def distributed_facts(trainer) -> DistributedFacts:
    """How a finished run was spread over processes (recorded in rho_options.json): the world
    size, the wrapper around the model, and DDP's find_unused_parameters when it was DDP."""
    wrapped = trainer.model_wrapped
    return DistributedFacts(
        world_size=trainer.args.world_size,
        wrapper=type(wrapped).__name__,
        find_unused_parameters=getattr(wrapped, "find_unused_parameters", None),
    )


def model_inputs(data: ModelDataArguments) -> list:
    """Every input of a run the run directory may not overlap."""
    model = data.model if data.model and Path(data.model).exists() else None
    return [data.tokens, data.ref_losses, data.eval_tokens, data.ref_model, model]


def build_trainer(
    data: ModelDataArguments,
    args: SelectiveTrainingArguments,
    allow_missing_weights: bool = False,
) -> SelectiveTrainer:
    """Open the stores, build or load the models, check they fit together, make the trainer
    (``args`` holds the selection options)."""
    if (data.model is None) == (data.preset is None):
        raise UserError("give exactly one of --model and --preset")
    if data.ref_losses and data.ref_model:
        raise UserError("give one of --ref_losses (offline) and --ref_model (online), not both")
    from rho.training.options import (
        check_training_arguments,  # NaN rates, 0 batch or accumulation ...
    )

    check_training_arguments(args)
    check_sharding(args)
    check_output_dir(data, args.output_dir)
    tokens = TokenStore(data.tokens)
    losses = LossStore(data.ref_losses) if data.ref_losses else None
    seq_len = data.seq_len or (losses.seq_len if losses else DEFAULT_SEQ_LEN)
    offline, online = losses is not None, data.ref_model is not None
    args.check_references(offline, online, entropy=offline)
    if args.needs_entropy:
        losses.require_entropy(f"--score {args.score}")
    train_set, eval_set = datasets(data, args, tokens, losses, seq_len)
    stores = [tokens] + ([eval_set.tokens] if eval_set is not None else [])
    model, ref_model = models(data, args, stores, seq_len, allow_missing_weights)
    trainer = SelectiveTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=WindowCollator(seq_len, pad_id=tokens.eos_id),
        processing_class=tokens.tokenizer(),
        ref_model=ref_model,
    )
    if ref_model is not None:  # after the trainer's checks that it is not the learner
        check_positions(ref_model, seq_len, "--seq_len")
    trainer.rho_options = run_record(trainer, data, losses, seq_len)
    return trainer


def run_record(trainer, data: ModelDataArguments, losses, seq_len: int) -> RunOptions:
    """rho_options.json of the run: its options, and what a resume must continue (the
    tokens', the reference losses' and the model's identity)."""
    reads_losses = losses is not None and trainer.args.needs_reference
    return RunOptions(
        version=VERSION,
        selection=trainer.rho_options.selection,
        data=validate(DataOptions, paths_as_text(asdict(data)), "the training options"),
        seq_len=seq_len,
        tokens_hash=trainer.train_dataset.tokens.meta["content_hash"],
        ref_losses_hash=losses.meta.get("loss_hash") if reads_losses else None,
        architecture=architecture(trainer.model),
        loss_impl=trainer.rho_options.loss_impl,
    )


def paths_as_text(options: dict) -> dict:
    """Options given from Python may hold Paths; the record holds their text."""
    return {k: str(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}


def datasets(data: ModelDataArguments, args, tokens: TokenStore, losses, seq_len: int) -> tuple:
    """The training windows (with the reference's values the selection reads) and the
    held-out windows (None without --eval_tokens)."""
    if losses is not None and args.needs_reference:
        losses.check_matches(tokens, seq_len)  # before reading it against the tokens' mask
        # recorded when the store was finished (no pass over every value at start-up), over the
        # loss positions of a masked store; a store without the record is read through once
        where = str(losses.path)
        check_finite_share(losses.finite_fraction(tokens), where)
        if args.needs_entropy:
            check_finite_share(losses.finite_fraction(tokens, "entropies"), where, "entropies")
    reference = losses if args.needs_reference else None
    train_set = WindowDataset(tokens, seq_len, reference, entropy=args.needs_entropy)
    if not data.eval_tokens:
        return train_set, None
    eval_store = TokenStore(data.eval_tokens)
    if eval_store.meta.get("tokenizer_hash") != tokens.meta.get("tokenizer_hash"):
        raise UserError(f"{data.eval_tokens} was tokenized with another tokenizer")
    return train_set, WindowDataset(eval_store, seq_len)


def models(data: ModelDataArguments, args, stores: list, seq_len: int, allow_missing: bool):
    """The model to train (loaded, or built from --preset) and the online reference (None
    unless the selection reads one and no LossStore gives its losses); ``stores``: the
    training TokenStore, then the held-out one if any."""
    tokens = stores[0]
    load = dict(trust_remote_code=data.trust_remote_code, allow_missing_weights=allow_missing)
    if data.model:
        model = load_model(data.model, **load)
    else:
        model = build_model(data.preset, tokens.vocab_size, seed=args.seed, max_positions=seq_len)
    for store in stores:
        store.check_model_vocab(model, "the training model")
    check_positions(model, seq_len, "--seq_len")
    if not (data.ref_model and args.needs_reference and not data.ref_losses):
        return model, None
    ref_model = load_model(data.ref_model, **load)
    tokens.check_model_vocab(ref_model, "the reference model")
    check_same_vocabulary(data.ref_model, tokens.tokenizer())
    return model, ref_model


def run_training(
    data: ModelDataArguments,
    args: SelectiveTrainingArguments,
    run: RunDirArguments | None = None,
) -> SelectiveTrainer:
    """Train, save the final model (with tokenizer and rho options) to output_dir, evaluate if
    there is a held-out store; return the trainer. Rank 0 holds the run directory's lock.

    The run directory follows ``rho.training.runs.prepare_run_dir``: new, or a rho run continued
    with
    ``--resume_from_checkpoint`` (a whole checkpoint, or ``last``) or replaced with
    ``--overwrite``; never someone else's directory."""
    run = run or RunDirArguments()
    check_output_dir(data, args.output_dir)  # before the lock: no lock file inside an input
    rank0 = dist.rank_from_env() == 0
    with output_lock(args.output_dir) if rank0 else contextlib.nullcontext():
        where = (args.output_dir, args.resume_from_checkpoint, run.overwrite, model_inputs(data))
        resume = prepare_run_dir(*where, writer=rank0, commit=False)  # refusals before any work
        trainer = build_trainer(data, args, run.allow_missing_weights)
        if resume:  # every rank: each would otherwise train on what the checkpoint did not
            check_continues(resume, trainer.rho_options)
        if rank0:  # every input checked: now make, clear or cut back the run directory
            prepare_run_dir(*where, commit=True)
        trainer.train(resume_from_checkpoint=resume)
        trainer.rho_options.distributed = distributed_facts(trainer)
        trainer.save_model()
        if trainer.eval_dataset is not None:
            trainer.evaluate()
    return trainer
