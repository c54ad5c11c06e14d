"""`rho tokenize`: documents (rho.corpus) -> TokenStore: train or load a tokenizer, encode
(long documents in pieces, optionally in worker processes), pack tokens with EOS after each
document. ``--format messages`` (chat conversations with a loss mask) is rho.chat's stage."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rho.corpus import Document, expand_inputs, iter_documents
from rho.errors import UserError
from rho.files import (
    check_not_input,
    check_replaceable,
    clean_stale_scratch,
    one_line,
    output_lock,
    remove_path,
    sha256_file,
)
from rho.inspect_store import describe
from rho.options import check_output_path
from rho.store import TOKEN_STORE, TokenStore, smallest_token_dtype, write_token_store

EOS_TOKEN = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call (the fast tokenizer threads within a call)
PIECE_CHARS = 1 << 16  # longer documents are encoded in pieces of about this many characters
MIN_TRAIN_VOCAB, MAX_TRAIN_VOCAB = 300, 1 << 20
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a lone space between words: "x| y" splits no pre-token


# --- Tokenizers -----------------------------------------------------------------------------------


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


def _token_noise(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], n_chars: int):
    """Bool per token: does its character span overlap any noise span?"""
    chars = np.zeros(n_chars + 1, dtype=np.int32)
    for a, b in spans:
        a, b = max(0, a), min(n_chars, b)
        if a < b:
            chars[a] += 1
            chars[b] -= 1
    inside = np.concatenate([[0], np.cumsum(np.cumsum(chars)[:-1] > 0)])  # prefix counts
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return inside[offsets[:, 1]] - inside[offsets[:, 0]] > 0


# --- Encoding, in this process or in worker processes ------------------------------------------


def pieces_of(text: str, size: int = PIECE_CHARS) -> list[tuple[int, int]]:
    """[start, end) character spans covering ``text``, each about ``size`` long, cut before a
    lone space between two words where there is one, so a byte-level BPE encodes the pieces
    exactly as the whole (a long document in one call can take gigabytes)."""
    spans, start = [], 0
    while len(text) - start > size:
        cut = None
        for match in _CUT.finditer(text, start + size // 2, start + size):
            cut = match.start()
        cut = cut if cut is not None else start + size
        spans.append((start, cut))
        start = cut
    spans.append((start, len(text)))
    return spans


def _encode(tok, texts: list[str], spans: list[list], dtype: np.dtype) -> list[tuple]:
    """(ids with EOS appended, noise marks or None) per text; marks only for texts with spans."""
    pieces = [(i, a, b) for i, text in enumerate(texts) for a, b in pieces_of(text)]
    ids: list[list[int]] = [[] for _ in texts]
    offsets: list[list] = [[] for _ in texts]
    want_offsets = any(spans)
    for first in range(0, len(pieces), ENCODE_BATCH):
        part = pieces[first : first + ENCODE_BATCH]
        encoded = tok(
            [texts[i][a:b] for i, a, b in part],
            add_special_tokens=False,
            return_offsets_mapping=want_offsets,
            verbose=False,
        )
        for row, (i, a, _) in enumerate(part):
            ids[i].extend(encoded["input_ids"][row])
            if spans[i]:
                offsets[i].extend((x + a, y + a) for x, y in encoded["offset_mapping"][row])
    result = []
    for i, text in enumerate(texts):
        marks = None
        if spans[i]:
            marks = np.append(_token_noise(offsets[i], spans[i], len(text)), False)  # EOS: clean
        # An id that does not fit the dtype raises OverflowError here, never wraps silently.
        result.append((np.asarray([*ids[i], tok.eos_token_id], dtype=dtype), marks))
    return result


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER_TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode_in_worker(texts: list[str], spans: list[list], dtype: np.dtype) -> list[tuple]:
    return _encode(_WORKER_TOKENIZER, texts, spans, dtype)


def _batched(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoded_batches(
    batches: Iterable[list[Document]], tok, tokenizer_dir: Path, dtype: np.dtype, workers: int
) -> Iterator[tuple[list[Document], list[tuple]]]:
    """Each batch with its encoding, in input order. With workers > 1, batches go to a pool of
    processes that each load the saved tokenizer; a bounded number are in flight (memory)."""

    def args(batch):
        return [d.text for d in batch], [d.noise_spans for d in batch], dtype

    if workers <= 1:
        for batch in batches:
            yield batch, _encode(tok, *args(batch))
        return
    # spawn, not fork: forking after the tokenizer's own threads have run can deadlock.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(tokenizer_dir),),
    )
    try:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.submit(_encode_in_worker, *args(batch))))
            if len(pending) > 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- The stage ------------------------------------------------------------------------------------


def tokenize_corpus(
    inputs: list[str],
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    train_vocab: int | None = None,
    domains: list[str] | None = None,
    text_field: str = "text",
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    format: str = "text",
) -> TokenStore:
    """Tokenize corpus files into a TokenStore at ``out``. Exactly one of ``tokenizer`` (an HF
    tokenizer dir or name) and ``train_vocab`` (train a byte-level BPE of that size) is needed.
    ``workers`` > 1 encodes batches of documents in that many processes (same store).
    ``format="messages"``: chat conversations with a loss mask (rho.chat)."""
    out = Path(out)
    if (tokenizer is None) == (train_vocab is None):
        raise UserError("give exactly one of --tokenizer and --train-tokenizer")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if train_vocab is not None:
        check_train_vocab(train_vocab)
    sources = expand_inputs(inputs, domains)
    inputs_used = [s.path for s in sources]
    if tokenizer is not None and Path(tokenizer).exists():
        inputs_used.append(Path(tokenizer))
    check_not_input(out, inputs_used)
    check_output_path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    if overwrite:
        check_replaceable(out, TOKEN_STORE)
    # The one dispatch point between plain documents and chat conversations (rho.chat).
    if format == "messages":
        from rho import chat

        stage, first = chat.tokenize_conversations, chat.first_conversation(sources)
    elif format == "text":
        stage, first = _tokenize, next(iter_documents(sources, text_field), None)
    else:
        raise UserError(f"--format must be text or messages, got {format!r}")
    if first is None:  # before any costly work
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        clean_stale_scratch(out.parent, out.name)  # left by a killed run
        # Scratch space beside the output (same filesystem: no copy through a small /tmp),
        # removed whatever happens; named like every scratch sibling, so a kill -9 leftover is
        # found and cleaned by the next run.
        prefix = f".{out.name}.tmp-{os.getpid()}-work-"
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
        try:
            return stage(
                sources, out, work, tokenizer, train_vocab, text_field, workers, overwrite, progress
            )
        finally:
            remove_path(work)


def _tokenize(sources, out, work, tokenizer, train_vocab, text_field, workers, overwrite, progress):
    if train_vocab is not None:
        texts = (doc.text for doc in iter_documents(sources, text_field))
        tok = train_tokenizer(texts, train_vocab, work / "tokenizer")
    else:
        tok = load_tokenizer(tokenizer)
        tok.save_pretrained(work / "tokenizer")
    if tok.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: documents cannot be separated")
    # Some tokenizers have ids beyond len(tok) (holes in the vocabulary): size by the largest id.
    vocab_size = max(len(tok), max(tok.get_vocab().values(), default=0) + 1)
    dtype = smallest_token_dtype(vocab_size)
    doc_lengths: list[int] = []
    doc_domains: list[int] = []
    names: dict[str, int] = {}
    n_tokens, any_noise = 0, False
    # disable=None: a bar on a terminal only, so logs and pipes get no bar spam
    bar = tqdm(desc="tokenize", unit="doc", disable=None if progress else True)
    batches = _batched(iter_documents(sources, text_field), ENCODE_BATCH)
    with open(work / "tokens.raw", "wb") as raw, open(work / "noise.raw", "wb") as noise:
        for batch, encoded in _encoded_batches(batches, tok, work / "tokenizer", dtype, workers):
            for doc, (ids, marks) in zip(batch, encoded, strict=True):
                if marks is not None and not any_noise:  # from here on, keep a per-token mask
                    any_noise = True
                    for done in range(0, n_tokens, 1 << 24):  # every earlier token is clean
                        np.zeros(min(1 << 24, n_tokens - done), dtype=bool).tofile(noise)
                if any_noise:
                    (marks if marks is not None else np.zeros(len(ids), dtype=bool)).tofile(noise)
                ids.tofile(raw)
                n_tokens += len(ids)
                doc_lengths.append(len(ids))
                doc_domains.append(names.setdefault(doc.domain or "default", len(names)))
            bar.update(len(batch))
    bar.close()
    if not doc_lengths:
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    tokens = np.memmap(work / "tokens.raw", dtype=dtype, mode="r")
    mask = np.memmap(work / "noise.raw", dtype=bool, mode="r") if any_noise else None
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)])  # a document ends right after its EOS
    domain_names = list(names)
    has_domains = domain_names != ["default"]
    store = write_token_store(
        out,
        tokens,
        offsets,
        work / "tokenizer",
        vocab_size=vocab_size,
        eos_id=tok.eos_token_id,
        doc_domains=np.asarray(doc_domains) if has_domains else None,
        domain_names=domain_names if has_domains else None,
        noise_mask=mask,
        sources=[
            {
                "path": str(s.path),
                "domain": s.domain,
                "sha256": sha256_file(s.path) if s.path.is_file() else None,
            }
            for s in sources
        ],
        overwrite=overwrite,
    )
    del tokens, mask
    return store


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rho tokenize", description="Tokenize corpus files into a TokenStore."
    )
    parser.add_argument("inputs", nargs="+", help=".txt, .jsonl[.gz], .parquet or dataset dirs")
    parser.add_argument("--out", required=True, help="TokenStore directory to write")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tokenizer", help="HF tokenizer directory or hub name")
    group.add_argument(
        "--train-tokenizer",
        dest="train_vocab",
        type=int,
        metavar="VOCAB",
        help="train a byte-level BPE of this size",
    )
    parser.add_argument(
        "--domain",
        dest="domains",
        action="append",
        help="domain label: once for all inputs, or once per input",
    )
    parser.add_argument("--text-field", default="text", help="jsonl/parquet text field")
    parser.add_argument(
        "--format",
        default="text",
        choices=("text", "messages"),
        help="text: documents; messages: chat JSONL, one {'messages': [{'role', 'content'}, "
        "...]} per line (TRL's conversational format), rendered with the tokenizer's chat "
        "template (or '<role>: content' lines without one), with a loss mask: only assistant "
        "turns carry loss",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that encode documents (default 1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    store = tokenize_corpus(**vars(args))  # the options are named like its parameters
    print(describe(store.path))
    return 0
