"""TokenStore and LossStore: the on-disk contracts between stages, and the alignment rule.

A TokenStore is a directory: ``tokens.npy`` (uint16/uint32, documents packed one after another,
each ending with EOS), ``doc_offsets.npy`` (int64, n_docs + 1 starts), optional
``doc_domains.npy`` (per-document domain index into ``meta["domains"]``), optional
``noise_mask.npy`` (per-token ground truth), ``tokenizer/`` and ``meta.json``.

A LossStore is a directory: ``ref_loss.npy`` (float16, one loss per token), ``meta.json`` and,
while scoring is unfinished, ``progress/`` (which batches of windows are done).

Every large array is opened with ``mmap_mode="r"``; every write goes to a temporary name first and
is renamed into place, so a crash never leaves a half-written store that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rho.errors import UserError

FORMAT_VERSION = 1
TOKEN_STORE = "rho.TokenStore"
LOSS_STORE = "rho.LossStore"

# --- The alignment rule: written here once, used by scoring, training and analysis. -------------
# The token stream is cut into non-overlapping windows of seq_len tokens from position 0 (the last
# one may be shorter). ref_loss[i] = -log p(tokens[i] | tokens[window_start .. i-1]); it is NaN at
# each window start, where there is no context.


def n_windows(n_tokens: int, seq_len: int) -> int:
    """Number of windows covering the stream (the last may be partial)."""
    if seq_len < 2:
        raise UserError(f"seq_len must be at least 2, got {seq_len}")
    return math.ceil(n_tokens / seq_len)


def window_bounds(window: int, seq_len: int, n_tokens: int) -> tuple[int, int]:
    """[start, end) of a window in the token stream."""
    start = window * seq_len
    return start, min(start + seq_len, n_tokens)


def window_starts(n_tokens: int, seq_len: int) -> np.ndarray:
    """Bool per token: True where a window starts (no context, NaN reference loss)."""
    mask = np.zeros(n_tokens, dtype=bool)
    mask[::seq_len] = True
    return mask


# --- Small file helpers ------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable or corrupted: {err}") from None


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_npy(path: Path, expected_len: int | None = None) -> np.ndarray:
    """Memory-map a .npy, turning truncation and corruption into one-line errors."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is truncated or corrupted ({err})") from None
    if expected_len is not None and len(array) != expected_len:
        raise UserError(f"{path} holds {len(array)} entries, meta.json says {expected_len}")
    return array


def sha256_file(path: Path, h: hashlib._Hash | None = None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        for start in range(0, len(array), 1 << 22):
            h.update(np.ascontiguousarray(array[start : start + (1 << 22)]).tobytes())
    return h.hexdigest()


def hash_dir(path: Path) -> str:
    """Content hash of every file under a directory (names and bytes)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        sha256_file(file, h)
    return h.hexdigest()


def prepare_output(path: Path, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless asked; return a fresh temporary sibling."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))


def commit_output(tmp: Path, path: Path) -> None:
    """Move a finished temporary directory into place; the old one goes only once the new is in."""
    path = Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def smallest_token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --- TokenStore ---------------------------------------------------------------------------------


class TokenStore:
    """A tokenized corpus on disk, opened read-only through memory maps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a TokenStore directory")
        self.meta = read_json(self.path / "meta.json")
        if self.meta.get("format") != TOKEN_STORE:
            raise UserError(f"{self.path} is not a TokenStore (meta.json format is wrong)")
        if self.meta.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path}: unsupported TokenStore version {self.meta.get('version')}"
            )
        self.tokens = load_npy(self.path / "tokens.npy", self.meta["n_tokens"])
        self.doc_offsets = load_npy(self.path / "doc_offsets.npy", self.meta["n_docs"] + 1)
        if self.doc_offsets[0] != 0 or self.doc_offsets[-1] != self.n_tokens:
            raise UserError(f"{self.path}/doc_offsets.npy does not span the tokens")
        self.doc_domains = self._optional("doc_domains.npy", self.n_docs)
        self.noise_mask = self._optional("noise_mask.npy", self.n_tokens)

    def _optional(self, name: str, length: int) -> np.ndarray | None:
        file = self.path / name
        return load_npy(file, length) if file.exists() else None

    n_tokens = property(lambda self: int(self.meta["n_tokens"]))
    n_docs = property(lambda self: int(self.meta["n_docs"]))
    vocab_size = property(lambda self: int(self.meta["vocab_size"]))
    eos_id = property(lambda self: int(self.meta["eos_id"]))
    content_hash = property(lambda self: self.meta["content_hash"])
    domain_names = property(lambda self: list(self.meta.get("domains", [])))
    tokenizer_dir = property(lambda self: self.path / "tokenizer")

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir)

    def n_windows(self, seq_len: int) -> int:
        return n_windows(self.n_tokens, seq_len)

    def window(self, index: int, seq_len: int) -> np.ndarray:
        start, end = window_bounds(index, seq_len, self.n_tokens)
        return np.asarray(self.tokens[start:end], dtype=np.int64)

    def token_domains(self) -> np.ndarray | None:
        """Domain index of every token (int16), or None when the store has no domains."""
        if self.doc_domains is None:
            return None
        return np.repeat(np.asarray(self.doc_domains, dtype=np.int16), np.diff(self.doc_offsets))

    def verify(self) -> None:
        """Recompute the content hash (reads every token): catches corrupted bytes."""
        if hash_arrays(self.tokens, self.doc_offsets) != self.content_hash:
            raise UserError(f"{self.path}: tokens do not match their content hash (corrupted)")


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
    sources: list[dict] | None = None,
    overwrite: bool = False,
) -> TokenStore:
    """Write a TokenStore atomically (into a temporary directory, then renamed into place)."""
    path = Path(path)
    tokens = np.asarray(tokens).astype(smallest_token_dtype(vocab_size), copy=False)
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    if len(tokens) == 0:
        raise UserError("the corpus is empty: no tokens to store")
    tmp = prepare_output(path, overwrite)
    try:
        np.save(tmp / "tokens.npy", tokens)
        np.save(tmp / "doc_offsets.npy", doc_offsets)
        if doc_domains is not None:
            np.save(tmp / "doc_domains.npy", np.asarray(doc_domains, dtype=np.int16))
        if noise_mask is not None:
            np.save(tmp / "noise_mask.npy", np.asarray(noise_mask, dtype=bool))
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        meta = {
            "format": TOKEN_STORE,
            "version": FORMAT_VERSION,
            "n_tokens": int(len(tokens)),
            "n_docs": int(len(doc_offsets) - 1),
            "vocab_size": int(vocab_size),
            "eos_id": int(eos_id),
            "dtype": tokens.dtype.name,
            "content_hash": hash_arrays(tokens, doc_offsets),
            "tokenizer_hash": hash_dir(tmp / "tokenizer"),
            "domains": list(domain_names or []),
            "has_noise_mask": noise_mask is not None,
            "sources": sources or [],
        }
        write_json_atomic(tmp / "meta.json", meta)
        commit_output(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore(path)


# --- LossStore ----------------------------------------------------------------------------------


class LossStore:
    """Reference losses for every token of a TokenStore, under the alignment rule."""

    def __init__(
        self, path: str | Path, tokens: TokenStore | None = None, seq_len: int | None = None
    ):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a LossStore directory")
        self.meta = read_json(self.path / "meta.json")
        if self.meta.get("format") != LOSS_STORE:
            raise UserError(f"{self.path} is not a LossStore (meta.json format is wrong)")
        if self.meta.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path}: unsupported LossStore version {self.meta.get('version')}"
            )
        self.ref_loss = load_npy(self.path / "ref_loss.npy", self.meta["n_tokens"])
        if tokens is not None:
            self.check_matches(tokens, seq_len)

    seq_len = property(lambda self: int(self.meta["seq_len"]))
    complete = property(lambda self: bool(self.meta.get("complete")))
    token_hash = property(lambda self: self.meta["token_hash"])

    def check_matches(self, tokens: TokenStore, seq_len: int | None = None) -> None:
        """The contract: same tokens, same windows, finished. Anything else is a clear error."""
        if self.token_hash != tokens.content_hash:
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

    def window(self, index: int) -> np.ndarray:
        start, end = window_bounds(index, self.seq_len, len(self.ref_loss))
        return np.asarray(self.ref_loss[start:end], dtype=np.float32)


def loss_store_meta(tokens: TokenStore, seq_len: int, batch_size: int, **extra) -> dict:
    return {
        "format": LOSS_STORE,
        "version": FORMAT_VERSION,
        "n_tokens": tokens.n_tokens,
        "seq_len": int(seq_len),
        "batch_size": int(batch_size),
        "token_hash": tokens.content_hash,
        "tokenizer_hash": tokens.meta.get("tokenizer_hash"),
        "dtype": "float16",
        "complete": False,
        **extra,
    }


# --- One-screen summary: `rho inspect DIR` ------------------------------------------------------


def describe(path: str | Path, verify: bool = False) -> str:
    """A short human summary of a TokenStore or LossStore."""
    path = Path(path)
    kind = read_json(path / "meta.json").get("format")
    lines = [f"{path}"]
    if kind == TOKEN_STORE:
        store = TokenStore(path)
        if verify:
            store.verify()
        lengths = np.diff(store.doc_offsets)
        lines += [
            f"  TokenStore v{store.meta['version']}: {store.n_tokens:,} tokens "
            f"({store.meta['dtype']}), {store.n_docs:,} documents "
            f"(mean {lengths.mean():.0f} tokens)",
            f"  vocab {store.vocab_size:,}, eos id {store.eos_id}, "
            f"content {store.content_hash[:12]}",
        ]
        if store.doc_domains is not None:
            counts = np.bincount(
                store.doc_domains, weights=lengths, minlength=len(store.domain_names)
            )
            pairs = zip(store.domain_names, counts, strict=True)
            share = ", ".join(f"{name} {c / store.n_tokens:.0%}" for name, c in pairs)
            lines.append(f"  domains (share of tokens): {share}")
        if store.noise_mask is not None:
            lines.append(f"  noise mask: {np.mean(store.noise_mask):.1%} of tokens marked noise")
        for source in store.meta.get("sources", [])[:5]:
            domain = f" (domain {source['domain']})" if source.get("domain") else ""
            lines.append(f"  source {source.get('path')}{domain}")
        lines.append("  complete: yes" + (" (content hash verified)" if verify else ""))
    elif kind == LOSS_STORE:
        store = LossStore(path)
        loss = np.asarray(store.ref_loss, dtype=np.float32)
        scored = ~np.isnan(loss)
        starts = window_starts(len(loss), store.seq_len)
        lines += [
            f"  LossStore v{store.meta['version']}: {len(loss):,} tokens, seq_len {store.seq_len}, "
            f"model {store.meta.get('model')}",
            f"  token hash {store.token_hash[:12]}, "
            f"model hash {str(store.meta.get('model_hash'))[:12]}",
        ]
        if scored.any():
            q = np.percentile(loss[scored], [5, 50, 95])
            lines.append(
                f"  loss mean {loss[scored].mean():.3f}, "
                f"p5/p50/p95 {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f}"
            )
        missing = int((~scored & ~starts).sum())
        state = "yes" if store.complete else f"no ({missing:,} tokens not scored yet)"
        lines.append(f"  complete: {state}")
    else:
        raise UserError(f"{path} is neither a TokenStore nor a LossStore")
    return "\n".join(lines)


def inspect_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="rho inspect", description="Summarise a store.")
    parser.add_argument("paths", nargs="+", help="TokenStore or LossStore directories")
    parser.add_argument("--verify", action="store_true", help="recompute content hashes")
    args = parser.parse_args(argv)
    for path in args.paths:
        print(describe(path, verify=args.verify))
    return 0
