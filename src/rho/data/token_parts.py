"""The parts of a tokenize run, and their one writer.

The corpus is cut into chunks of whole input records (a jsonl line, a table row, a text file),
closing a chunk once its records reach ``chunk_bytes``: the cut depends on the inputs alone. Each
chunk is encoded into a part directory of its own, built in a scratch sibling and renamed into
place, so a part is whole or absent. Ranks (torchrun) and worker processes (--workers) share the
chunks: chunk c goes to slot c mod slots; every slot reads every record but parses only its own.
A rerun skips the parts already there (whoever wrote them), and rho.data.token_assembly concatenates
them in chunk order, so the TokenStore's bytes do not depend on who encoded which chunk, or when.

A parts directory (``.OUT.parts`` beside the output) holds ``meta.json`` (what the parts were
made from, and the run id in their names), ``tokenizer/`` (the HF tokenizer the store will
carry), ``encoder.json`` (its Rust backend, set up to encode exactly as the HF tokenizer does)
and ``part-CHUNK-RUNID/`` directories: ``tokens.bin`` (ids, EOS after each document),
``lengths.npy`` (tokens per document), ``domains.npy`` (per document, into ``part.json``'s
names) and, when some document has noise spans, ``noise.bin`` (a bool per token).

Imports stay light (numpy, tokenizers; no torch or transformers): a worker starts in a fraction
of a second.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from rho.data.corpus import Document, Source, iter_records
from rho.io.files import building, fsync_tree, read_json, write_json_atomic
from rho.io.schema import Count, Name, Size, Strict, validate

PARTS_FORMAT = "rho.TokenizeParts"
# Input bytes per chunk: a part is a few seconds of work (resume and load-balance granularity).
CHUNK_BYTES = int(os.environ.get("RHO_TOKENIZE_CHUNK_BYTES", str(8 << 20)))
ENCODE_BATCH = 256  # pieces per tokenizer call (the Rust tokenizer threads within a call)
PIECE_CHARS = 1 << 16  # longer documents are encoded in pieces of about this many characters
_CUT = re.compile(r"(?<=\S) (?=\S)")  # a lone space between words: "x| y" splits no pre-token
# Tests only: "SLOT:N" makes slot SLOT kill itself (SIGKILL) inside its Nth part, before the part
# is renamed into place: a real death mid-write.
FAULT_ENV = "RHO_TOKENIZE_FAULT"


def parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def part_path(parts: Path, chunk: int, run_id: str) -> Path:
    return parts / f"part-{chunk:09d}-{run_id}"


class TokenizePartsMeta(Strict):
    """meta.json of an unfinished tokenize run's parts (rho.data.token_parts)."""

    format: Literal["rho.TokenizeParts"]
    version: Literal[1]
    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{1,64}$")]  # in file names
    chunk_bytes: Size
    vocab_size: Annotated[int, Field(ge=1, le=1 << 32)]
    eos_id: Count
    dtype: Literal["uint16", "uint32"]
    split_special: bool = False


class TokenizePart(Strict):
    """part.json of one encoded chunk."""

    n_docs: Count
    n_tokens: Count
    domains: Annotated[list[Name], Field(max_length=1 << 31)]
    noise: bool


# --- Encoding -------------------------------------------------------------------------------------


def pieces_of(text: str, size: int | None = None) -> list[tuple[int, int]]:
    """[start, end) character spans covering ``text``, each about ``size`` (default
    PIECE_CHARS, read at each call) long, cut before a lone space between two words where there
    is one, so a byte-level BPE encodes the pieces exactly as the whole (a long document in one
    call can take gigabytes)."""
    size = size or PIECE_CHARS
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


def token_noise(offsets, spans: list[tuple[int, int]], n_chars: int) -> np.ndarray:
    """Bool per token: does its [start, end) character span overlap any noise span?"""
    chars = np.zeros(n_chars + 1, dtype=np.int32)
    for a, b in spans:
        a, b = max(0, a), min(n_chars, b)
        if a < b:
            chars[a] += 1
            chars[b] -= 1
    inside = np.concatenate([[0], np.cumsum(np.cumsum(chars)[:-1] > 0)])  # prefix counts
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return inside[offsets[:, 1]] - inside[offsets[:, 0]] > 0


@dataclass
class Encoded:
    ids: np.ndarray  # every document's ids, each followed by EOS
    lengths: np.ndarray  # int64 tokens per document, EOS included
    marks: np.ndarray | None  # bool per token (noise), or None when no document has spans


class Encoder:
    """Documents -> packed ids. ``tokenizer`` is a Rust ``tokenizers.Tokenizer`` set up like
    the HF tokenizer (``backend_of``), or an HF tokenizer without one (slower). Ids are read
    straight into numpy; offsets are computed only for documents with noise spans."""

    def __init__(self, tokenizer, eos_id: int, dtype):
        self.tokenizer, self.eos_id, self.dtype = tokenizer, eos_id, np.dtype(dtype)
        self.rust = hasattr(tokenizer, "encode_batch")
        # encode_batch_fast (tokenizers >= 0.21) skips the offsets: same ids, less work
        self._fast = getattr(tokenizer, "encode_batch_fast", None) if self.rust else None

    def _encode(self, texts: list[str], offsets: bool) -> tuple[list, Iterator | None]:
        """Ids (lists) of each text and, if asked, its (n, 2) character offsets (arrays, made
        one at a time as they are read: a batch's together are big)."""
        if not self.rust:
            out = self.tokenizer(
                texts, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False
            )
            if not offsets:
                return out["input_ids"], None
            spans = (np.asarray(o, np.int64).reshape(-1, 2) for o in out["offset_mapping"])
            return out["input_ids"], spans
        encode = self.tokenizer.encode_batch if offsets or not self._fast else self._fast
        encodings = encode(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        if not offsets:
            return ids, None
        spans = (  # through a flat iterator: an array of tuples is much slower
            np.fromiter(chain.from_iterable(e.offsets), np.int64, 2 * len(e)).reshape(-1, 2)
            for e in encodings
        )
        return ids, spans

    def encode(self, docs: list[Document]) -> Encoded:
        pieces = [(i, a, b) for i, doc in enumerate(docs) for a, b in pieces_of(doc.text)]
        ids: list = [None] * len(pieces)
        marks: dict[int, np.ndarray] = {}  # per noisy piece, made at once: offsets are big
        for noisy in (False, True):
            which = [k for k, (i, _, _) in enumerate(pieces) if bool(docs[i].noise_spans) == noisy]
            for first in range(0, len(which), ENCODE_BATCH):
                part = which[first : first + ENCODE_BATCH]
                texts = [docs[i].text[a:b] for i, a, b in (pieces[k] for k in part)]
                got, offsets = self._encode(texts, offsets=noisy)
                for k, piece_ids in zip(part, got, strict=True):
                    ids[k] = piece_ids
                    if noisy:
                        i, a, b = pieces[k]
                        spans = [(x - a, y - a) for x, y in docs[i].noise_spans]
                        marks[k] = token_noise(next(offsets), spans, b - a)
        piece_lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        # An id that does not fit the dtype raises OverflowError here, never wraps silently.
        flat = np.fromiter(chain.from_iterable(ids), self.dtype, int(piece_lengths.sum()))
        owner = np.fromiter((i for i, _, _ in pieces), np.int64, len(pieces))
        lengths = np.bincount(owner, weights=piece_lengths, minlength=len(docs)).astype(np.int64)
        packed = np.insert(flat, np.cumsum(lengths), np.asarray(self.eos_id, self.dtype))
        lengths += 1
        packed_marks = None
        if marks:  # EOS and clean documents: clean
            packed_marks = np.zeros(len(packed), dtype=bool)
            starts = np.cumsum(piece_lengths) - piece_lengths + owner  # owner: the EOS before
            for k, mark in marks.items():
                packed_marks[starts[k] : starts[k] + len(mark)] = mark
        return Encoded(packed, lengths, packed_marks)


def backend_of(tokenizer):
    """The HF tokenizer's Rust backend, set up to encode as the HF tokenizer's ``__call__``
    does without special tokens (no truncation, no padding, special tokens matched as it
    matches them); None when it has none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend


def load_encoder(parts: Path, plan: dict) -> Encoder:
    """The encoder every slot uses: the saved Rust backend, else the HF tokenizer itself."""
    if (parts / "encoder.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(parts / "encoder.json"))
        backend.encode_special_tokens = plan["split_special"]
        return Encoder(backend, plan["eos_id"], plan["dtype"])
    from transformers import AutoTokenizer  # a tokenizer without a Rust backend

    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    return Encoder(tokenizer, plan["eos_id"], plan["dtype"])


def read_plan(parts: Path) -> dict:
    """The parts' meta.json, validated (a damaged one is a one-line UserError)."""
    meta = read_json(parts / "meta.json")
    validate(TokenizePartsMeta, meta, f"{parts}/meta.json is corrupted")
    return meta


# --- Chunks and parts -----------------------------------------------------------------------------


def chunks(records: Iterable, chunk_bytes: int) -> Iterator[list]:
    """Records grouped into chunks: a chunk closes once its records reach ``chunk_bytes``."""
    chunk, size = [], 0
    for nbytes, parse in records:
        chunk.append(parse)
        size += nbytes
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _batches(parses: list, size: int) -> Iterator[list[Document]]:
    """The chunk's documents (its records parsed in order), a batch at a time."""
    batch = []
    for parse in parses:
        doc = parse()
        if doc is not None:
            batch.append(doc)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def write_part(path: Path, encoder: Encoder, parses: list, die: bool = False) -> None:
    """Encode one chunk into its part directory, whole or not at all."""
    names: dict[str, int] = {}
    lengths, codes, any_noise, n_tokens = [], [], False, 0
    with building(path, False) as tmp:
        with open(tmp / "tokens.bin", "wb") as tokens, open(tmp / "noise.bin", "wb") as noise:
            for docs in _batches(parses, ENCODE_BATCH):
                encoded = encoder.encode(docs)
                if encoded.marks is not None and not any_noise:  # every earlier token is clean
                    any_noise = True
                    noise.write(bytes(n_tokens))
                if any_noise:
                    marks = encoded.marks
                    noise.write(marks.data if marks is not None else bytes(len(encoded.ids)))
                tokens.write(encoded.ids.data)
                n_tokens += len(encoded.ids)
                lengths.append(encoded.lengths)
                codes.extend(names.setdefault(d.domain or "default", len(names)) for d in docs)
        if not any_noise:
            (tmp / "noise.bin").unlink()
        np.save(tmp / "lengths.npy", np.concatenate([np.zeros(0, np.int64), *lengths]))
        np.save(tmp / "domains.npy", np.asarray(codes, dtype=np.int32))
        write_json_atomic(
            tmp / "part.json",
            {"n_docs": len(codes), "n_tokens": n_tokens, "domains": list(names),
             "noise": any_noise},
        )  # fmt: skip
        fsync_tree(tmp)  # a power cut after the rename leaves the part whole, too
        if die:
            os.kill(os.getpid(), signal.SIGKILL)


def encode_slot(
    parts: Path,
    sources: list[Source],
    text_field: str,
    plan: dict,
    slot: int,
    n_slots: int,
    progress=None,
) -> tuple[int, int, int]:
    """Encode the chunks of ``slot`` (of ``n_slots``) that have no part yet. Returns (chunks in
    the corpus, chunks encoded here, chunks of this slot already there). ``progress``: called
    after each chunk of this slot."""
    encoder = load_encoder(parts, plan)
    fault = os.environ.get(FAULT_ENV, "")
    die_at = int(fault.split(":")[1]) if fault.startswith(f"{slot}:") else None
    n_chunks = encoded = reused = 0
    records = iter_records(sources, text_field)
    for chunk, parses in enumerate(chunks(records, plan["chunk_bytes"])):
        n_chunks = chunk + 1
        if chunk % n_slots != slot:
            continue
        path = part_path(parts, chunk, plan["run_id"])
        if path.is_dir():
            reused += 1
        else:
            encoded += 1
            write_part(path, encoder, parses, die=encoded == die_at)
        if progress is not None:
            progress()
    return n_chunks, encoded, reused


def encode_slot_in_worker(args: tuple, threads: int) -> tuple[int, int, int]:
    """A worker process's entry (spawned): the Rust tokenizer gets ``threads`` threads, so the
    workers together use the cores once."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when its thread pool first starts
    return encode_slot(*args)
