"""The tokenizer a TokenStore carries: an HF tokenizer loaded by name or directory, or a
byte-level BPE trained on the corpus (``--train-tokenizer``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rho.data.token_parts import pieces_of
from rho.errors import UserError
from rho.io.files import one_line

EOS_TOKEN = "<|endoftext|>"
MIN_TRAIN_VOCAB, MAX_TRAIN_VOCAB = 300, 1 << 20


def train_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE on ``texts`` and save it as an HF tokenizer in ``out_dir``."""
    check_train_vocab(vocab_size)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = (text[a:b] for text in texts for a, b in pieces_of(text))
    core.train_from_iterator(pieces, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    wrapped.save_pretrained(out_dir)
    # transformers 5: reload from disk; bare constructors can silently give an empty tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if len(tokenizer) < 257:
        raise RuntimeError(f"trained tokenizer in {out_dir} came back empty")
    return tokenizer


def check_train_vocab(vocab_size: int) -> None:
    if not MIN_TRAIN_VOCAB <= vocab_size <= MAX_TRAIN_VOCAB:
        raise UserError(
            f"--train-tokenizer needs a vocabulary of at least {MIN_TRAIN_VOCAB} and at most "
            f"{MAX_TRAIN_VOCAB:,}, got {vocab_size:,}"
        )


def load_tokenizer(name_or_dir: str | Path):
    name = str(name_or_dir)
    # A path that is not there would otherwise be tried as a hub name (network, slow, confusing).
    if not Path(name).exists() and (Path(name).is_absolute() or name.startswith(".")):
        raise UserError(f"tokenizer directory {name} does not exist")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 (tokenizers raises plain Exception for bad files)
        raise UserError(f"cannot load tokenizer {name!r}: {one_line(err, 160)}") from None


def vocab_size_of(tok) -> int:
    """The ids a store may hold: some tokenizers have ids beyond len(tok) (holes in the
    vocabulary), so sized by the largest id."""
    return max(len(tok), max(tok.get_vocab().values(), default=0) + 1)
