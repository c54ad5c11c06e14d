"""`rho tokenize`: documents (rho.data.corpus) -> TokenStore: train or load a tokenizer, encode the
corpus chunk by chunk into parts (rho.data.token_parts) on every torchrun rank and --workers
process,
then pack the parts, in input order, into one store (EOS after each document). The store is the
same for any number of processes; a killed run resumes from the chunks it finished.
``--format messages`` (chat conversations with a loss mask) is rho.chat's stage, run in one
process."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rho import distributed as dist
from rho.data import chat, token_parts
from rho.data.corpus import Source, expand_inputs, iter_documents
from rho.data.token_assembly import assemble
from rho.data.token_parts import (
    PARTS_FORMAT,
    backend_of,
    encode_slot,
    encode_slot_in_worker,
    parts_dir,
    read_plan,
)
from rho.data.tokenizer_setup import (
    check_train_vocab,
    load_tokenizer,
    train_tokenizer,
    vocab_size_of,
)
from rho.errors import UserError
from rho.io.disk import check_output_path, disk_error_message
from rho.io.files import (
    building,
    check_not_input,
    check_replaceable,
    clean_stale_scratch,
    output_lock,
    remove_path,
    write_json_atomic,
)
from rho.io.reading import hash_dir, sha256_file
from rho.io.store import (
    TOKEN_STORE,
    TokenStore,
    smallest_token_dtype,
    tokenizer_hash,
    write_token_store,
)

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
    Under torchrun the ranks share the chunks (every rank must see ``out``'s directory: one
    machine or a shared filesystem); ``workers`` > 1 encodes in that many processes per rank.
    The store is the same either way, and a rerun after a crash resumes.
    ``format="messages"``: chat conversations with a loss mask (rho.data.chat), in one process."""
    out = Path(out)
    sources = _checked_sources(inputs, out, tokenizer, train_vocab, domains, workers, overwrite)
    # The one dispatch point between plain documents and chat conversations (rho.data.chat).
    if format == "messages":
        return _tokenize_conversations(
            sources, out, tokenizer, train_vocab, text_field, workers, overwrite, progress
        )
    if format != "text":
        raise UserError(f"--format must be text or messages, got {format!r}")
    if next(iter_documents(sources, text_field), None) is None:  # before any costly work
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    out.parent.mkdir(parents=True, exist_ok=True)
    dist.init_from_env()
    rank0 = dist.rank() == 0
    with output_lock(out) if rank0 else contextlib.nullcontext():
        try:
            return _tokenize(
                sources, out, tokenizer, train_vocab, text_field, workers, overwrite, progress
            )
        except UserError as err:  # bad input: no part is worth resuming
            if rank0 and getattr(err, "bad_input", True):
                remove_path(parts_dir(out))
            raise
        except Exception as err:
            refused = disk_error_message(err, out)
            if refused is None or not rank0:
                raise
            remove_path(parts_dir(out))  # kept, they would hold the full disk full
            raise UserError(f"{refused}; the partial parts were removed") from None


def _checked_sources(inputs, out: Path, tokenizer, train_vocab, domains, workers, overwrite):
    """The inputs' sources, once the options and the output are checked (before any work)."""
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
    return sources


def _tokenize_conversations(
    sources, out, tokenizer, train_vocab, text_field, workers, overwrite, progress
) -> TokenStore:
    """``--format messages``: rho.chat's stage, in this one process (its conversations and loss
    mask do not go through the parts that torchrun ranks share), with scratch space beside the
    output."""
    if text_field != "text":
        raise UserError(
            f"--format messages reads the {chat.MESSAGES_FIELD!r} field: drop --text-field"
        )
    if workers != 1:
        raise UserError("--format messages encodes in one process: drop --workers")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank says so: none waits
        raise UserError("--format messages encodes in one process: run it without torchrun")
    if chat.first_conversation(sources) is None:  # before any costly work
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        clean_stale_scratch(out.parent, out.name)  # left by a killed run
        # Named like every scratch sibling, so a kill -9 leftover is cleaned by the next run.
        prefix = f".{out.name}.tmp-{os.getpid()}-work-"
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
        try:
            if train_vocab is not None:  # a trained tokenizer has no template: train on its text
                tok = train_tokenizer(chat.plain_texts(sources), train_vocab, work / "tokenizer")
            else:
                tok = load_tokenizer(tokenizer)
                tok.save_pretrained(work / "tokenizer")
            store = chat.tokenize_conversations(sources, out, work, tok, overwrite, progress)
        finally:
            remove_path(work)
        remove_path(parts_dir(out))  # a killed plain run's parts for this output: replaced now
        return store


def _tokenize(sources, out, tokenizer, train_vocab, text_field, workers, overwrite, progress):
    parts = parts_dir(out)
    dist.checked(lambda: _prepare(sources, out, tokenizer, train_vocab, text_field))  # rank 0
    plan = read_plan(parts)
    n_chunks, encoded, reused = dist.checked(
        lambda: _encode(parts, sources, text_field, plan, workers, progress), everywhere=True
    )
    encoded, reused = dist.all_reduce_sum(torch.tensor([encoded, reused])).tolist()
    summary = {}
    dist.checked(lambda: summary.update(_assemble(out, parts, plan, n_chunks, overwrite)))
    if dist.rank() == 0 and progress:
        processes = dist.world_size() * workers
        print(
            f"tokenized {summary['n_docs']:,} documents into {summary['n_tokens']:,} tokens: "
            f"{n_chunks:,} chunks on {processes} process{'es' * (processes > 1)}"
            + (f", {reused:,} of them kept from an interrupted run" if reused else "")
        )
    return TokenStore(out)


def _prepare(sources, out, tokenizer, train_vocab, text_field) -> None:
    """Rank 0: the parts directory a run writes into: an unfinished one of the same inputs,
    tokenizer and chunking to resume (its half-written parts dropped), or a fresh one with the
    tokenizer saved (or trained) and the plan every slot follows."""
    parts = parts_dir(out)
    clean_stale_scratch(out.parent, out.name)  # left by a killed run
    clean_stale_scratch(parts.parent, parts.name)
    key = {
        "format": PARTS_FORMAT,
        "version": 1,
        "sources": [_fingerprint(s) for s in sources],
        "text_field": text_field,
        "chunk_bytes": token_parts.CHUNK_BYTES,
    }
    # Scratch space beside the output (same filesystem: no copy through a small /tmp), named
    # like every scratch sibling, so a kill -9 leftover is cleaned by the next run.
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        tok = None
        if train_vocab is None:
            tok = load_tokenizer(tokenizer)
            tok.save_pretrained(scratch / "tokenizer")
            key["tokenizer_hash"] = tokenizer_hash(scratch / "tokenizer")
        else:
            key["train_vocab"] = train_vocab
        if _resumable(parts, key):
            for half in parts.glob(".*"):  # parts that killed writers left unfinished
                remove_path(half)
            return
        remove_path(parts)
        with building(parts, False) as tmp:
            if tok is None:
                texts = (doc.text for doc in iter_documents(sources, text_field))
                tok = train_tokenizer(texts, train_vocab, tmp / "tokenizer")
            else:
                shutil.move(scratch / "tokenizer", tmp / "tokenizer")
            if tok.eos_token_id is None:
                raise UserError("the tokenizer has no EOS token: documents cannot be separated")
            vocab_size = vocab_size_of(tok)
            backend = backend_of(tok)
            if backend is not None:
                (tmp / "encoder.json").write_text(backend.to_str(), encoding="utf-8")
            plan = {
                **key,
                "run_id": os.urandom(8).hex(),
                "vocab_size": vocab_size,
                "eos_id": tok.eos_token_id,
                "dtype": smallest_token_dtype(vocab_size).name,
                "split_special": bool(getattr(tok, "split_special_tokens", False)),
            }
            write_json_atomic(tmp / "meta.json", plan)
    finally:
        remove_path(scratch)


def _fingerprint(source: Source) -> dict:
    """What a source's parts depend on: its content (the sha256 of a file; of a dataset
    directory's file names and bytes), never sizes and times, which an edit can leave as they
    were."""
    path = source.path
    digest = sha256_file(path) if path.is_file() else hash_dir(path)
    return {"path": str(path), "domain": source.domain, "sha256": digest}


def _resumable(parts: Path, key: dict) -> bool:
    if not (parts / "meta.json").is_file() or not (parts / "tokenizer").is_dir():
        return False
    try:
        old = read_plan(parts)
    except UserError:
        return False  # damaged: start afresh
    return all(old.get(k) == v for k, v in key.items())


def _encode(parts: Path, sources, text_field, plan: dict, workers: int, progress: bool):
    """This rank's slots (chunk c goes to slot c mod all slots): in this process, or with
    ``workers`` > 1 in that many spawned processes. Returns (chunks, encoded, reused)."""
    rank, slots = dist.rank(), dist.world_size() * workers
    mine = [rank * workers + w for w in range(workers)]
    # disable=None: a bar on a terminal only, so logs and pipes get no bar spam
    bar = tqdm(desc="tokenize", unit="chunk", disable=None if progress and rank == 0 else True)

    def show() -> None:  # every process's finished chunks
        bar.n = sum(1 for _ in parts.glob("part-*"))
        bar.refresh()

    def args(slot):
        return parts, sources, text_field, plan, slot, slots

    if workers == 1:
        try:
            return encode_slot(*args(mine[0]), progress=show)
        finally:
            bar.close()
    # Each worker's Rust tokenizer gets its share of the cores: together they use them once.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * workers
    threads = max(1, len(os.sched_getaffinity(0)) // local)
    # spawn, not fork: forking after the tokenizer's own threads have run can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(encode_slot_in_worker, args(s), threads) for s in mine]
        while True:
            done, pending = wait(futures, timeout=1.0, return_when=FIRST_EXCEPTION)
            show()
            for future in done:
                future.result()  # a worker's error, raised now: the others are stopped below
            if not pending:
                break
        results = [f.result() for f in futures]
    except BaseException:
        _stop_workers(pool)  # their finished parts stay; a half-written one is never trusted
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results[0][0], sum(r[1] for r in results), sum(r[2] for r in results)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now: a failed run need not wait for the others' slots."""
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14
    if stop is not None:
        stop()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # before 3.14
        process.terminate()


def _assemble(out: Path, parts: Path, plan: dict, n_chunks: int, overwrite: bool) -> dict:
    """Rank 0: the parts, in chunk order, into the TokenStore; then the parts go."""
    got = assemble(parts, plan, n_chunks)
    if not len(got.lengths):
        raise UserError("the corpus is empty: no non-blank document in the inputs")
    offsets = np.concatenate([[0], np.cumsum(got.lengths)])  # a document ends after its EOS
    tokens = np.memmap(got.tokens, dtype=plan["dtype"], mode="r")
    mask = np.memmap(got.noise, dtype=bool, mode="r") if got.noise else None
    has_domains = got.names != ["default"]
    store = write_token_store(
        out,
        tokens,
        offsets,
        parts / "tokenizer",
        vocab_size=plan["vocab_size"],
        eos_id=plan["eos_id"],
        doc_domains=got.domains if has_domains else None,
        domain_names=got.names if has_domains else None,
        noise_mask=mask,
        sources=[{k: s[k] for k in ("path", "domain", "sha256")} for s in plan["sources"]],
        overwrite=overwrite,
    )
    del tokens, mask
    remove_path(parts)
    return {"n_docs": store.n_docs, "n_tokens": store.n_tokens}
