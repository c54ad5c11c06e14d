"""`rho train`: open the stores, build or load the models, check that everything fits together,
and run a SelectiveTrainer (plain CLM, SLM, online RHO-LOSS) into a run directory (rho.runs)."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from rho import distributed as dist
from rho.data import WindowCollator, WindowDataset
from rho.errors import UserError
from rho.files import check_not_input, output_lock
from rho.loss_writer import check_finite_share
from rho.models import build_model, load_model
from rho.options import DEFAULT_SEQ_LEN, ModelDataArguments
from rho.runs import prepare_run_dir
from rho.store import LossStore, TokenStore
from rho.trainer import SelectiveTrainer, SelectiveTrainingArguments
from rho.windows import check_positions


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


def distributed_facts(trainer) -> dict:
    """How a finished run was spread over processes (recorded in rho_options.json): the world
    size, the wrapper around the model, and DDP's find_unused_parameters when it was DDP."""
    wrapped = trainer.model_wrapped
    return {
        "world_size": trainer.args.world_size,
        "wrapper": type(wrapped).__name__,
        "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
    }


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
    from rho.options import check_training_arguments  # NaN rates, 0 batch or accumulation ...

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
    if losses is not None and args.needs_reference:
        losses.check_matches(tokens, seq_len)  # before reading it against the tokens' mask
        # recorded when the store was finished (no pass over every value at start-up), over the
        # loss positions of a masked store; a store without the record is read through once
        where = str(losses.path)
        check_finite_share(losses.finite_fraction(tokens), where)
        if args.needs_entropy:
            check_finite_share(losses.finite_fraction(tokens, "entropies"), where, "entropies")
    train_set = WindowDataset(
        tokens,
        seq_len,
        losses if args.needs_reference else None,
        entropy=args.needs_entropy,
    )
    eval_set = None
    if data.eval_tokens:
        eval_store = TokenStore(data.eval_tokens)
        if eval_store.meta.get("tokenizer_hash") != tokens.meta.get("tokenizer_hash"):
            raise UserError(f"{data.eval_tokens} was tokenized with another tokenizer")
        eval_set = WindowDataset(eval_store, seq_len)

    tokenizer = tokens.tokenizer()
    if data.model:
        model = load_model(
            data.model,
            trust_remote_code=data.trust_remote_code,
            allow_missing_weights=allow_missing_weights,
        )
    else:
        model = build_model(data.preset, tokens.vocab_size, seed=args.seed, max_positions=seq_len)
    tokens.check_model_vocab(model, "the training model")
    if data.eval_tokens:
        eval_store.check_model_vocab(model, "the training model")
    check_positions(model, seq_len, "--seq_len")
    ref_model = None
    if data.ref_model and args.needs_reference and losses is None:
        ref_model = load_model(
            data.ref_model,
            trust_remote_code=data.trust_remote_code,
            allow_missing_weights=allow_missing_weights,
        )
        tokens.check_model_vocab(ref_model, "the reference model")
        check_same_vocabulary(data.ref_model, tokenizer)

    trainer = SelectiveTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=WindowCollator(seq_len, pad_id=tokens.eos_id),
        processing_class=tokenizer,
        ref_model=ref_model,
    )
    if ref_model is not None:  # after the trainer's checks that it is not the learner
        check_positions(ref_model, seq_len, "--seq_len")
    trainer.rho_options.update(data=asdict(data), seq_len=seq_len)
    return trainer


def run_training(
    data: ModelDataArguments,
    args: SelectiveTrainingArguments,
    run: RunDirArguments | None = None,
) -> SelectiveTrainer:
    """Train, save the final model (with tokenizer and rho options) to output_dir, evaluate if
    there is a held-out store; return the trainer. Rank 0 holds the run directory's lock.

    The run directory follows ``rho.runs.prepare_run_dir``: new, or a rho run continued with
    ``--resume_from_checkpoint`` (a whole checkpoint, or ``last``) or replaced with
    ``--overwrite``; never someone else's directory."""
    run = run or RunDirArguments()
    check_output_dir(data, args.output_dir)  # before the lock: no lock file inside an input
    rank0 = dist.rank_from_env() == 0
    with output_lock(args.output_dir) if rank0 else contextlib.nullcontext():
        where = (args.output_dir, args.resume_from_checkpoint, run.overwrite, model_inputs(data))
        resume = prepare_run_dir(*where, writer=rank0, commit=False)  # refusals before any work
        trainer = build_trainer(data, args, run.allow_missing_weights)
        if rank0:  # every input checked: now make, clear or cut back the run directory
            prepare_run_dir(*where, commit=True)
        trainer.train(resume_from_checkpoint=resume)
        trainer.rho_options["distributed"] = distributed_facts(trainer)
        trainer.save_model()
        if trainer.eval_dataset is not None:
            trainer.evaluate()
    return trainer
