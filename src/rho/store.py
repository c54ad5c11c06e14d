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


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An error message squeezed onto one line (the CLI prints user errors as one line)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is unreadable or corrupted: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupted: not a JSON object")
    return data


def _write_atomic(path: Path, write, suffix: str = "") -> None:
    """Write through ``write(file)`` into a temporary sibling, fsync, then rename into place: a
    reader (or a rerun after kill -9 or a power cut) sees the old file or the new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    _write_atomic(path, lambda f: f.write(text.encode()))


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    _write_atomic(path, lambda f: np.save(f, array), suffix=".npy")


def load_npy(
    path: Path, expected_len: int | None = None, dtypes: tuple[str, ...] | None = None
) -> np.ndarray:
    """Memory-map a 1-D .npy, turning truncation and corruption into one-line errors."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is truncated or corrupted ({one_line(err, 80)})") from None
    if array.ndim != 1 or (dtypes is not None and array.dtype.name not in dtypes):
        raise UserError(
            f"{path} is corrupted: holds a {array.dtype.name} array of shape {array.shape}, "
            f"expected 1-D {' or '.join(dtypes or ('any dtype',))}"
        )
    if expected_len is not None and len(array) != expected_len:
        raise UserError(f"{path} holds {len(array)} entries, meta.json says {expected_len}")
    return array


def require_keys(meta: dict, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise UserError(f"{path}/meta.json is corrupted: missing {', '.join(missing)}")


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


def tokenizer_hash(path: Path) -> str:
    """Identity of a saved tokenizer: its tokenizer.json (vocabulary, merges, normalisation)
    when there is one; config files vary with how it was saved, so they are left out."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return sha256_file(path / "tokenizer.json")
    return hash_dir(path)


def prepare_output(path: Path, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless asked; return a fresh temporary sibling."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the finished store gets the usual mode
    return tmp


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree (best effort)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def commit_output(tmp: Path, path: Path) -> None:
    """Move a finished temporary directory into place; the old one goes only once the new is in."""
    path = Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the old output back rather than lose it
            os.replace(old, path)
        raise
    if old is not None:
        remove_path(old)


def smallest_token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --- TokenStore ---------------------------------------------------------------------------------


TOKEN_KEYS = ("n_tokens", "n_docs", "vocab_size", "eos_id", "content_hash")
LOSS_KEYS = ("n_tokens", "seq_len", "token_hash")
CHUNK = 1 << 22  # entries read at a time by whole-array passes (hashes, statistics)


def max_chunked(values: np.ndarray) -> int:
    return max(int(values[s : s + CHUNK].max()) for s in range(0, len(values), CHUNK))


class TokenStore:
    """A tokenized corpus on disk, opened read-only through memory maps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise UserError(f"{self.path} is not a TokenStore directory (no meta.json)")
        self.meta = read_json(self.path / "meta.json")
        if self.meta.get("format") != TOKEN_STORE:
            raise UserError(f"{self.path} is not a TokenStore (meta.json format is wrong)")
        if self.meta.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path}: unsupported TokenStore version {self.meta.get('version')}"
            )
        require_keys(self.meta, TOKEN_KEYS, self.path)
        self.tokens = load_npy(self.path / "tokens.npy", self.n_tokens, ("uint16", "uint32"))
        self.doc_offsets = load_npy(self.path / "doc_offsets.npy", self.n_docs + 1, ("int64",))
        if self.doc_offsets[0] != 0 or self.doc_offsets[-1] != self.n_tokens:
            raise UserError(f"{self.path}/doc_offsets.npy does not span the tokens (corrupted)")
        self.doc_domains = self._optional("doc_domains.npy", self.n_docs, ("int16",))
        self.noise_mask = self._optional("noise_mask.npy", self.n_tokens, ("bool",))

    def _optional(self, name: str, length: int, dtypes: tuple[str, ...]) -> np.ndarray | None:
        file = self.path / name
        return load_npy(file, length, dtypes) if file.exists() else None

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
        if np.any(np.diff(self.doc_offsets) < 1):
            raise UserError(f"{self.path}/doc_offsets.npy is not increasing (corrupted)")
        top = max_chunked(self.tokens)
        if top >= self.vocab_size:
            raise UserError(
                f"{self.path}: token id {top} is outside the vocabulary of {self.vocab_size}"
            )


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
            "tokenizer_hash": tokenizer_hash(tmp / "tokenizer"),
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
        if not (self.path / "meta.json").is_file():
            raise UserError(f"{self.path} is not a LossStore directory (no meta.json)")
        self.meta = read_json(self.path / "meta.json")
        if self.meta.get("format") != LOSS_STORE:
            raise UserError(f"{self.path} is not a LossStore (meta.json format is wrong)")
        if self.meta.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path}: unsupported LossStore version {self.meta.get('version')}"
            )
        require_keys(self.meta, LOSS_KEYS, self.path)
        self.ref_loss = load_npy(
            self.path / "ref_loss.npy", int(self.meta["n_tokens"]), ("float16",)
        )
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

    def verify(self) -> None:
        """Recompute the hash of the losses (reads them all): catches corrupted bytes."""
        expected = self.meta.get("loss_hash")
        if expected is None:
            raise UserError(f"{self.path}: no loss hash to verify against (unfinished store?)")
        if hash_arrays(self.ref_loss) != expected:
            raise UserError(f"{self.path}: losses do not match their hash (corrupted)")


def loss_summary(values: np.ndarray, seq_len: int) -> dict:
    """Statistics of a loss array read in chunks (a big store never sits in memory at once):
    mean over scored tokens, how many tokens are still unscored (NaN away from a window start),
    and percentiles from an evenly strided sample of at most ~1M entries."""
    total, count, missing = 0.0, 0, 0
    for start in range(0, len(values), CHUNK):
        block = np.asarray(values[start : start + CHUNK], dtype=np.float64)
        nan = np.isnan(block)
        total, count = total + block[~nan].sum(), count + int((~nan).sum())
        at_starts = nan[np.arange(-start % seq_len, len(block), seq_len)].sum()
        missing += int(nan.sum() - at_starts)
    sample = np.asarray(values[:: max(1, len(values) // (1 << 20))], dtype=np.float32)
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
    if not (path / "meta.json").is_file():
        raise UserError(f"{path} is not a store directory (no meta.json)")
    kind = read_json(path / "meta.json").get("format")
    lines = [f"{path}"]
    if kind == TOKEN_STORE:
        store = TokenStore(path)
        if verify:
            store.verify()
        lengths = np.diff(store.doc_offsets)
        lines += [
            f"  TokenStore v{store.meta['version']}: {store.n_tokens:,} tokens "
            f"({store.tokens.dtype.name}), {store.n_docs:,} documents "
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
            marked = sum(
                int(np.count_nonzero(store.noise_mask[i : i + CHUNK]))
                for i in range(0, store.n_tokens, CHUNK)
            )
            lines.append(f"  noise mask: {marked / store.n_tokens:.1%} of tokens marked noise")
        for source in store.meta.get("sources", [])[:5]:
            domain = f" (domain {source['domain']})" if source.get("domain") else ""
            lines.append(f"  source {source.get('path')}{domain}")
        lines.append("  complete: yes" + (" (content hash verified)" if verify else ""))
    elif kind == LOSS_STORE:
        store = LossStore(path)
        if verify and store.complete:
            store.verify()
        n = len(store.ref_loss)
        stats = loss_summary(store.ref_loss, store.seq_len)
        lines += [
            f"  LossStore v{store.meta['version']}: {n:,} tokens, seq_len {store.seq_len} "
            f"({n_windows(n, store.seq_len):,} windows), model {store.meta.get('model')} "
            f"({store.meta.get('score_dtype', '?')})",
            f"  token hash {store.token_hash[:12]}, "
            f"model hash {str(store.meta.get('model_hash'))[:12]}",
        ]
        if stats["scored"]:
            lines.append(
                f"  loss mean {stats['mean']:.3f}, p5/p50/p95 "
                f"{stats['p5']:.2f}/{stats['p50']:.2f}/{stats['p95']:.2f} "
                f"(nats/token; NaN at the {n_windows(n, store.seq_len):,} window starts)"
            )
        if store.complete:
            state = "yes" + (" (loss hash verified)" if verify else "")
        else:
            state = f"no ({stats['missing']:,} tokens not scored yet: rerun `rho score`)"
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
