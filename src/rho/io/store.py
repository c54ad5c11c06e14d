"""TokenStore and LossStore: the on-disk contracts between stages. (The alignment rule is
rho.io.alignment, imported from here too; the stores' files are opened and checked by
rho.io.store_files; the LossStore's one writer is rho.scoring.loss_writer; `rho inspect` is
rho.io.inspect_store.)

A TokenStore is a directory: ``tokens.npy`` (uint16/uint32, documents packed one after another,
each ending with EOS), ``doc_offsets.npy`` (int64, n_docs + 1 starts), optional
``doc_domains.npy`` (per-document domain index into ``meta["domains"]``), optional
``noise_mask.npy`` (per-token ground truth), optional ``loss_mask.npy`` (instruction data, one
conversation per document: True = a response token, the only kind that carries loss; part of
the content hash, so the LossStores of a masked store are tied to its mask), ``tokenizer/`` and
``meta.json``.

A LossStore is a directory: ``ref_loss.npy`` (float16, one loss per token), optional
``ref_entropy.npy`` (float16, the entropy of the reference's next-token distribution that
predicts each token: same alignment, same windows, written by the same runs; ``has_entropy`` in
``meta.json``), ``meta.json`` (once finished, with the finite share of its losses and entropies
among the positions that should hold one: ``finite_fraction``, ``entropy_finite_fraction``) and,
while scoring is unfinished, ``progress/`` (which batches of windows are done).

Every large array is opened with ``mmap_mode="r"``; every write goes to a temporary name first and
is renamed into place, so a crash never leaves a half-written store that looks whole.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from rho.errors import UserError
from rho.io.alignment import loss_positions, n_windows, window_bounds, window_starts
from rho.io.files import building, one_line, save_npy, write_json_atomic
from rho.io.reading import blocks, hash_arrays, hash_dir, read_slice, sha256_file
from rho.io.schema import TokenStoreMeta
from rho.io.store_files import (
    CHUNK,
    FORMAT_VERSION,
    TOKEN_STORE,
    check_domains,
    check_offsets,
    load_npy,
    read_loss_meta,
    read_store_meta,
)
from rho.models import model_vocab_size


def tokenizer_hash(path: Path) -> str:
    """Identity of a saved tokenizer: its tokenizer.json (vocabulary, merges, normalisation)
    when there is one; config files vary with how it was saved, so they are left out."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return sha256_file(path / "tokenizer.json")
    return hash_dir(path)


TOKEN_DTYPES = ("uint16", "uint32")


def smallest_token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --- TokenStore ---------------------------------------------------------------------------------


def max_chunked(values: np.ndarray) -> int:
    return max(int(block.max()) for block in blocks(values, CHUNK))


class TokenStore:
    """A tokenized corpus on disk, opened read-only through memory maps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_store_meta(self.path, TOKEN_STORE, TokenStoreMeta)
        dtypes = (self.meta["dtype"],) if self.meta.get("dtype") else TOKEN_DTYPES
        self.tokens = load_npy(self.path / "tokens.npy", self.n_tokens, dtypes)
        self.doc_offsets = self._array("doc_offsets.npy", self.n_docs + 1, "int64")
        check_offsets(self.path / "doc_offsets.npy", self.doc_offsets, self.n_tokens)
        recorded = self.meta.get("max_token_id", 0)  # written by write_token_store: cheap check
        if recorded >= self.vocab_size:
            raise UserError(
                f"{self.path}/meta.json is corrupted: max_token_id {recorded!r} is outside the "
                f"vocabulary of {self.vocab_size}"
            )
        self.doc_domains = self._array("doc_domains.npy", self.n_docs, "int16", required=False)
        if self.doc_domains is not None:
            check_domains(self.path / "doc_domains.npy", self.doc_domains, self.domain_names)
        # a mask the meta records must be there; the loss mask is part of the content hash
        self.noise_mask = self._array("noise_mask.npy", self.n_tokens, "bool",
                                      required=self.meta["has_noise_mask"])  # fmt: skip
        self.loss_mask = None
        if self.meta["has_loss_mask"]:
            self.loss_mask = self._array("loss_mask.npy", self.n_tokens, "bool")
        self._max_token_id: int | None = None

    def _array(self, name: str, length: int, dtype: str, required=True) -> np.ndarray | None:
        """One of the store's arrays (None when an optional one is absent), checked."""
        file = self.path / name
        if not (required or file.exists()):
            return None
        return load_npy(file, length, (dtype,))

    n_tokens = property(lambda self: int(self.meta["n_tokens"]))
    n_docs = property(lambda self: int(self.meta["n_docs"]))
    vocab_size = property(lambda self: int(self.meta["vocab_size"]))
    eos_id = property(lambda self: int(self.meta["eos_id"]))
    content_hash = property(lambda self: self.meta["content_hash"])
    domain_names = property(lambda self: list(self.meta.get("domains", [])))
    tokenizer_dir = property(lambda self: self.path / "tokenizer")

    def tokenizer(self):
        """The store's own tokenizer; a missing or damaged one is a one-line UserError."""
        if not self.tokenizer_dir.is_dir():
            raise UserError(f"{self.tokenizer_dir} is missing (corrupted store)")
        try:
            return AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except Exception as err:  # noqa: BLE001 (tokenizers raises plain Exception for bad files)
            raise UserError(
                f"{self.tokenizer_dir} is unreadable or corrupted: {one_line(err, 120)}"
            ) from None

    @property
    def max_token_id(self) -> int:
        """The largest id actually in tokens.npy (one pass over the memory map, then cached): a
        model must embed it, whatever meta.json says."""
        if self._max_token_id is None:
            self._max_token_id = max_chunked(self.tokens)
        return self._max_token_id

    def check_model_vocab(self, model, what: str = "the model") -> None:
        """The model needs an embedding row for every id of the tokenizer and of the store."""
        rows = model_vocab_size(model)
        if rows < self.vocab_size:
            raise UserError(
                f"{what} has a vocabulary of {rows}, smaller than the tokenizer's "
                f"{self.vocab_size}: token ids would be out of range (wrong tokenizer or model?)"
            )
        if self.max_token_id >= rows:
            raise UserError(
                f"{self.path} holds token id {self.max_token_id}, outside {what}'s vocabulary of "
                f"{rows} (corrupted store, or tokenized with another tokenizer?)"
            )

    def n_windows(self, seq_len: int) -> int:
        return n_windows(self.n_tokens, seq_len)

    def loss_positions(self, start: int, end: int, seq_len: int) -> np.ndarray | None:
        """Which tokens of [start, end) carry loss (``loss_positions``); None without a mask."""
        if self.loss_mask is None:
            return None
        return loss_positions(self.loss_mask, self.doc_offsets, start, end, seq_len)

    def window_loss_positions(self, index: int, seq_len: int) -> np.ndarray | None:
        return self.loss_positions(*window_bounds(index, seq_len, self.n_tokens), seq_len)

    def window(self, index: int, seq_len: int) -> np.ndarray:
        start, end = window_bounds(index, seq_len, self.n_tokens)
        return read_slice(self.tokens, start, end).astype(np.int64)

    def token_domains(self) -> np.ndarray | None:
        """Domain index of every token (int16), or None when the store has no domains."""
        if self.doc_domains is None:
            return None
        return np.repeat(np.asarray(self.doc_domains, dtype=np.int16), np.diff(self.doc_offsets))

    def verify(self) -> None:
        """Recompute the content hash (reads every token): catches corrupted bytes."""
        if content_hash(self.tokens, self.doc_offsets, self.loss_mask) != self.content_hash:
            raise UserError(f"{self.path}: tokens do not match their content hash (corrupted)")
        top = max_chunked(self.tokens)
        if top >= self.vocab_size:
            raise UserError(
                f"{self.path}: token id {top} is outside the vocabulary of {self.vocab_size}"
            )


def content_hash(
    tokens: np.ndarray, doc_offsets: np.ndarray, loss_mask: np.ndarray | None = None
) -> str:
    """A TokenStore's identity: its tokens and documents, and its loss mask when it has one
    (what a LossStore of it scored depends on the mask)."""
    masks = () if loss_mask is None else (loss_mask,)
    return hash_arrays(tokens, doc_offsets, *masks)


def write_token_store(
    path: str | Path,
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    tokenizer_dir: str | Path,
    *,
    vocab_size: int,
    eos_id: int,
    doc_domains: np.ndarray | None = None,
    domain_names: list[str] | None = None,
    noise_mask: np.ndarray | None = None,
    loss_mask: np.ndarray | None = None,
    sources: list[dict] | None = None,
    overwrite: bool = False,
) -> TokenStore:
    """Write a TokenStore atomically (into a temporary directory, then renamed into place).
    ``loss_mask``: per token, True where the token carries loss (a response token)."""
    path = Path(path)
    tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)  # keep a memmap
    if len(tokens) == 0:
        raise UserError("the corpus is empty: no tokens to store")
    top = max_chunked(tokens)  # before the cast, which would wrap an id too big for its dtype
    if top >= vocab_size:
        raise UserError(f"token id {top} is outside the vocabulary of {vocab_size}")
    tokens = tokens.astype(smallest_token_dtype(vocab_size), copy=False)
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    with building(path, overwrite, TOKEN_STORE) as tmp:
        save_npy(tmp / "tokens.npy", tokens)  # block by block: a memory-map stays unmapped
        np.save(tmp / "doc_offsets.npy", doc_offsets)
        if doc_domains is not None:
            np.save(tmp / "doc_domains.npy", np.asarray(doc_domains, dtype=np.int16))
        if noise_mask is not None:
            if not (isinstance(noise_mask, np.ndarray) and noise_mask.dtype == bool):
                noise_mask = np.asarray(noise_mask, dtype=bool)
            save_npy(tmp / "noise_mask.npy", noise_mask)
        if loss_mask is not None:
            if not (isinstance(loss_mask, np.ndarray) and loss_mask.dtype == bool):
                loss_mask = np.asarray(loss_mask, dtype=bool)  # a bool memmap is kept as it is
            if len(loss_mask) != len(tokens):
                raise ValueError(f"{len(loss_mask)} loss-mask entries for {len(tokens)} tokens")
            save_npy(tmp / "loss_mask.npy", loss_mask)
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        meta = {
            "format": TOKEN_STORE,
            "version": FORMAT_VERSION,
            "n_tokens": int(len(tokens)),
            "n_docs": int(len(doc_offsets) - 1),
            "vocab_size": int(vocab_size),
            "eos_id": int(eos_id),
            "dtype": tokens.dtype.name,
            "content_hash": content_hash(tokens, doc_offsets, loss_mask),
            "tokenizer_hash": tokenizer_hash(tmp / "tokenizer"),
            "domains": list(domain_names or []),
            "has_noise_mask": noise_mask is not None,
            "has_loss_mask": loss_mask is not None,
            "max_token_id": top,
            "sources": sources or [],
        }
        write_json_atomic(tmp / "meta.json", meta)
    return TokenStore(path)


# --- LossStore ----------------------------------------------------------------------------------


class LossStore:
    """Reference losses for every token of a TokenStore, under the alignment rule."""

    def __init__(
        self, path: str | Path, tokens: TokenStore | None = None, seq_len: int | None = None
    ):
        self.path = Path(path)
        self.meta = read_loss_meta(self.path)
        n = self.meta["n_tokens"]
        self.ref_loss = load_npy(self.path / "ref_loss.npy", n, ("float16",))
        self.ref_entropy = None
        if self.has_entropy:
            self.ref_entropy = load_npy(self.path / "ref_entropy.npy", n, ("float16",))
        if tokens is not None:
            self.check_matches(tokens, seq_len)

    seq_len = property(lambda self: int(self.meta["seq_len"]))
    complete = property(lambda self: self.meta.get("complete") is True)
    token_hash = property(lambda self: self.meta["token_hash"])
    has_entropy = property(lambda self: self.meta.get("has_entropy") is True)

    def require_entropy(self, what: str) -> None:
        """Readers that rank by entropy refuse a store without it, in one line."""
        if not self.has_entropy:
            raise UserError(
                f"{what} needs the reference's entropy, but {self.path} holds losses only: "
                "score it with `rho score --entropy`"
            )

    def check_matches(self, tokens: TokenStore, seq_len: int | None = None) -> None:
        """The contract: same tokens, same windows, finished. Anything else is a clear error."""
        if self.token_hash != tokens.content_hash or self.meta["n_tokens"] != tokens.n_tokens:
            raise UserError(
                f"{self.path} was scored on other tokens than {tokens.path} (token hash mismatch)"
            )
        if seq_len is not None and seq_len != self.seq_len:
            raise UserError(
                f"{self.path} was scored with seq_len {self.seq_len}, but seq_len {seq_len} was "
                "asked for: windows would misalign (re-score, or use the same seq_len)"
            )
        if not self.complete:
            raise UserError(f"{self.path} is unfinished: rerun `rho score` to complete it")

    def finite_fraction(self, tokens: TokenStore | None = None, kind: str = "losses") -> float:
        """The share of finite losses (``kind="entropies"``: entropies) where there should be
        one: recorded when the store was finished, so a check costs nothing at any store size
        (a store without the record is read through once, following the loss mask of
        ``tokens``, the TokenStore it scored)."""
        if kind not in FINITE_RECORDS:
            raise ValueError(f"kind must be one of {', '.join(FINITE_RECORDS)}, got {kind!r}")
        recorded = self.meta.get(FINITE_RECORDS[kind])
        if recorded is not None:
            return recorded
        if kind == "entropies":
            self.require_entropy("the finite share of entropies")
        values = self.ref_entropy if kind == "entropies" else self.ref_loss
        return finite_fraction(values, self.seq_len, tokens)

    def window(self, index: int) -> np.ndarray:
        start, end = window_bounds(index, self.seq_len, len(self.ref_loss))
        return read_slice(self.ref_loss, start, end).astype(np.float32)

    def window_entropy(self, index: int) -> np.ndarray:
        self.require_entropy("reading entropies")
        start, end = window_bounds(index, self.seq_len, len(self.ref_entropy))
        return read_slice(self.ref_entropy, start, end).astype(np.float32)

    def verify(self) -> None:
        """Recompute the hash of the losses and entropies (reads them all): catches corrupted
        bytes."""
        expected = self.meta.get("loss_hash")
        if expected is None:
            raise UserError(f"{self.path}: no loss hash to verify against (unfinished store?)")
        if hash_arrays(self.ref_loss) != expected:
            raise UserError(f"{self.path}: losses do not match their hash (corrupted)")
        if self.has_entropy and hash_arrays(self.ref_entropy) != self.meta.get("entropy_hash"):
            raise UserError(f"{self.path}: entropies do not match their hash (corrupted)")


# meta.json fields where a finished LossStore records the finite share of its values.
FINITE_RECORDS = {"losses": "finite_fraction", "entropies": "entropy_finite_fraction"}


def window_chunk(seq_len: int) -> int:
    """Entries read at a time by passes that follow windows: whole windows, about CHUNK."""
    return max(1, CHUNK // seq_len) * seq_len


def should_have_value(
    start: int, end: int, seq_len: int, tokens: TokenStore | None = None
) -> np.ndarray:
    """Bool per position of [start, end) (``start`` a window start) that gets a reference value:
    all but window starts, and of a TokenStore with a loss mask only the tokens that carry loss
    (``loss_positions``)."""
    should = ~window_starts(end - start, seq_len)
    mask = None if tokens is None else tokens.loss_positions(start, end, seq_len)
    return should if mask is None else should & mask


def finite_fraction(values: np.ndarray, seq_len: int, tokens: TokenStore | None = None) -> float:
    """The share of finite values among the positions that should have one (not window starts;
    of a masked TokenStore ``tokens``, only its loss positions), read in blocks."""
    finite, expected, step = 0, 0, window_chunk(seq_len)
    for start, block in zip(range(0, len(values), step), blocks(values, step), strict=True):
        should = should_have_value(start, start + len(block), seq_len, tokens)
        finite += int((np.isfinite(block) & should).sum())
        expected += int(should.sum())
    return finite / expected if expected else 1.0


def loss_summary(values: np.ndarray, seq_len: int) -> dict:
    """Statistics of a loss array read in chunks (a big store never sits in memory at once):
    mean over scored tokens, how many tokens are still unscored (NaN away from a window start),
    and percentiles from an evenly strided sample of at most ~1M entries."""
    step = max(1, len(values) // (1 << 20))  # the sample: every step-th entry
    total, count, missing, sample = 0.0, 0, 0, [np.zeros(0, np.float32)]
    for start, block in zip(range(0, len(values), CHUNK), blocks(values, CHUNK), strict=True):
        sample.append(block[-start % step :: step].astype(np.float32))
        block = block.astype(np.float64)
        nan = np.isnan(block)
        total, count = total + block[~nan].sum(), count + int((~nan).sum())
        at_starts = nan[np.arange(-start % seq_len, len(block), seq_len)].sum()
        missing += int(nan.sum() - at_starts)
    sample = np.concatenate(sample)
    sample = sample[~np.isnan(sample)]
    q = np.percentile(sample, [5, 50, 95]).tolist() if len(sample) else [math.nan] * 3
    return {
        "mean": total / count if count else math.nan,
        "scored": count,
        "missing": missing,
        "p5": q[0],
        "p50": q[1],
        "p95": q[2],
    }
