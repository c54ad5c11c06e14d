"""Corpus files -> TokenStore: read documents, train or load a tokenizer, pack tokens with EOS.

Inputs: ``.txt`` (one document per file), ``.jsonl`` / ``.jsonl.gz`` (one document per line, text
under ``text_field``; an optional ``domain`` string and ``noise_spans`` list of [start, end)
character spans per line), ``.parquet`` (a text column), or a directory written by HF
``datasets.save_to_disk``. Globs are expanded.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing
import os
import tempfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rho.errors import UserError
from rho.store import (
    TokenStore,
    one_line,
    remove_path,
    sha256_file,
    smallest_token_dtype,
    write_token_store,
)

EOS_TOKEN = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call (the fast tokenizer threads within a call)


@dataclass
class Document:
    text: str
    domain: str | None = None
    noise_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Source:
    path: Path
    domain: str | None = None


# --- Reading documents ----------------------------------------------------------------------------


def expand_inputs(inputs: list[str], domains: list[str] | None = None) -> list[Source]:
    """Expand globs; pair each input with its domain (one --domain for all, or one per input)."""
    domains = list(domains or [])
    if domains and len(domains) not in (1, len(inputs)):
        raise UserError(f"give one --domain for all inputs or one per input ({len(inputs)})")
    sources = []
    for i, pattern in enumerate(inputs):
        domain = domains[0] if len(domains) == 1 else (domains[i] if domains else None)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"no input matches {pattern!r}")
        for match in matches:
            path = Path(match)
            if not path.exists():
                raise UserError(f"input {path} does not exist")
            if not os.access(path, os.R_OK):
                raise UserError(f"input {path} is not readable")
            sources.append(Source(path, domain))
    if not sources:
        raise UserError("no inputs given")
    return sources


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: text is not valid UTF-8 (byte {err.start})") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(_decode(raw, path, number))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise UserError(f"{path}:{number}: no {text_field!r} field")
                text = record[text_field]
                if not isinstance(text, str):
                    raise UserError(f"{path}:{number}: field {text_field!r} is not a string")
                domain = record.get("domain")
                if domain is not None and not isinstance(domain, str):
                    raise UserError(f"{path}:{number}: field 'domain' is not a string")
                try:
                    spans = [(int(a), int(b)) for a, b in record.get("noise_spans") or []]
                except (TypeError, ValueError):
                    raise UserError(
                        f"{path}:{number}: 'noise_spans' must be a list of [start, end] pairs"
                    ) from None
                yield Document(text, domain, spans)
    except (OSError, EOFError, zlib.error) as err:  # also a corrupted or truncated .gz
        raise UserError(f"{path}: cannot read ({one_line(err)})") from None


def _read_table(path: Path, text_field: str) -> Iterator[Document]:
    """A parquet file, or a directory saved by HF datasets (first split if a DatasetDict)."""
    import pyarrow as pa

    if path.is_dir():
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a bad directory
            raise UserError(
                f"{path}: not a dataset saved with save_to_disk ({one_line(err, 120)})"
            ) from None
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else data[next(iter(data))]
        if text_field not in data.column_names:
            raise UserError(f"{path}: no {text_field!r} column (has {data.column_names})")
        batches = (batch[text_field] for batch in data.iter(batch_size=1024))
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as err:
            raise UserError(f"{path}: not a readable parquet file ({one_line(err, 120)})") from None
        if text_field not in table.schema_arrow.names:
            raise UserError(f"{path}: no {text_field!r} column (has {table.schema_arrow.names})")
        batches = (
            b.column(0).to_pylist()
            for b in table.iter_batches(batch_size=1024, columns=[text_field])
        )
    try:
        for batch in batches:
            for text in batch:
                if text is not None and not isinstance(text, str):
                    raise UserError(f"{path}: column {text_field!r} is not text")
                if text is not None:
                    yield Document(text)
    except (OSError, pa.ArrowException) as err:  # a damaged file fails while reading batches
        raise UserError(f"{path}: cannot read ({one_line(err, 120)})") from None


def read_documents(source: Source, text_field: str = "text") -> Iterator[Document]:
    path, name = source.path, source.path.name
    if path.is_dir() or name.endswith(".parquet"):
        docs = _read_table(path, text_field)
    elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        docs = _read_jsonl(path, text_field)
    elif name.endswith((".txt", ".md")):
        try:
            docs = iter([Document(_decode(path.read_bytes(), path))])
        except OSError as err:
            raise UserError(f"{path}: cannot read ({one_line(err)})") from None
    else:
        raise UserError(f"{path}: unsupported input (use .txt, .jsonl, .parquet or a dataset dir)")
    for doc in docs:
        if doc.text.strip():
            doc.domain = source.domain or doc.domain
            yield doc


def iter_documents(sources: list[Source], text_field: str = "text") -> Iterator[Document]:
    for source in sources:
        yield from read_documents(source, text_field)


# --- Tokenizers -----------------------------------------------------------------------------------


def train_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE on ``texts`` and save it as an HF tokenizer in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if vocab_size < 300:
        raise UserError(f"--train-tokenizer needs a vocabulary of at least 300, got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    wrapped.save_pretrained(out_dir)
    # transformers 5: reload from disk; bare constructors can silently give an empty tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if len(tokenizer) < 257:
        raise RuntimeError(f"trained tokenizer in {out_dir} came back empty")
    return tokenizer


def load_tokenizer(name_or_dir: str | Path):
    from transformers import AutoTokenizer

    name = str(name_or_dir)
    # A path that is not there would otherwise be tried as a hub name (network, slow, confusing).
    if not Path(name).exists() and (Path(name).is_absolute() or name.startswith(".")):
        raise UserError(f"tokenizer directory {name} does not exist")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError, KeyError) as err:
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


def _encode(tok, texts: list[str], spans: list[list], dtype: np.dtype) -> list[tuple]:
    """(ids with EOS appended, noise marks or None) per text; marks only for texts with spans."""
    encoded = tok(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=any(spans),
        verbose=False,
    )
    result = []
    for i, ids in enumerate(encoded["input_ids"]):
        marks = None
        if spans[i]:
            marks = _token_noise(encoded["offset_mapping"][i], spans[i], len(texts[i]))
            marks = np.append(marks, False)  # EOS is never noise
        # An id that does not fit the dtype raises OverflowError here, never wraps silently.
        result.append((np.asarray([*ids, tok.eos_token_id], dtype=dtype), marks))
    return result


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    from transformers import AutoTokenizer

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
) -> TokenStore:
    """Tokenize corpus files into a TokenStore at ``out``. Exactly one of ``tokenizer`` (an HF
    tokenizer dir or name) and ``train_vocab`` (train a byte-level BPE of that size) is needed.
    ``workers`` > 1 encodes batches of documents in that many processes (same store)."""
    out = Path(out)
    if (tokenizer is None) == (train_vocab is None):
        raise UserError("give exactly one of --tokenizer and --train-tokenizer")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    sources = expand_inputs(inputs, domains)
    if next(iter_documents(sources, text_field), None) is None:  # before any costly work
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch space beside the output (same filesystem: no copy through a small /tmp), removed
    # whatever happens.
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.work-"))
    try:
        return _tokenize(
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
        "--train-tokenizer", type=int, metavar="VOCAB", help="train a byte-level BPE of this size"
    )
    parser.add_argument(
        "--domain", action="append", help="domain label: once for all inputs, or once per input"
    )
    parser.add_argument("--text-field", default="text", help="jsonl/parquet text field")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that encode documents (default 1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    store = tokenize_corpus(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        train_vocab=args.train_tokenizer,
        domains=args.domain,
        text_field=args.text_field,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    from rho.store import describe

    print(describe(store.path))
    return 0
