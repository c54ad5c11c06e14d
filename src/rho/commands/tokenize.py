"""`rho tokenize`: corpus files -> TokenStore (rho.data.tokenize)."""

from __future__ import annotations

from dataclasses import dataclass

from rho import distributed as dist
from rho.commands.parser import Command
from rho.data.tokenize import tokenize_corpus
from rho.io.inspect_store import describe
from rho.training.options import option


@dataclass
class TokenizeOptions:
    """Tokenize corpus files into a TokenStore. Resumable: a rerun after a crash or kill keeps
    the chunks already encoded. Under torchrun the ranks share the chunks (every rank must see
    --out's directory)."""

    inputs: list[str] = option(".txt, .jsonl[.gz], .parquet or dataset dirs", positional=True)
    out: str = option("TokenStore directory to write")
    tokenizer: str | None = option("HF tokenizer directory or hub name", None)
    train_tokenizer: int | None = option(
        "train a byte-level BPE of this size", None, metavar="VOCAB"
    )
    domain: list[str] | None = option(
        "domain label: once for all inputs, or once per input", None, repeat=True
    )
    text_field: str = option("jsonl/parquet text field", "text")
    format: str = option(
        "text: documents; messages: chat JSONL, one {'messages': [{'role', 'content'}, ...]} per "
        "line (TRL's conversational format), rendered with the tokenizer's chat template (or "
        "'<role>: content' lines without one), with a loss mask: only assistant turns carry "
        "loss. messages runs in one process (no torchrun, --workers 1)",
        "text",
        choices=("text", "messages"),
    )
    workers: int = option(
        "processes per rank that encode chunks. Default 1, the fastest measured: the Rust "
        "tokenizer already spreads each batch over every core, and on 2 cores 2 workers were no "
        "faster (bench/bench_tokenize.py). More help only where one process's reading and "
        "packing is the bottleneck (many cores). torchrun --nproc_per_node N shares the chunks "
        "among N ranks; the store is the same either way",
        1,
    )
    overwrite: bool = option("replace an existing --out", False)


def main(options: TokenizeOptions) -> int:
    with dist.process_group_closed():
        store = tokenize_corpus(
            options.inputs,
            options.out,
            tokenizer=options.tokenizer,
            train_vocab=options.train_tokenizer,
            domains=options.domain,
            text_field=options.text_field,
            format=options.format,
            workers=options.workers,
            overwrite=options.overwrite,
        )
        if dist.rank() == 0:
            print(describe(store.path))
    return 0


COMMAND = Command((TokenizeOptions,), main)
