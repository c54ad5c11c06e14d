"""`rho score`: reference model x TokenStore -> LossStore (rho.score)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.utils import logging as hf_logging

from rho import distributed as dist
from rho.commands.parser import Command
from rho.models import DTYPES
from rho.score import score_store


@dataclass
class ScoreOptions:
    """Score every token of a TokenStore with a reference model."""

    model: str = field(metadata={"help": "model directory or hub name"})
    tokens: str = field(metadata={"help": "TokenStore directory"})
    out: str = field(metadata={"help": "LossStore directory to write (or resume)"})
    seq_len: int = field(metadata={"help": "window length in tokens"})
    batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    dtype: str = field(
        default="float32", metadata={"choices": tuple(DTYPES), "help": "scoring precision"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: best)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --out"})
    entropy: bool = field(
        default=False,
        metadata={
            "help": "also store the entropy of the reference's next-token distribution for every "
            "token (ref_entropy.npy; needed by --score reference-entropy and reference+entropy)"
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code"})
    allow_missing_weights: bool = field(
        default=False,
        metadata={
            "help": "score with a model whose files lack some weights (left at their initial "
            "values)"
        },
    )


def main(options: ScoreOptions) -> int:
    hf_logging.disable_progress_bar()  # the weight-loading bar: our own bar and summary suffice
    with dist.process_group_closed():
        score_store(
            options.model,
            options.tokens,
            options.out,
            options.seq_len,
            batch_size=options.batch_size,
            dtype=options.dtype,
            device=options.device,
            overwrite=options.overwrite,
            entropy=options.entropy,
            trust_remote_code=options.trust_remote_code,
            allow_missing_weights=options.allow_missing_weights,
        )
    return 0


COMMAND = Command((ScoreOptions,), main)
