"""`rho score`: reference model x TokenStore -> LossStore (rho.scoring.score)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers.utils import logging as hf_logging

from rho import distributed as dist
from rho.commands.parser import DEVICE, Command
from rho.models import DTYPES
from rho.scoring.score import score_store
from rho.selection.output_layer import LOSS_IMPL_HELP, LOSS_IMPLS
from rho.training.options import option


@dataclass
class ScoreOptions:
    """Score every token of a TokenStore with a reference model."""

    model: str = option("model directory or hub name")
    tokens: str = option("TokenStore directory")
    out: str = option("LossStore directory to write (or resume)")
    seq_len: int = option("window length in tokens")
    batch_size: int = option("windows per forward pass", 16)
    dtype: str = option("scoring precision", "float32", choices=tuple(DTYPES))
    device: str | None = option(DEVICE, None)
    overwrite: bool = option("replace an existing --out", False)
    entropy: bool = option(
        "also store the entropy of the reference's next-token distribution for every token "
        "(ref_entropy.npy; needed by --score reference-entropy and reference+entropy)",
        False,
    )
    loss_impl: str = option(LOSS_IMPL_HELP, "auto", choices=LOSS_IMPLS)
    trust_remote_code: bool = option("allow model code", False)
    allow_missing_weights: bool = option(
        "score with a model whose files lack some weights (left at their initial values)", False
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
            loss_impl=options.loss_impl,
            trust_remote_code=options.trust_remote_code,
            allow_missing_weights=options.allow_missing_weights,
        )
    return 0


COMMAND = Command((ScoreOptions,), main)
